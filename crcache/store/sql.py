"""The queries every SQL store shares, and how rows become instances.

The embedded SQLite store and the shared PostgreSQL store keep the same
tables and run the same statements; only connecting, locking and the
placeholder style differ. Statements here are written with ``?``
placeholders, which :class:`SQLTransaction` turns into the driver's own.
JSON columns are stored as text, so both read them alike and a damaged
one (edited by hand) is reported rather than fatal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from crcache import exceptions
from crcache.store import base

COLUMNS = ('name', 'source', 'seq', 'state', 'ref', 'concurrency', 'child',
           'parent', 'holder', 'lease_expires', 'created', 'updated', 'op')
JSON_COLUMNS = frozenset(('ref', 'holder', 'op'))


def row_to_instance(row: tuple, location: str, store: str) -> base.Instance:
    """An instance from its row; a damaged row is read as far as it can
    be, and says what is wrong with it."""
    values = dict(zip(COLUMNS, row))
    problems = []
    for key in JSON_COLUMNS:
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
    inst.store = store
    if problems:
        inst.problem = (
            f'{location}: instance row {inst.name!r}: '
            + '; '.join(problems)
            + ' (edited by hand, or written by another crcache)')
    return inst


def _encode(key: str, value: Any) -> Any:
    if key in JSON_COLUMNS and value is not None:
        return json.dumps(value, sort_keys=True)
    return value


class SQLTransaction(base.Transaction):
    """A transaction on one DB-API connection already inside ``BEGIN``.

    ``placeholder`` is the driver's (``?`` for sqlite3, ``%s`` for
    psycopg); ``location`` and ``store`` name the store in messages and
    on the instances read.
    """

    def __init__(self, conn: Any, location: str, store: str,
                 placeholder: str = '?') -> None:
        self._conn = conn
        self._location = location
        self._store = store
        self._placeholder = placeholder

    def _execute(self, sql: str, args: Iterable[Any] = ()) -> Any:
        if self._placeholder != '?':
            sql = sql.replace('?', self._placeholder)
        return self._conn.execute(sql, list(args))

    def _instance(self, row: tuple) -> base.Instance:
        return row_to_instance(row, self._location, self._store)

    def get(self, name: str) -> base.Instance | None:
        row = self._execute(
            f'SELECT {", ".join(COLUMNS)} FROM instances WHERE name = ?',
            (name,)).fetchone()
        return self._instance(row) if row else None

    def instances(self, source: str | None = None,
                  states: Iterable[str] | None = None
                  ) -> list[base.Instance]:
        sql = f'SELECT {", ".join(COLUMNS)} FROM instances'
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
        return [self._instance(r)
                for r in self._execute(sql, args).fetchall()]

    def count(self, source: str,
              states: Iterable[str] | None = None) -> int:
        if states is None:
            return self._execute(
                'SELECT COUNT(*) FROM instances WHERE source = ?',
                (source,)).fetchone()[0]
        states = list(states)
        return self._execute(
            'SELECT COUNT(*) FROM instances WHERE source = ? AND state IN '
            f'({", ".join("?" * len(states))})',
            [source, *states]).fetchone()[0]

    def next_seq(self, source: str) -> int:
        row = self._execute(
            'SELECT next_seq FROM sources WHERE name = ?',
            (source,)).fetchone()
        seq = row[0] if row else 0
        self._execute(
            'INSERT INTO sources (name, next_seq) VALUES (?, ?) '
            'ON CONFLICT (name) DO UPDATE SET next_seq = excluded.next_seq',
            (source, seq + 1))
        return seq

    def definition(self, source: str) -> base.Definition | None:
        row = self._execute(
            'SELECT fingerprint, origin FROM sources WHERE name = ?',
            (source,)).fetchone()
        if row is None or row[0] is None:
            return None
        try:
            origin = json.loads(row[1]) if row[1] else {}
        except ValueError:
            origin = {}
        return base.Definition(row[0], origin if isinstance(origin, dict)
                               else {})

    def record_definition(self, source: str, fingerprint: str,
                          origin: dict[str, Any]) -> None:
        self._execute(
            'INSERT INTO sources (name, next_seq, fingerprint, origin) '
            'VALUES (?, 0, ?, ?) ON CONFLICT (name) DO UPDATE SET '
            'fingerprint = excluded.fingerprint, origin = excluded.origin',
            (source, fingerprint, json.dumps(origin, sort_keys=True)))

    def add(self, instance: base.Instance) -> None:
        now = time.time()
        instance.created = instance.created or now
        instance.updated = now
        instance.store = self._store
        values = [_encode(c, getattr(instance, c)) for c in COLUMNS]
        self._execute(
            f'INSERT INTO instances ({", ".join(COLUMNS)}) VALUES '
            f'({", ".join("?" * len(COLUMNS))})', values)

    def update(self, name: str, **fields: Any) -> None:
        fields['updated'] = time.time()
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise TypeError(f'unknown instance fields: {sorted(unknown)}')
        assignments = ', '.join(f'{key} = ?' for key in fields)
        cur = self._execute(
            f'UPDATE instances SET {assignments} WHERE name = ?',
            [*(_encode(k, v) for k, v in fields.items()), name])
        if cur.rowcount != 1:
            raise exceptions.StoreError(
                f'instance {name} vanished from the state store '
                f'{self._location}')

    def delete(self, name: str) -> None:
        self._execute('DELETE FROM instances WHERE name = ?', (name,))

    def add_waiter(self, source: str, count: int,
                   process: dict[str, Any]) -> int:
        return self._execute(
            'INSERT INTO waiters (source, count, process, created) '
            'VALUES (?, ?, ?, ?) RETURNING id',
            (source, count, json.dumps(process), time.time())).fetchone()[0]

    def waiters(self, source: str) -> list[base.Waiter]:
        rows = self._execute(
            'SELECT id, source, count, process, created FROM waiters '
            'WHERE source = ? ORDER BY id', (source,)).fetchall()
        return [base.Waiter(r[0], r[1], r[2], json.loads(r[3]), r[4])
                for r in rows]

    def remove_waiter(self, ticket: int) -> None:
        self._execute('DELETE FROM waiters WHERE id = ?', (ticket,))

    def renew_waiter(self, ticket: int, process: dict[str, Any]) -> None:
        self._execute('UPDATE waiters SET process = ? WHERE id = ?',
                      (json.dumps(process), ticket))

    # -- captures (snapshots) ---------------------------------------------

    def captures(self, source: str | None = None) -> list[base.Capture]:
        sql = ('SELECT source, fingerprint, state, capture, created, op, '
               'concurrency FROM captures')
        args: list[Any] = []
        if source is not None:
            sql += ' WHERE source = ?'
            args.append(source)
        found = []
        for row in self._execute(sql + ' ORDER BY source, created',
                                 args).fetchall():
            try:
                op = json.loads(row[5]) if row[5] else None
            except ValueError:
                op = None
            found.append(base.Capture(
                row[0], row[1], row[2], row[3], row[4] or 0.0,
                op if isinstance(op, dict) else None, row[6]))
        return found

    def add_capture(self, capture: base.Capture) -> bool:
        capture.created = capture.created or time.time()
        cur = self._execute(
            'INSERT INTO captures (source, fingerprint, state, capture, '
            'created, op, concurrency) VALUES (?, ?, ?, ?, ?, ?, ?) '
            'ON CONFLICT (source, fingerprint) DO NOTHING',
            (capture.source, capture.fingerprint, capture.state,
             capture.capture, capture.created,
             json.dumps(capture.op) if capture.op is not None else None,
             capture.concurrency))
        return cur.rowcount == 1

    def update_capture(self, source: str, fingerprint: str,
                       **fields: Any) -> None:
        unknown = set(fields) - {'state', 'capture', 'op', 'created',
                                 'concurrency'}
        if unknown:
            raise TypeError(f'unknown capture fields: {sorted(unknown)}')
        if 'op' in fields and fields['op'] is not None:
            fields['op'] = json.dumps(fields['op'])
        assignments = ', '.join(f'{key} = ?' for key in fields)
        self._execute(
            f'UPDATE captures SET {assignments} WHERE source = ? AND '
            'fingerprint = ?', [*fields.values(), source, fingerprint])

    def delete_capture(self, source: str, fingerprint: str) -> None:
        self._execute(
            'DELETE FROM captures WHERE source = ? AND fingerprint = ?',
            (source, fingerprint))
