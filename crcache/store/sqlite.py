"""The embedded state store: one SQLite file in WAL mode.

Writers take the database with ``BEGIN IMMEDIATE``. SQLite's own busy
handler sleeps in growing steps and lets a busy writer starve others for
seconds, so we retry the ``BEGIN`` ourselves with a short random pause,
which keeps every process moving (see PERF-NOTES). The directory is 0700
and the file 0600: the store names hosts and instances.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from crcache import exceptions
from crcache import paths
from crcache.store import base

SCHEMA_VERSION = 2
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
'''}
_COLUMNS = ('name', 'source', 'seq', 'state', 'ref', 'concurrency', 'child',
            'parent', 'holder', 'lease_expires', 'created', 'updated', 'op')
_JSON_COLUMNS = frozenset(('ref', 'holder', 'op'))
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


def _row_to_instance(row: tuple, location: str) -> base.Instance:
    """An instance from its row; a damaged row is read as far as it can
    be, and says what is wrong with it."""
    values = dict(zip(_COLUMNS, row))
    problems = []
    for key in _JSON_COLUMNS:
        if values[key] is None:
            continue
        try:
            values[key] = json.loads(values[key])
        except (TypeError, ValueError):
            values[key] = None
            problems.append(f'its {key} column is not valid JSON')
            continue
        if not isinstance(values[key], dict):
            values[key] = None
            problems.append(f'its {key} column is not a JSON object')
    for key in ('lease_expires', 'created', 'updated'):
        if values[key] is not None and not isinstance(
                values[key], (int, float)):
            problems.append(f'its {key} column is not a number')
            values[key] = None if key == 'lease_expires' else 0.0
    if values['state'] not in base.KNOWN_STATES:
        problems.append(f'its state {values["state"]!r} is unknown')
    inst = base.Instance(**values)
    if problems:
        inst.problem = (
            f'{location}: instance row {inst.name!r}: '
            + '; '.join(problems)
            + ' (edited by hand, or written by another crcache)')
    return inst


def _encode(key: str, value: Any) -> Any:
    if key in _JSON_COLUMNS and value is not None:
        return json.dumps(value, sort_keys=True)
    return value


class SQLiteTransaction(base.Transaction):
    """A transaction on one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection, location: str) -> None:
        self._conn = conn
        self._location = location

    def get(self, name: str) -> base.Instance | None:
        row = self._conn.execute(
            f'SELECT {", ".join(_COLUMNS)} FROM instances WHERE name = ?',
            (name,)).fetchone()
        return _row_to_instance(row, self._location) if row else None

    def instances(self, source: str | None = None,
                  states: Iterable[str] | None = None
                  ) -> list[base.Instance]:
        sql = f'SELECT {", ".join(_COLUMNS)} FROM instances'
        where, args = [], []
        if source is not None:
            where.append('source = ?')
            args.append(source)
        if states is not None:
            states = list(states)
            where.append(f'state IN ({", ".join("?" * len(states))})')
            args.extend(states)
        if where:
            sql += ' WHERE ' + ' AND '.join(where)
        sql += ' ORDER BY source, seq'
        return [_row_to_instance(r, self._location)
                for r in self._conn.execute(sql, args)]

    def count(self, source: str,
              states: Iterable[str] | None = None) -> int:
        if states is None:
            return self._conn.execute(
                'SELECT COUNT(*) FROM instances WHERE source = ?',
                (source,)).fetchone()[0]
        states = list(states)
        return self._conn.execute(
            'SELECT COUNT(*) FROM instances WHERE source = ? AND state IN '
            f'({", ".join("?" * len(states))})',
            [source, *states]).fetchone()[0]

    def next_seq(self, source: str) -> int:
        row = self._conn.execute(
            'SELECT next_seq FROM sources WHERE name = ?',
            (source,)).fetchone()
        seq = row[0] if row else 0
        self._conn.execute(
            'INSERT INTO sources (name, next_seq) VALUES (?, ?) '
            'ON CONFLICT (name) DO UPDATE SET next_seq = excluded.next_seq',
            (source, seq + 1))
        return seq

    def add(self, instance: base.Instance) -> None:
        now = time.time()
        instance.created = instance.created or now
        instance.updated = now
        values = [_encode(c, getattr(instance, c)) for c in _COLUMNS]
        self._conn.execute(
            f'INSERT INTO instances ({", ".join(_COLUMNS)}) VALUES '
            f'({", ".join("?" * len(_COLUMNS))})', values)

    def update(self, name: str, **fields: Any) -> None:
        fields['updated'] = time.time()
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise TypeError(f'unknown instance fields: {sorted(unknown)}')
        assignments = ', '.join(f'{key} = ?' for key in fields)
        cur = self._conn.execute(
            f'UPDATE instances SET {assignments} WHERE name = ?',
            [*(_encode(k, v) for k, v in fields.items()), name])
        if cur.rowcount != 1:
            raise exceptions.StoreError(
                f'instance {name} vanished from the state store')

    def delete(self, name: str) -> None:
        self._conn.execute('DELETE FROM instances WHERE name = ?', (name,))

    def add_waiter(self, source: str, count: int,
                   process: dict[str, Any]) -> int:
        cur = self._conn.execute(
            'INSERT INTO waiters (source, count, process, created) '
            'VALUES (?, ?, ?, ?)',
            (source, count, json.dumps(process), time.time()))
        return cur.lastrowid

    def waiters(self, source: str) -> list[base.Waiter]:
        rows = self._conn.execute(
            'SELECT id, source, count, process, created FROM waiters '
            'WHERE source = ? ORDER BY id', (source,))
        return [base.Waiter(r[0], r[1], r[2], json.loads(r[3]), r[4])
                for r in rows]

    def remove_waiter(self, ticket: int) -> None:
        self._conn.execute('DELETE FROM waiters WHERE id = ?', (ticket,))


class SQLiteStore(base.Store):
    """State kept in a private SQLite database file."""

    def __init__(self, path: str) -> None:
        self.location = path
        self._thread_lock = threading.Lock()
        #: Told (one line) when a wait for the lock becomes noticeable.
        self.on_wait = None
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
                    ) -> Iterator[SQLiteTransaction]:
        conn = self._conn
        # One connection, one transaction at a time: threads of this
        # process (parallel provisioning) take turns.
        with self._thread_lock:
            self._retry(lambda: conn.execute(
                'BEGIN IMMEDIATE' if write else 'BEGIN'))
            try:
                yield SQLiteTransaction(conn, self.location)
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
