"""The agent's side of the database connections it lends its workers.

See :mod:`crcache.daemons.lending` for why, and for the worker's side.
The agent (:mod:`crcache.daemons.agent`) asks the :class:`Keeper`, at
each fork, for the connections to lend that worker (one idle connection
per database it keeps), and hands it each finished worker's reports: the
connections it gives back clean go back to the idle ones, every other is
discarded; a worker that had to connect itself asks for one to be kept.

Connections are opened without blocking (libpq's ``PQconnectStart``),
inside the agent's poll loop, with a deadline; the agent never sends a
statement on one. An idle connection that becomes readable (the server
closing it, or shutting down) is discarded at once, as is one kept idle
longer than :data:`IDLE_CLOSE` seconds. Discarding never writes to the
socket: it may be in the middle of a message a dead worker was sending,
so its descriptor is pointed at ``/dev/null`` before libpq lets go of
it, and the server, seeing the connection close, rolls back whatever
transaction was open on it.

psycopg is imported only when a worker first asks for a connection.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from typing import Any

#: Connections kept per database (idle, lent and opening, together),
#: whatever a worker asks (each store says how many it allows: its
#: ``agent_connections``).
MAX_PER_KEY = 64
#: Seconds a connection may stay idle before it is closed.
IDLE_CLOSE = 30.0
#: Seconds a new connection has to be established.
CONNECT_DEADLINE = 10.0
#: Seconds before trying again to open one for a database that failed.
RETRY_AFTER = 30.0


class _Opening:
    __slots__ = ('key', 'pgconn', 'deadline', 'events')

    def __init__(self, key: tuple, pgconn: Any, deadline: float) -> None:
        self.key = key
        self.pgconn = pgconn
        self.deadline = deadline
        self.events = select.POLLOUT


class Keeper:
    """Connections kept open by the agent, by :func:`lending.key`."""

    def __init__(self) -> None:
        #: key -> [(connection, idle since, its socket)]
        self.idle: dict[tuple, list[tuple[Any, float, int]]] = {}
        self.lent: dict[int, dict[tuple, Any]] = {}
        self.opening: dict[int, _Opening] = {}
        self.failed: dict[tuple, float] = {}
        #: Connections opened so far (a spare worker forked before the
        #: last one lacks it: see crcache.daemons.spare).
        self.opened = 0

    # -- the agent's poll loop ---------------------------------------------

    def watched(self) -> dict[int, int]:
        """Descriptors to poll, with their events."""
        found = {fd: o.events for fd, o in self.opening.items()}
        for conns in self.idle.values():
            for _, _, fd in conns:
                found[fd] = select.POLLIN
        return found

    def deadline(self, now: float) -> float | None:
        """Seconds until the keeper next needs the loop, if it does."""
        times = [o.deadline for o in self.opening.values()]
        times += [since + IDLE_CLOSE for conns in self.idle.values()
                  for _, since, _ in conns]
        return max(min(times) - now, 0.0) if times else None

    def ready(self, fd: int) -> bool:
        """Handle an event on ``fd``; False if it is not the keeper's."""
        if fd in self.opening:
            self._advance(self.opening.pop(fd))
            return True
        for key, conns in self.idle.items():
            for entry in conns:
                if entry[2] == fd:
                    conns.remove(entry)  # the server spoke: closing
                    self._discard(entry[0])
                    return True
        return False

    def expire(self, now: float) -> None:
        for fd, opening in list(self.opening.items()):
            if opening.deadline <= now:
                del self.opening[fd]
                self.failed[opening.key] = now
                with contextlib.suppress(Exception):
                    opening.pgconn.finish()
        for conns in self.idle.values():
            for entry in list(conns):
                if entry[1] + IDLE_CLOSE <= now:
                    conns.remove(entry)
                    self._close(entry[0])

    # -- workers -----------------------------------------------------------

    def lend(self) -> dict[tuple, Any]:
        """One idle connection per database, for the worker about to be
        forked (see :meth:`forked`)."""
        lent = {}
        for key, conns in self.idle.items():
            if conns:
                lent[key] = conns.pop()[0]
        return lent

    def forked(self, pid: int, lent: dict[tuple, Any]) -> None:
        """``lent`` went to worker ``pid`` (or back, if ``pid`` is 0)."""
        if pid:
            self.lent[pid] = lent
            return
        for key, conn in lent.items():
            self._keep(key, conn)

    def in_worker(self, lent: dict[tuple, Any]) -> None:
        """In a new worker: make every connection not lent to it unusable
        without touching it (it belongs to the agent or another worker),
        so that this process neither uses it nor keeps it open."""
        mine = {id(conn) for conn in lent.values()}
        conns = [conn for entries in self.idle.values()
                 for conn, _, _ in entries]
        conns += [conn for others in self.lent.values()
                  for conn in others.values()]
        for conn in conns:
            if id(conn) not in mine:
                _blind(conn)
        for opening in self.opening.values():
            _blind_fd(opening.pgconn.socket)
        # Kept referenced until the worker's os._exit: never finalised.
        _orphans.extend(conns)
        _orphans.extend(o.pgconn for o in self.opening.values())

    def reclaim(self, pid: int) -> None:
        """Take back at once what worker ``pid`` was lent: it never used
        it and never will (a spare worker let go before its request)."""
        for key, conn in self.lent.pop(pid, {}).items():
            self._keep(key, conn)

    def finished(self, pid: int, reports: list[tuple]) -> None:
        """Worker ``pid`` is gone; ``reports`` is what it said."""
        lent = self.lent.pop(pid, {})
        clean: set = set()
        for report in reports:
            if report[0] == 'clean' and len(report) == 2 and isinstance(
                    report[1], list):
                clean.update(k for k in report[1] if isinstance(k, tuple))
            elif (report[0] == 'keep' and len(report) == 4
                  and isinstance(report[1], tuple)
                  and isinstance(report[2], str)
                  and isinstance(report[3], int)):
                self._want(report[1], report[2],
                           min(report[3], MAX_PER_KEY))
        for key, conn in lent.items():
            if key in clean:
                self._keep(key, conn)
            else:
                self._discard(conn)

    def close(self) -> None:
        """Close every idle connection (the agent is leaving)."""
        for conns in self.idle.values():
            for conn, _, _ in conns:
                self._close(conn)
        self.idle.clear()
        for opening in self.opening.values():
            with contextlib.suppress(Exception):
                opening.pgconn.finish()
        self.opening.clear()

    # -- connections -------------------------------------------------------

    def _count(self, key: tuple) -> int:
        return (len(self.idle.get(key, ()))
                + sum(key in lent for lent in self.lent.values())
                + sum(o.key == key for o in self.opening.values()))

    def _want(self, key: tuple, conninfo: str, most: int) -> None:
        now = time.monotonic()
        if self._count(key) >= most:
            return
        if now - self.failed.get(key, -RETRY_AFTER) < RETRY_AFTER:
            return
        try:
            from psycopg import pq
            pgconn = pq.PGconn.connect_start(conninfo.encode())
        except Exception:
            self.failed[key] = now
            return
        if pgconn.status == pq.ConnStatus.BAD:
            self.failed[key] = now
            pgconn.finish()
            return
        self._advance(_Opening(key, pgconn, now + CONNECT_DEADLINE))

    def _advance(self, opening: _Opening) -> None:
        from psycopg import pq
        pgconn = opening.pgconn
        try:
            status = pgconn.connect_poll()
        except Exception:
            status = pq.PollingStatus.FAILED
        if status in (pq.PollingStatus.READING, pq.PollingStatus.WRITING):
            opening.events = (select.POLLIN
                              if status == pq.PollingStatus.READING
                              else select.POLLOUT)
            self.opening[pgconn.socket] = opening
            return
        if status != pq.PollingStatus.OK:
            self.failed[opening.key] = time.monotonic()
            with contextlib.suppress(Exception):
                pgconn.finish()
            return
        try:
            import psycopg
            pgconn.nonblocking = 1
            conn = psycopg.Connection(pgconn)
            conn.autocommit = True
            conn.prepare_threshold = None  # see lending: never prepare
        except Exception:
            with contextlib.suppress(Exception):
                pgconn.finish()
            return
        self.failed.pop(opening.key, None)
        self.opened += 1
        self._keep(opening.key, conn)

    def _keep(self, key: tuple, conn: Any) -> None:
        try:
            fd = conn.pgconn.socket
        except Exception:  # closed: nothing to keep
            return
        self.idle.setdefault(key, []).append((conn, time.monotonic(), fd))

    @staticmethod
    def _close(conn: Any) -> None:
        """Close an idle connection the polite way (it is idle)."""
        with contextlib.suppress(Exception):
            conn.close()

    @staticmethod
    def _discard(conn: Any) -> None:
        """Close a connection in an unknown state without writing to it."""
        _blind(conn)
        with contextlib.suppress(Exception):
            conn.close()


#: Connections a worker must never finalise (see :meth:`Keeper.in_worker`).
_orphans: list[Any] = []


def _blind(conn: Any) -> None:
    with contextlib.suppress(Exception):
        _blind_fd(conn.pgconn.socket)


def _blind_fd(fd: int) -> None:
    """Point ``fd`` at /dev/null: whatever libpq writes to it goes
    nowhere, and the socket it was closes when no process has it."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)

