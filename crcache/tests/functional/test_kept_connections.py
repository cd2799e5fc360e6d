"""The agent keeps PostgreSQL connections and lends them to its workers.

Against real PostgreSQL servers: commands through the agent reuse one
connection (the server's log counts the connections it accepted); a
server restart between commands costs nothing but a new connection; a
worker that dies inside a transaction on a lent connection leaves no
lock behind (the agent discards the connection, the server rolls back);
a worker that gives a connection back clean has it lent again, to the
same server backend; and a lent connection the server closed while it
sat idle is replaced by the store, which connects itself.
"""

from __future__ import annotations

import os
import select
import threading
import time

import psycopg
import testtools

from crcache.daemons import keeper as keeper_
from crcache.daemons import lending
from crcache.store import postgresql
from crcache.tests.functional import postgres
from crcache.tests.functional import test_shared_store


def _connections(server: postgres.PostgresServer) -> int:
    """How many connections as crcache the server has accepted."""
    with open(server.log, errors='replace') as f:
        return sum('connection authorized: user=crcache' in line
                   for line in f)


class TestThroughTheAgent(test_shared_store.StoreTestCase):
    """The real command, through the agent, on a server of its own whose
    log shows every connection it accepts."""

    store = 'team'

    def make_store(self) -> None:
        self.pg = self.useFixture(postgres.PostgresServer(
            postgres.require(self), settings={'log_connections': 'on'}))
        self.write_store('team', type='postgresql', url=self.pg.socket_url,
                         heartbeat_timeout=3)

    def wait_for_kept(self) -> None:
        """Until the agent holds a connection: it opens one in the
        background after a command it ran had to connect by itself (the
        very first command runs without the agent, while it starts)."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self.crcache('status')
            idle = self.pg.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = "
                "'crcache' AND state = 'idle' AND pid <> pg_backend_pid()",
                database=postgres.DATABASE)
            if int(idle) >= 1:  # two commands at once may have asked
                return
            time.sleep(0.1)
        self.fail('the agent kept no connection to the database')

    def test_commands_share_one_connection_and_survive_a_restart(
            self) -> None:
        [name] = self.acquire_names()
        self.wait_for_kept()
        before = _connections(self.pg)
        for _ in range(3):
            self.assertEqual('in-use', self.json('status', '-v')[0]['state'])
        self.crcache('release', name)
        [name] = self.acquire_names()
        self.assertEqual(before, _connections(self.pg))
        # A restart closes the kept connection; the next command
        # connects by itself, the agent keeps one again, and nothing of
        # the state was lost.
        self.pg.restart()
        self.assertEqual('in-use', self.json('status', '-v')[0]['state'])
        self.wait_for_kept()
        before = _connections(self.pg)
        self.crcache('release', name)
        self.assertEqual([], self.json('status', '-v'))
        self.assertEqual(before, _connections(self.pg))


class KeeperTestCase(testtools.TestCase):
    """The agent's keeper and a forked worker, driven directly."""

    def setUp(self) -> None:
        super().setUp()
        self.keeper = keeper_.Keeper()
        self.addCleanup(self.keeper.close)
        self.db = self.useFixture(postgres.Database(self))
        self.url = self.db.socket_url
        postgresql.PostgreSQLStore(self.url).close()  # the schema
        self.key = lending.key(self.url)

    def keep_one(self) -> None:
        """Have the keeper open a connection, as the agent does after a
        worker asked for one."""
        self.keeper.finished(0, [('keep', self.key, self.url, 8)])
        deadline = time.monotonic() + 10
        while self.keeper.opening and time.monotonic() < deadline:
            poller = select.poll()
            for fd, events in self.keeper.watched().items():
                poller.register(fd, events)
            for fd, _ in poller.poll(100):
                self.keeper.ready(fd)
        self.assertEqual(1, len(self.keeper.idle.get(self.key, [])))

    def fork_worker(self, body) -> tuple[int, list[tuple]]:
        """Run ``body()`` in a worker the keeper lent to; return its exit
        status and what it reported."""
        lent = self.keeper.lend()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(read_end)
                self.keeper.in_worker(lent)
                lending.setup(write_end, lent)
                status = body()
            finally:
                os._exit(status)
        os.close(write_end)
        self.keeper.forked(pid, lent)
        _, status = os.waitpid(pid, 0)
        reports = lending.read_reports(read_end)
        os.close(read_end)
        self.keeper.finished(pid, reports)
        return os.waitstatus_to_exitcode(status), reports

    def lock_is_free(self, within: float) -> bool:
        """Whether crcache's writers' lock can be taken within
        ``within`` seconds, on a connection of the test's own."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                if conn.execute('SELECT pg_try_advisory_lock(%s)',
                                (postgresql.LOCK_KEY,)).fetchone()[0]:
                    conn.execute('SELECT pg_advisory_unlock(%s)',
                                 (postgresql.LOCK_KEY,))
                    return True
                time.sleep(0.05)
        return False


class TestKeeper(KeeperTestCase):

    def test_clean_connection_is_lent_again_to_the_same_backend(
            self) -> None:
        self.keep_one()
        backends = []

        def worker() -> int:
            store = postgresql.PostgreSQLStore(self.url)
            with store.transaction() as tx:
                tx._conn.execute('SELECT 1').fetchone()
            store.close()
            lending.give_back()
            return 0

        for _ in range(2):
            status, reports = self.fork_worker(worker)
            self.assertEqual(0, status)
            [clean] = [r for r in reports if r[0] == 'clean']
            self.assertEqual([self.key], clean[1])
            self.assertEqual(1, len(self.keeper.idle[self.key]))
            backends.append(self.keeper.idle[self.key][0][0].info.backend_pid)
        self.assertEqual(backends[0], backends[1])

    def test_worker_dead_inside_a_transaction_leaves_no_lock(self) -> None:
        self.keep_one()

        def worker() -> int:
            store = postgresql.PostgreSQLStore(self.url)
            transaction = store.transaction()
            transaction.__enter__()  # the writers' lock, then death
            os.kill(os.getpid(), 9)
            return 0

        status, reports = self.fork_worker(worker)
        self.assertEqual(-9, status)
        self.assertEqual([], reports)
        # Discarded, not kept: and the server saw it close.
        self.assertEqual([], self.keeper.idle.get(self.key, []))
        self.assertTrue(self.lock_is_free(within=10))

    def test_busy_connection_is_not_given_back(self) -> None:
        self.keep_one()

        def worker() -> int:
            store = postgresql.PostgreSQLStore(self.url)
            started = threading.Event()

            def hold() -> None:
                with store.transaction():
                    started.set()
                    time.sleep(30)

            threading.Thread(target=hold, daemon=True).start()
            started.wait(10)
            lending.give_back()  # another thread is in a transaction
            return 0

        status, reports = self.fork_worker(worker)
        self.assertEqual(0, status)
        self.assertEqual([('clean', [])], reports)
        self.assertEqual([], self.keeper.idle.get(self.key, []))
        self.assertTrue(self.lock_is_free(within=10))

    def test_connection_closed_while_idle_is_replaced(self) -> None:
        self.keep_one()
        [(conn, _, _)] = self.keeper.idle[self.key]
        # The server ends it (as a restart or an administrator would);
        # the keeper is not polling, so it lends it anyway.
        self.db.psql(f'SELECT pg_terminate_backend('
                     f'{conn.info.backend_pid})', user='postgres')
        time.sleep(0.2)

        def worker() -> int:
            store = postgresql.PostgreSQLStore(self.url)
            with store.transaction(write=False) as tx:
                tx._conn.execute('SELECT 1').fetchone()
            if lending.borrowed(store._conn):
                return 4  # still the dead one
            lending.give_back()
            return 0

        status, reports = self.fork_worker(worker)
        self.assertEqual(0, status)
        self.assertEqual([('keep', self.key)], [r[:2] for r in reports
                                                if r[0] == 'keep'])
        self.assertEqual([('clean', [])], [r for r in reports
                                            if r[0] == 'clean'])
        self.assertEqual([], self.keeper.idle.get(self.key, []))

    def test_a_store_that_keeps_none_asks_for_none(self) -> None:
        def worker() -> int:
            postgresql.PostgreSQLStore(self.url, agent_connections=0)
            lending.give_back()
            return 0

        status, reports = self.fork_worker(worker)
        self.assertEqual(0, status)
        self.assertEqual([('clean', [])], reports)
        self.assertEqual({}, self.keeper.opening)
