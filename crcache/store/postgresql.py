"""The shared state store: a PostgreSQL database a team's machines share.

A ``store.conf`` of ``type = postgresql`` names the database with ``url``,
a libpq URI (``postgresql://crcache@db.example.com/crcache``); passwords
come from libpq's usual places (``~/.pgpass``, ``PGPASSWORD``, a service
file), never from the file. psycopg 3 is imported only when such a store
is used, so the embedded default's start-up never pays for it.

The tables are the SQLite store's (:mod:`crcache.store.sql`). Write
transactions are serialised by a transaction-scoped advisory lock, which
gives them the same exclusive, short critical section as SQLite's
``BEGIN IMMEDIATE`` on every machine at once; reads take a consistent
snapshot and no lock. The schema is versioned in the ``meta`` table: a
crcache older than the database refuses with the version it needs, a
newer one upgrades the schema in one transaction. A database that goes
away mid-command fails that command with one line; every row already
written says what may exist, and ``crcache gc`` settles the rest once
the database is back.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from oslo_config import cfg

from crcache import exceptions
from crcache.conftypes import Duration
from crcache.store import base
from crcache.store import sql

SCHEMA_VERSION = 2
#: The advisory lock that serialises crcache's writers (an arbitrary
#: 64-bit constant: 'crcache' in ASCII).
LOCK_KEY = 0x6372636163686500
#: What starts a write transaction (the lock is taken inside it) and a
#: read one: sent with the transaction's first statement, in one message
#: (see :class:`_PGTransaction`).
_BEGIN_WRITE = ('BEGIN', f'SELECT pg_advisory_xact_lock({LOCK_KEY})')
_BEGIN_READ = ('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',)
#: Seconds to wait for the server to answer a connection.
CONNECT_TIMEOUT = 10
_MIGRATIONS = {1: '''
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    next_seq BIGINT NOT NULL,
    fingerprint TEXT,
    origin TEXT
);
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    seq BIGINT NOT NULL,
    state TEXT NOT NULL,
    ref TEXT,
    concurrency INTEGER,
    child TEXT,
    parent TEXT,
    holder TEXT,
    lease_expires DOUBLE PRECISION,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    op TEXT
);
CREATE INDEX IF NOT EXISTS instances_by_source
    ON instances (source, state, seq);
CREATE TABLE IF NOT EXISTS waiters (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    count INTEGER NOT NULL,
    process TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
)
''', 2: '''
CREATE TABLE IF NOT EXISTS captures (
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    capture TEXT,
    concurrency INTEGER,
    created DOUBLE PRECISION NOT NULL,
    op TEXT,
    PRIMARY KEY (source, fingerprint)
)
'''}


def shown(url: str) -> str:
    """``url`` as messages show it: without a password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ''
    if parts.port:
        host += f':{parts.port}'
    netloc = f'{parts.username}@{host}' if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc))


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


class PostgreSQLStore(base.Store):
    """State kept in a PostgreSQL database, shared by many machines."""

    shared = True
    warm_modules = ('psycopg',)
    opts = [
        cfg.StrOpt(
            'url',
            help='For postgresql stores: the database, as a libpq URI '
                 '(postgresql://user@host:port/dbname, or with '
                 '?host=/socket/dir). Passwords come from ~/.pgpass, '
                 'PGPASSWORD or a service file, not from here. Required '
                 'for type=postgresql.'),
        cfg.Opt(
            'heartbeat_timeout',
            type=Duration(),
            default=30,
            help='For postgresql stores: work in progress (provisioning, '
                 'discarding) whose worker on another machine has not '
                 'renewed its heartbeat for this long (a duration) is '
                 'taken to be abandoned: crcache gc on any machine may '
                 'then finish or undo it. Workers beat several times '
                 'within it.'),
        cfg.IntOpt(
            'agent_connections',
            default=32,
            min=0,
            help='For postgresql stores: how many connections to the '
                 "database each user's crcache agent on a machine may "
                 'keep open and lend to its commands, so that a command '
                 'does not pay for a new connection (and the server for '
                 'a new backend). Each is closed after 30 seconds '
                 'unused. Count them in the server\'s max_connections; '
                 '0 keeps none.'),
    ]

    @classmethod
    def from_conf(cls, name: str, conf: Any,
                  env: Mapping[str, str]) -> 'PostgreSQLStore':
        return cls(conf.url, name=name,
                   heartbeat_timeout=conf.heartbeat_timeout,
                   agent_connections=conf.agent_connections)

    def __init__(self, url: str, name: str = 'shared',
                 heartbeat_timeout: float = 30.0,
                 agent_connections: int = 32) -> None:
        self.name = name
        self.heartbeat_timeout = heartbeat_timeout
        self.agent_connections = agent_connections
        self.url = url
        self.location = shown(url)
        self._lock = threading.Lock()
        try:
            import psycopg
        except ImportError:
            raise exceptions.StoreError(
                f'store {name!r} is a PostgreSQL database, but psycopg is '
                "not installed (pip install 'psycopg[binary]')")
        self._errors = (psycopg.Error,)
        self._undefined_table = psycopg.errors.UndefinedTable
        self._operational = psycopg.OperationalError
        if self._borrow():
            return
        try:
            self._conn = psycopg.connect(url, autocommit=True,
                                         connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as err:
            raise exceptions.StoreError(
                f'cannot reach the state store {self.location} (store '
                f'{name!r}): {_reason(err)}')
        self._ensure_schema()
        if self._lending is not None and self.agent_connections:
            self._lending.offer(self._key, _conninfo(self._conn),
                                self.agent_connections)

    def _borrow(self) -> bool:
        """Use the connection the agent lent this worker, if it did.

        Kept idle by the agent, it may have been closed since (by a
        server restart, say): then it is given up and a new one made,
        which is safe because nothing was done on it yet.
        """
        self._lending = None
        from crcache.daemons import lending
        if not lending.active():
            return False
        self._lending = lending
        self._key = lending.key(self.url)
        conn = lending.borrow(self._key, self._lock)
        if conn is None:
            return False
        self._conn = conn
        try:
            self._ensure_schema()
        except exceptions.StoreError:
            if not (conn.closed or conn.broken):
                raise  # the database's answer, not the connection's
            lending.spoil(self._key)
            return False
        return True

    def _ensure_schema(self) -> None:
        # Usually the schema is there and current: one statement, one
        # round trip, no lock (the connection is in autocommit mode).
        version, store_id = 0, None
        try:
            with self._lock:
                found = dict(self._conn.execute(
                    "SELECT key, value FROM meta WHERE key IN "
                    "('schema_version', 'store_id')").fetchall())
        except self._undefined_table:
            pass  # a new database: made below
        except self._errors as err:
            raise self._failure(err)
        else:
            version = int(found.get('schema_version', 0))
            store_id = found.get('store_id')
        self._check_version(version)
        if version == SCHEMA_VERSION and store_id:
            self.store_id = store_id
            return
        # Made or upgraded in one transaction, under the writers' lock.
        with self.transaction() as tx:
            exists = tx._execute("SELECT to_regclass('meta') IS NOT NULL"
                                 ).fetchone()[0]
            conn = tx._conn
            version = 0
            if exists:
                row = conn.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
                version = int(row[0]) if row else 0
            self._check_version(version)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step].split(';'):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES "
                "('schema_version', %s) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value", (str(SCHEMA_VERSION),))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('store_id', %s) "
                "ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex[:12],))
            self.store_id = conn.execute(
                "SELECT value FROM meta WHERE key = 'store_id'"
            ).fetchone()[0]

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise exceptions.StoreError(
                f'the state store {self.location} has schema version '
                f'{version}, newer than this crcache knows '
                f'({SCHEMA_VERSION}): upgrade crcache on this machine to '
                'use it')

    @contextlib.contextmanager
    def transaction(self, write: bool = True
                    ) -> Iterator[sql.SQLTransaction]:
        # One connection, one transaction at a time: threads of this
        # process (parallel provisioning) take turns. BEGIN (and the
        # lock) go out with the first statement: a round trip saved, and
        # a transaction that runs no statement costs none.
        with self._lock:
            conn = self._conn
            tx = _PGTransaction(conn, self.location, self.name,
                                _BEGIN_WRITE if write else _BEGIN_READ)
            try:
                yield tx
            except BaseException as err:
                if tx.begun:
                    with contextlib.suppress(*self._errors):
                        conn.execute('ROLLBACK')
                if isinstance(err, self._errors):
                    raise self._failure(err) from None
                raise
            if not tx.begun:
                return
            try:
                conn.execute('COMMIT')
            except self._errors as err:
                raise self._failure(err)

    def _failure(self, err: BaseException) -> exceptions.StoreError:
        """A database error as the one line the user sees."""
        if isinstance(err, self._operational) or self._conn.closed:
            return exceptions.StoreError(
                f'lost the state store {self.location} (store '
                f'{self.name!r}): {_reason(err)}; nothing of this command '
                "after that was done (crcache gc settles what was under "
                'way once the database is back)')
        return exceptions.StoreError(
            f'the state store {self.location} refused: {_reason(err)}')

    def close(self) -> None:
        if self._lending is not None and self._lending.borrowed(self._conn):
            return  # the agent's: given back as the worker ends
        with contextlib.suppress(*self._errors):
            self._conn.close()


class _PGTransaction(sql.SQLTransaction):
    """A transaction whose ``BEGIN`` goes with its first statement.

    The first statement is bound on the client (psycopg's
    ``ClientCursor``, which quotes every value as a literal) so that it
    can share one simple-protocol message with the statements that
    begin the transaction; the rest are sent as usual.
    """

    def __init__(self, conn: Any, location: str, store: str,
                 begin: tuple[str, ...]) -> None:
        super().__init__(conn, location, store, placeholder='%s')
        self._begin = begin
        #: Whether BEGIN was sent (so COMMIT or ROLLBACK is due).
        self.begun = False

    def _execute(self, sql_text: str, args: Iterable[Any] = ()) -> Any:
        if self.begun:
            return super()._execute(sql_text, args)
        self.begun = True
        import psycopg
        cursor = psycopg.ClientCursor(self._conn)
        cursor.execute('; '.join((*self._begin,
                                  sql_text.replace('?', self._placeholder))),
                       list(args))
        for _ in self._begin:  # to the statement's own result
            cursor.nextset()
        return cursor


def _conninfo(conn: Any) -> str:
    """``conn``'s effective connection parameters, as a conninfo string
    (password included: it goes to this user's own agent only)."""
    from psycopg.conninfo import make_conninfo
    params = {}
    for option in conn.pgconn.info:
        if option.val is not None and option.val != b'':
            params[option.keyword.decode()] = option.val.decode()
    return make_conninfo('', **params)


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point for the postgresql store's keys."""
    return [(None, PostgreSQLStore.opts)]
