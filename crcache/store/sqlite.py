"""The embedded state store: one SQLite file in WAL mode.

The default, needing no setup: the implicit store ``local`` is
``$XDG_CACHE_HOME/crcache/state.db``; a ``store.conf`` of ``type =
sqlite`` may name another file (``path``). It serves one machine only.

Writers take the database with ``BEGIN IMMEDIATE``. SQLite's own busy
handler sleeps in growing steps and lets a busy writer starve others for
seconds, so we retry the ``BEGIN`` ourselves with a short random pause,
which keeps every process moving (see PERF-NOTES). The directory is 0700
and the file 0600: the store names hosts and instances.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from oslo_config import cfg

from crcache import exceptions
from crcache import paths
from crcache.store import base
from crcache.store import sql

SCHEMA_VERSION = 4
# Each version's statements, applied in order to bring a store up to date.
_MIGRATIONS = {1: '''
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    ref TEXT,
    concurrency INTEGER,
    child TEXT,
    parent TEXT,
    holder TEXT,
    lease_expires REAL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_source
    ON instances (source, state, seq);
''', 2: '''
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
ALTER TABLE instances ADD COLUMN op TEXT;
CREATE TABLE IF NOT EXISTS waiters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    count INTEGER NOT NULL,
    process TEXT NOT NULL,
    created REAL NOT NULL
);
''', 3: '''
ALTER TABLE sources ADD COLUMN fingerprint TEXT;
ALTER TABLE sources ADD COLUMN origin TEXT;
''', 4: '''
CREATE TABLE IF NOT EXISTS captures (
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    capture TEXT,
    concurrency INTEGER,
    created REAL NOT NULL,
    op TEXT,
    PRIMARY KEY (source, fingerprint)
);
'''}
#: Give up on a store that stays locked this long (seconds).
LOCK_DEADLINE = 60.0
#: Pauses between attempts on a locked store grow from the first to the
#: last (seconds, each drawn at random up to the current bound): short
#: at first, which keeps busy writers fair, then long enough not to burn
#: a core while another process holds the store.
FIRST_PAUSE = 0.0005
LAST_PAUSE = 0.025
#: Say what we are waiting for once a wait has lasted this long.
TELL_AFTER = 1.0


class SQLiteStore(base.Store):
    """State kept in a private SQLite database file."""

    opts = [
        cfg.StrOpt(
            'path',
            help='For sqlite stores: the database file (default: '
                 '$XDG_CACHE_HOME/crcache/<store name>.db). Its directory '
                 'is made private (0700).'),
    ]

    @classmethod
    def from_conf(cls, name: str, conf: Any,
                  env: Mapping[str, str]) -> 'SQLiteStore':
        path = conf.path if conf is not None else None
        if path:
            path = os.path.abspath(os.path.expanduser(path))
        else:
            file = 'state.db' if name == 'local' else f'{name}.db'
            path = os.path.join(paths.cache_dir(env), file)
        return cls(path, name=name)

    def __init__(self, path: str, name: str = 'local') -> None:
        self.name = name
        self.location = path
        self._thread_lock = threading.Lock()
        try:
            paths.ensure_private_dir(os.path.dirname(path))
            # Create the file ourselves so it is never world-readable, not
            # even for the moment before a chmod.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            os.close(fd)
            self._conn = sqlite3.connect(
                path, timeout=0, isolation_level=None,
                check_same_thread=False)
            self._retry(
                lambda: self._conn.execute('PRAGMA synchronous=NORMAL'))
            self._ensure_schema()
        except (OSError, sqlite3.Error) as err:
            raise exceptions.StoreError(
                f'cannot open the state store {path}: {err}')

    def _ensure_schema(self) -> None:
        version = self._retry(
            lambda: self._conn.execute('PRAGMA user_version').fetchone()[0])
        if version > SCHEMA_VERSION:
            raise exceptions.StoreError(
                f'the state store {self.location} was written by a newer '
                f'crcache (schema {version}; this one knows '
                f'{SCHEMA_VERSION})')
        if version < SCHEMA_VERSION:
            if version == 0:
                # journal_mode is persistent and cannot change inside a
                # transaction; it needs a moment of exclusive access.
                self._retry(
                    lambda: self._conn.execute('PRAGMA journal_mode=WAL'))
            with self.transaction():
                current = self._conn.execute(
                    'PRAGMA user_version').fetchone()[0]
                for step in range(current + 1, SCHEMA_VERSION + 1):
                    # Statement by statement: executescript() would
                    # commit the transaction we are in.
                    for statement in _MIGRATIONS[step].split(';'):
                        if statement.strip():
                            self._conn.execute(statement)
                if current < SCHEMA_VERSION:
                    self._conn.execute(
                        f'PRAGMA user_version={SCHEMA_VERSION}')
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES "
                    "('store_id', ?)", (uuid.uuid4().hex[:12],))
        self.store_id = self._retry(lambda: self._conn.execute(
            "SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0])

    def _retry(self, operation: Any) -> Any:
        started = time.monotonic()
        pause = FIRST_PAUSE
        told = False
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as err:
                if 'locked' not in str(err) and 'busy' not in str(err):
                    raise
                waited = time.monotonic() - started
                if waited > LOCK_DEADLINE:
                    raise exceptions.StoreError(
                        f'the state store {self.location} stayed locked '
                        f'for {LOCK_DEADLINE:.0f}s')
                if waited > TELL_AFTER and not told and self.on_wait:
                    self.on_wait(f'waiting for the state store '
                                 f'{self.location}: another process holds '
                                 'it')
                    told = True
                time.sleep(random.uniform(0, pause))
                pause = min(pause * 1.5, LAST_PAUSE)

    @contextlib.contextmanager
    def transaction(self, write: bool = True
                    ) -> Iterator[sql.SQLTransaction]:
        conn = self._conn
        # One connection, one transaction at a time: threads of this
        # process (parallel provisioning) take turns.
        with self._thread_lock:
            self._retry(lambda: conn.execute(
                'BEGIN IMMEDIATE' if write else 'BEGIN'))
            try:
                yield sql.SQLTransaction(conn, self.location, self.name)
            except BaseException:
                conn.execute('ROLLBACK')
                raise
            else:
                try:
                    self._retry(lambda: conn.execute('COMMIT'))
                except BaseException:
                    if conn.in_transaction:
                        conn.execute('ROLLBACK')
                    raise

    def close(self) -> None:
        self._conn.close()


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point for the sqlite store's keys."""
    return [(None, SQLiteStore.opts)]
