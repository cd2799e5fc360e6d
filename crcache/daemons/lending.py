"""A worker's side of the database connections the agent lends it.

A PostgreSQL connection costs the server a new backend process, and the
backend's first queries load its catalog caches: several milliseconds of
both machines' time, which would otherwise be paid by every command
(measured in ``doc/source/sharing.rst``). The agent
(:mod:`crcache.daemons.keeper`) therefore keeps a few connections open,
and each worker it forks inherits them. This module is what the worker
does with them:

* :func:`borrow` hands a store the connection lent for its database (by
  :func:`key`: the URL and the libpq environment it is opened with), at
  most once;
* :func:`offer` tells the agent which database a worker had to connect
  to itself, so that the agent opens one to lend next time;
* :func:`give_back`, the last thing a worker does, tells the agent which
  lent connections it leaves exactly as it found them: open, idle, no
  transaction, nothing unread. Any other is discarded by the agent, and
  its closing makes the server roll back whatever the worker left (its
  locks included).

The agent never uses a connection it keeps; between workers, the
connection's client state is the one the agent's copy still holds, which
is why a worker must leave it idle, and why statements are never
prepared on it (``prepare_threshold`` is off). Nothing here imports the
database driver: outside an agent's worker, :func:`active` is false and
every store connects as it always did.
"""

from __future__ import annotations

import marshal
import os
import threading
from typing import Any

#: ``os.environ`` keys that change how libpq connects (its ``PG*``
#: variables, and ``HOME`` for ``~/.pgpass`` and ``~/.pg_service.conf``).
_ENV_PREFIX = 'PG'
_ENV_KEYS = ('HOME',)

_channel: int | None = None
#: key -> connection, lent by the agent and not borrowed yet.
_lent: dict[tuple, Any] = {}
#: key -> (connection, lock): borrowed by a store of this process.
_borrowed: dict[tuple, tuple[Any, threading.Lock]] = {}
#: keys whose connection turned out unusable.
_spoiled: set[tuple] = set()


def setup(channel: int, lent: dict[tuple, Any]) -> None:
    """In a new worker: the agent's report channel and what it lent."""
    global _channel
    _channel = channel
    _lent.clear()
    _lent.update(lent)
    _borrowed.clear()
    _spoiled.clear()


def active() -> bool:
    """Whether this process is an agent's worker that may borrow."""
    return _channel is not None


def key(url: str, environ: dict[str, str] | None = None) -> tuple:
    """What a connection to ``url`` depends on, besides ``url`` itself."""
    environ = os.environ if environ is None else environ
    env = tuple(sorted((k, v) for k, v in environ.items()
                       if k.startswith(_ENV_PREFIX) or k in _ENV_KEYS))
    return (url, env)


def borrow(key: tuple, lock: threading.Lock) -> Any | None:
    """The connection lent for ``key``, or None; ``lock`` guards its use.

    The borrower must run its first statement as a check: a connection
    kept idle may have been closed by the server since (a restart, an
    administrator); on failure it calls :func:`spoil` and connects
    itself.
    """
    conn = _lent.pop(key, None)
    if conn is not None:
        _borrowed[key] = (conn, lock)
    return conn


def borrowed(conn: Any) -> bool:
    """Whether ``conn`` is a connection the agent lent (never closed by
    the borrower: see :func:`give_back`)."""
    return any(conn is mine for mine, _ in _borrowed.values())


def spoil(key: tuple) -> None:
    """The connection borrowed for ``key`` is not to be lent again."""
    _spoiled.add(key)


def offer(key: tuple, conninfo: str, most: int) -> None:
    """Ask the agent to keep a connection to ``conninfo`` for ``key``,
    if it keeps fewer than ``most`` for it.

    ``conninfo`` is the connection's effective parameters (password
    included, when libpq found one): the agent opens its own with them,
    whatever its environment. The channel is a private pipe to the agent,
    which runs as the same user.
    """
    _send(('keep', key, conninfo, most))


def report(message: tuple) -> None:
    """Send the agent ``message`` (it reads them once this worker ends;
    see :func:`crcache.daemons.warmup.config_wanted`)."""
    _send(message)


def give_back() -> None:
    """Tell the agent which lent connections are fit to lend again.

    Called as the worker ends (see :func:`crcache.finish.finish`). A
    borrowed connection counts only if no thread is using it (its lock
    is free, and is then kept, so none starts) and libpq says it is idle
    outside any transaction, with nothing left to read.
    """
    global _channel
    if _channel is None:
        return
    clean = list(_lent)  # lent, never touched
    for key, (conn, lock) in _borrowed.items():
        if key in _spoiled or not lock.acquire(blocking=False):
            continue
        if _idle(conn):
            clean.append(key)
    _send(('clean', clean))
    os.close(_channel)
    _channel = None


def _idle(conn: Any) -> bool:
    try:
        from psycopg import pq
        pgconn = conn.pgconn
        return (not conn.closed
                and pgconn.status == pq.ConnStatus.OK
                and pgconn.transaction_status == pq.TransactionStatus.IDLE
                and pgconn.pipeline_status == pq.PipelineStatus.OFF
                and not pgconn.is_busy())
    except Exception:
        return False


def _send(message: tuple) -> None:
    if _channel is None:
        return
    data = marshal.dumps(message)
    try:
        os.write(_channel, len(data).to_bytes(4, 'big') + data)
    except OSError:
        pass  # the agent reads it only after we exit; never block on it


def read_reports(fd: int) -> list[tuple]:
    """The agent's side: every message a finished worker wrote to ``fd``."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    data = b''.join(chunks)
    reports = []
    while len(data) >= 4:
        size = int.from_bytes(data[:4], 'big')
        body, data = data[4:4 + size], data[4 + size:]
        if len(body) != size:
            break
        try:
            message = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            break
        if isinstance(message, tuple) and message:
            reports.append(message)
    return reports
