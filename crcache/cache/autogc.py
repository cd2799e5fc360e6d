"""The garbage collection an acquire starts with, within a budget.

A quick read-only look for what is due (:func:`crcache.cache.gc.due`);
only when something is, a ``crcache gc`` in a process of its own. The
acquire waits for it (at most a couple of seconds) only when what is due
belongs to the sources it draws from, so a slow discard.d never holds an
acquire up for long, and never one from another source.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from crcache.cache import gc
from crcache.cache.lifecycle import Lifecycle

LOG = logging.getLogger(__name__)
#: How long an acquire waits for the pass it started.
BUDGET = 2.0


def collect_before_acquire(life: Lifecycle, sources: set[str],
                           budget: float = BUDGET) -> None:
    """Start a gc pass if anything is due; maybe wait ``budget`` seconds.

    Only the stores of ``sources`` are looked in. The pass runs as
    ``crcache gc`` in a process of its own, so whatever
    it waits for (a discard.d script) holds the acquire up no longer
    than ``budget``: after that it goes on alone, bounded by the
    sources' timeouts. Only when something due belongs to ``sources``
    (those the acquisition draws from) is it waited for, its warnings
    coming to our stderr meanwhile. The progress reporter is told when
    the wait becomes noticeable, and passes the pass's output on.
    """
    pending = []
    for name in sorted({life.config.store_of(s) for s in sources}):
        store = life.stores.get(name)
        with store.reading() as tx:
            rows = tx.instances()
        pending.extend(gc.due(life, store, rows, damaged=False))
    if not pending:
        return
    wait = any(inst.source in sources for inst, _ in pending)
    pending = [(inst, reason) for inst, reason in pending
               if inst.source in sources] or pending
    progress = life.progress
    names = ', '.join(inst.name for inst, _ in pending)
    env = life.hook_env()
    env.pop('CRCACHE_INSTANCE', None)
    try:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'crcache', '-q', 'gc'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if wait else subprocess.DEVNULL,
            env=env, start_new_session=True, cwd='/')
    except OSError as err:
        LOG.warning('cannot start garbage collection: %s', err)
        return
    if not wait:
        return
    import select
    deadline = time.monotonic() + budget
    fd = proc.stderr.fileno()
    with progress.task(f'waiting for garbage collection of {names} '
                       f'(pid {proc.pid})', after=0.5):
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                data = os.read(fd, 65536)
                if not data:  # done: its stderr closed as it exited
                    proc.wait()
                    return
                progress.output(data)
        finally:
            proc.stderr.close()
    LOG.warning('garbage collection of %s goes on in the background (pid '
                '%s); acquiring meanwhile', names, proc.pid)
