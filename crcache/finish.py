"""How a crcache process ends: output flushed, then at once.

Interpreter teardown (collecting every object, running atexit hooks
nothing here needs) costs milliseconds on every command, and CLI latency
is part of the product. A command, or the agent's worker for it, flushes
its streams and logging, tells the agent which configuration it had to
load itself (:mod:`crcache.config.prepared`) and which database
connections it was lent are fit to lend again
(:mod:`crcache.daemons.lending`), and leaves with ``os._exit``.
"""

import os
import sys


def finish(status: int) -> None:
    """Flush stdout, stderr and logging, then end the process."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        status = status or 141
    logging = sys.modules.get('logging')
    if logging is not None:  # never imported just to be shut down
        logging.shutdown()
    lending = sys.modules.get('crcache.daemons.lending')
    if lending is not None and lending.active():  # an agent's worker
        prepared = sys.modules.get('crcache.config.prepared')
        for env, cwd in prepared.wanted() if prepared else ():
            lending.report(('config', env, cwd))
        lending.give_back()  # and say what it leaves of its database
    os._exit(status if isinstance(status, int) else 1)
