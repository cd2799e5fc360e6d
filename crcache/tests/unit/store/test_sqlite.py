"""Tests for crcache.store.sqlite: the embedded state store."""

from __future__ import annotations

import os
import sqlite3
import stat

import fixtures
import testtools

from crcache import exceptions
from crcache.store import base
from crcache.store import sqlite


def instance(tx: base.Transaction, source: str = 'src',
             state: str = base.IN_USE, **fields: object) -> base.Instance:
    """Add a new instance of ``source`` numbered by the store."""
    seq = tx.next_seq(source)
    inst = base.Instance(name=f'{source}-{seq}', source=source, seq=seq,
                         state=state, **fields)
    tx.add(inst)
    return inst


class Boom(Exception):
    pass


class StoreTestCase(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.top = self.useFixture(fixtures.TempDir()).path
        self.directory = os.path.join(self.top, 'cache', 'crcache')
        self.path = os.path.join(self.directory, 'state.db')

    def open(self) -> sqlite.SQLiteStore:
        store = sqlite.SQLiteStore(self.path)
        self.addCleanup(store.close)
        return store

    def names(self, store: sqlite.SQLiteStore) -> list[str]:
        with store.reading() as tx:
            return [i.name for i in tx.instances()]


class TestFiles(StoreTestCase):

    def umask(self, mask: int) -> None:
        old = os.umask(mask)
        self.addCleanup(os.umask, old)

    def test_file_is_0600_and_directory_0700(self) -> None:
        self.umask(0)
        self.open()
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.path).st_mode))
        self.assertEqual(0o700,
                         stat.S_IMODE(os.stat(self.directory).st_mode))

    def test_wal_and_shm_files_are_private(self) -> None:
        self.umask(0)
        store = self.open()
        with store.transaction() as tx:
            instance(tx)
        for suffix in ('-wal', '-shm'):
            path = self.path + suffix
            if os.path.exists(path):
                self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode),
                                 path)

    def test_existing_wide_modes_are_tightened(self) -> None:
        os.makedirs(self.directory)
        os.chmod(self.directory, 0o755)
        with open(self.path, 'w'):
            pass
        os.chmod(self.path, 0o644)
        self.open()
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.path).st_mode))
        self.assertEqual(0o700,
                         stat.S_IMODE(os.stat(self.directory).st_mode))

    def test_wal_journal_mode(self) -> None:
        self.open()
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(
            'wal', conn.execute('PRAGMA journal_mode').fetchone()[0])

    def test_newer_schema_refused(self) -> None:
        os.makedirs(self.directory, mode=0o700)
        conn = sqlite3.connect(self.path)
        conn.execute(f'PRAGMA user_version={sqlite.SCHEMA_VERSION + 1}')
        conn.close()
        e = self.assertRaises(exceptions.StoreError, sqlite.SQLiteStore,
                              self.path)
        self.assertIn('newer', str(e))
        self.assertIn(self.path, str(e))

    def test_not_a_database(self) -> None:
        os.makedirs(self.directory, mode=0o700)
        with open(self.path, 'wb') as f:
            f.write(b'not sqlite at all' * 512)
        e = self.assertRaises(exceptions.StoreError, sqlite.SQLiteStore,
                              self.path)
        self.assertIn(self.path, str(e))

    def test_directory_is_a_file(self) -> None:
        os.makedirs(os.path.dirname(self.directory))
        with open(self.directory, 'w'):
            pass
        self.assertRaises(exceptions.StoreError, sqlite.SQLiteStore,
                          self.path)

    def test_reopen_keeps_state(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            instance(tx, ref={'host': 'h'}, holder={'pid': 1})
        store.close()
        again = self.open()
        with again.reading() as tx:
            inst = tx.get('src-0')
        self.assertEqual({'host': 'h'}, inst.ref)
        self.assertEqual({'pid': 1}, inst.holder)
        self.assertEqual(base.IN_USE, inst.state)


class TestTransactions(StoreTestCase):

    def test_next_seq_counts_per_source(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            self.assertEqual([0, 1, 2], [tx.next_seq('a') for _ in 'xyz'])
            self.assertEqual(0, tx.next_seq('b'))

    def test_next_seq_never_reuses_after_delete(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            first = instance(tx)
            second = instance(tx)
        with store.transaction() as tx:
            tx.delete(first.name)
            tx.delete(second.name)
        with store.transaction() as tx:
            self.assertEqual(0, tx.count('src'))
            self.assertEqual('src-2', instance(tx).name)

    def test_next_seq_survives_reopen(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            tx.delete(instance(tx).name)
        store.close()
        with self.open().transaction() as tx:
            self.assertEqual(1, tx.next_seq('src'))

    def test_rollback_on_exception_leaves_nothing(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            kept = instance(tx, state=base.CACHED)

        def fail() -> None:
            with store.transaction() as tx:
                instance(tx)
                tx.update(kept.name, state=base.IN_USE)
                raise Boom()

        self.assertRaises(Boom, fail)
        with store.reading() as tx:
            self.assertEqual(['src-0'], [i.name for i in tx.instances()])
            self.assertEqual(base.CACHED, tx.get(kept.name).state)
        # The store is usable afterwards and the counter was rolled back.
        with store.transaction() as tx:
            self.assertEqual('src-1', instance(tx).name)

    def test_rollback_seen_from_another_connection(self) -> None:
        store = self.open()

        def fail() -> None:
            with store.transaction() as tx:
                instance(tx)
                raise Boom()

        self.assertRaises(Boom, fail)
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(
            0, conn.execute('SELECT COUNT(*) FROM instances').fetchone()[0])

    def test_update_missing_name(self) -> None:
        store = self.open()

        def update() -> None:
            with store.transaction() as tx:
                tx.update('src-9', state=base.CACHED)

        e = self.assertRaises(exceptions.StoreError, update)
        self.assertIn('src-9', str(e))

    def test_update_unknown_field(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            instance(tx)

        def update() -> None:
            with store.transaction() as tx:
                tx.update('src-0', colour='red')

        self.assertRaises(TypeError, update)

    def test_update_and_count(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            a = instance(tx)
            instance(tx, state=base.CACHED)
            instance(tx, source='other')
        with store.transaction() as tx:
            tx.update(a.name, state=base.DISCARDING, ref={'id': 'x'})
        with store.reading() as tx:
            self.assertEqual(2, tx.count('src'))
            self.assertEqual(1, tx.count('src', [base.CACHED]))
            self.assertEqual(0, tx.count('src', [base.IN_USE]))
            self.assertEqual({'id': 'x'}, tx.get(a.name).ref)
            self.assertEqual(['src-1'], [
                i.name for i in tx.instances('src', [base.CACHED])])
            self.assertEqual(['other-0', 'src-0', 'src-1'],
                             [i.name for i in tx.instances()])

    def test_duplicate_name_refused(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            instance(tx)

        def add_again() -> None:
            with store.transaction() as tx:
                tx.add(base.Instance('src-0', 'src', 0, base.IN_USE))

        self.assertRaises(Exception, add_again)
        self.assertEqual(['src-0'], self.names(store))

    def test_writers_exclude_each_other(self) -> None:
        self.useFixture(fixtures.MonkeyPatch(
            'crcache.store.sqlite.LOCK_DEADLINE', 0.2))
        first = self.open()
        second = self.open()
        with first.transaction() as tx:
            instance(tx)

            def write() -> None:
                with second.transaction() as tx2:
                    instance(tx2)

            e = self.assertRaises(exceptions.StoreError, write)
            self.assertIn('locked', str(e))
        with second.transaction() as tx:
            self.assertEqual('src-1', instance(tx).name)
        self.assertEqual(['src-0', 'src-1'], self.names(first))


class TestCaptures(StoreTestCase):
    """The captures table (snapshot = provisioned)."""

    def test_one_row_per_source_and_fingerprint(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            self.assertTrue(tx.add_capture(base.Capture(
                'box', 'f1', base.CAPTURING, op={'pid': 1})))
            # A second claim of the same fingerprint is refused...
            self.assertFalse(tx.add_capture(base.Capture(
                'box', 'f1', base.CAPTURING, op={'pid': 2})))
            # ...another fingerprint or source is not.
            self.assertTrue(tx.add_capture(base.Capture(
                'box', 'f2', base.READY, capture='img')))
            self.assertTrue(tx.add_capture(base.Capture(
                'other', 'f1', base.READY, capture='img2')))
        with store.reading() as tx:
            [first, second] = tx.captures('box')
            self.assertEqual(3, len(tx.captures()))
        self.assertEqual(('f1', base.CAPTURING, None, {'pid': 1}),
                         (first.fingerprint, first.state, first.capture,
                          first.op))
        self.assertEqual(('f2', 'img'), (second.fingerprint, second.capture))
        self.assertGreater(first.created, 0)

    def test_update_and_delete(self) -> None:
        store = self.open()
        with store.transaction() as tx:
            tx.add_capture(base.Capture('box', 'f1', base.CAPTURING,
                                        op={'pid': 1}))
            tx.update_capture('box', 'f1', state=base.READY, capture='img',
                              op=None)
        with store.reading() as tx:
            [row] = tx.captures('box')
        self.assertEqual((base.READY, 'img', None),
                         (row.state, row.capture, row.op))
        with store.transaction() as tx:
            self.assertRaises(TypeError, tx.update_capture, 'box', 'f1',
                              source='x')
            tx.delete_capture('box', 'f1')
        with store.reading() as tx:
            self.assertEqual([], tx.captures())

    def test_a_store_of_the_previous_schema_is_upgraded(self) -> None:
        """A state file written before captures existed gains the table
        and keeps its instances."""
        os.makedirs(self.directory, mode=0o700)
        conn = sqlite3.connect(self.path)
        for step in range(1, sqlite.SCHEMA_VERSION):
            for statement in sqlite._MIGRATIONS[step].split(';'):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('store_id', "
                     "'abc')")
        conn.execute("INSERT INTO instances (name, source, seq, state, "
                     "created, updated) VALUES ('box-0', 'box', 0, "
                     "'cached', 1, 1)")
        conn.execute(f'PRAGMA user_version={sqlite.SCHEMA_VERSION - 1}')
        conn.commit()
        conn.close()
        store = self.open()
        self.assertEqual('abc', store.store_id)
        self.assertEqual(['box-0'], self.names(store))
        with store.transaction() as tx:
            self.assertTrue(tx.add_capture(base.Capture('box', 'f',
                                                        base.READY)))
