"""The ``crcache`` console script.

``main`` imports as little as possible before it knows what to do:
``--version`` is answered without loading cliff, and the process ends with
``os._exit`` once output is flushed, skipping interpreter teardown (CLI
latency is part of the product).
"""

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crcache`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ['--version']:
        from crcache import version
        sys.stdout.write(f'crcache {version.version_string()}\n')
        status = 0
    else:
        from crcache.daemons import client as agentclient
        status = agentclient.run(argv)
        if status is not None:
            # The agent's worker ran the command: nothing was imported,
            # logged or lent here, so ending is a flush (crcache.finish
            # is one more module to import on every command).
            _end(status)
        import gc
        gc.disable()  # a short-lived process; collection is waste
        from crcache import app
        status = app.run(argv)
    from crcache import finish
    finish.finish(status)
    return status


def _end(status: int) -> None:
    """Flush our streams and leave, as :func:`crcache.finish.finish`
    does for a process that has nothing else to finish."""
    import os
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        status = status or 141
    os._exit(status)
