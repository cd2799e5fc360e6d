"""The ``crcache`` console script.

``main`` imports as little as possible before it knows what to do:
``--version`` is answered without loading cliff, and the process ends with
``os._exit`` once output is flushed, skipping interpreter teardown (CLI
latency is part of the product).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crcache`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ['--version']:
        from crcache import version
        sys.stdout.write(f'crcache {version.version_string()}\n')
        status = 0
    else:
        from crcache import agentclient
        status = agentclient.run(argv)
        if status is None:
            import gc
            gc.disable()  # a short-lived process; collection is waste
            from crcache import app
            status = app.run(argv)
    _exit(status)
    return status


def _exit(status: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        status = status or 141
    logging = sys.modules.get('logging')
    if logging is not None:  # never imported just to be shut down
        logging.shutdown()
    os._exit(status if isinstance(status, int) else 1)
