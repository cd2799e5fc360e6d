"""Heartbeats: how work in progress in a shared store shows it is alive.

Whether a process still runs can only be checked on its own host. So a
process working on instances of a shared store (provisioning, discarding)
renews a ``heartbeat`` time in each such row's work record every few
seconds; crcache gc on any host may finish or undo a row whose heartbeat
is older than the store's ``heartbeat_timeout``, and never touches one
whose worker is alive on another host. A process queued by ``acquire
--wait`` renews the heartbeat of its place in the queue the same way, so
that one killed on another host stops holding up the queue
(:func:`waiter_gone`). Machines sharing a store need clocks that agree
within a few seconds (NTP).
"""

from __future__ import annotations

import logging
import threading
import time

from crcache import exceptions
from crcache import invocation
from crcache.store.base import DISCARDING, PROVISIONING, Store

LOG = logging.getLogger(__name__)


def interval(timeout: float) -> float:
    """How often to beat for a store whose heartbeats expire after
    ``timeout`` seconds: often enough to miss two and still be alive."""
    return max(0.2, min(5.0, timeout / 4))


def expired(op: dict | None, timeout: float, now: float) -> float | None:
    """How long ago a work record's heartbeat stopped, if it is older
    than ``timeout``; None while it is fresh."""
    if not op:
        return None
    beat = op.get('heartbeat', op.get('since'))
    if not isinstance(beat, (int, float)):
        return None
    age = now - beat
    return age if age > timeout else None


def waiter_gone(process: dict | None, timeout: float | None,
                now: float) -> bool:
    """Whether a queued acquisition's process has gone: on this host, by
    its pid; in a shared store (``timeout`` given), on another host, by
    its heartbeat."""
    alive = invocation.alive(process)
    if alive is not None:
        return not alive
    if timeout is None or invocation.here(process):
        return False
    return expired(process, timeout, now) is not None


class Heartbeat:
    """Renews the heartbeat of this process's work in ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f'heartbeat-{store.name}')
        self._thread.start()

    def _run(self) -> None:
        every = interval(self.store.heartbeat_timeout)
        while not self._stop.wait(every):
            try:
                self.beat()
            except exceptions.CrcacheError as err:
                LOG.debug('heartbeat for %s: %s', self.store.location, err)

    def beat(self) -> int:
        """Renew now; return how many rows were ours."""
        me = invocation.identity()
        now = time.time()
        mine = 0
        with self.store.transaction() as tx:
            for inst in tx.instances(states=[PROVISIONING, DISCARDING]):
                op = inst.op or {}
                if not invocation.same_process(op, me):
                    continue
                tx.update(inst.name, op=dict(op, heartbeat=now))
                mine += 1
        return mine

    def stop(self) -> None:
        """Stop renewing (the process is done with the store)."""
        self._stop.set()
