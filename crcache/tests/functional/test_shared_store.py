"""Stores: the same lifecycle on the embedded store and on PostgreSQL.

A fleet of ssh "hosts" (sources ``h0``..``h3``, all reaching one real
sshd) and a pool ``fleet`` over them live in a configured store: an
embedded SQLite store of its own (``type = sqlite``), or a real
PostgreSQL server the test starts. The same test bodies run against
both. PostgreSQL-only behaviour (definitions that must agree, holders on
other machines, a database that goes away, schema versions) follows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from crcache.store import postgresql
from crcache.tests.functional import base
from crcache.tests.functional import postgres
from crcache.tests.functional import test_ssh

HOSTS = 4


class StoreTestCase(test_ssh.SSHTestCase):
    """A fleet in the store ``self.store`` (see :meth:`make_store`)."""

    store = 'mine'

    def setUp(self) -> None:
        super().setUp()
        self.make_store()
        self.write_fleet()

    def make_store(self) -> None:
        self.write_store(self.store, type='sqlite')

    def write_fleet(self, root: str | None = None,
                    **overrides: object) -> None:
        for i in range(HOSTS):
            self.write_source(f'h{i}', root=root, **self.server.source_keys(
                self.known_hosts, store=self.store, **overrides))
        self.write_source('fleet', root=root, type='pool',
                          sources=','.join(f'h{i}' for i in range(HOSTS)),
                          store=self.store)

    def json(self, *args: str, **kwargs: object) -> list[dict]:
        return json.loads(self.crcache(*args, '-f', 'json',
                                       **kwargs).stdout)

    def acquire_names(self, count: int = 1, *args: str) -> list[str]:
        names = self.crcache('acquire', '-s', 'fleet', '-n', str(count),
                             *args).stdout.split()
        self.assertEqual(count, len(names))
        return names


class LifecycleMixin:
    """What a user does with a fleet, whatever the store."""

    def test_acquire_run_release(self) -> None:
        names = self.acquire_names(3)
        self.assertEqual(['fleet-0', 'fleet-1', 'fleet-2'], names)
        for name in names:
            self.assertEqual('hi\n', self.run_on(name, 'echo hi').stdout)
        rows = {r['name']: r for r in self.json('status', '-v')}
        self.assertEqual({self.store}, {rows[n]['store'] for n in names})
        self.assertEqual('in-use', rows['h0-0']['state'])
        self.crcache('release', *names)
        status = self.status('fleet', 'h0')
        self.assertEqual((0, 0), (status['fleet']['cached'],
                                  status['fleet']['in-use']))
        # Numbers are never used again.
        self.assertEqual(['fleet-3'], self.acquire_names())

    def test_capacity_and_waiting(self) -> None:
        names = self.acquire_names(HOSTS)
        result = self.crcache('acquire', '-s', 'fleet', expect=None)
        self.assertOneLineError(result, "'fleet'", 'cannot supply')
        waiter = self.start('acquire', '-s', 'fleet', '--wait', '60')
        time.sleep(1)
        self.assertIsNone(waiter.poll())
        self.crcache('release', names[0])
        self.assertEqual(0, waiter.wait(30), waiter.stderr.read())
        self.assertEqual(b'fleet-4\n', waiter.stdout.read())

    def test_lease_expiry_is_collected(self) -> None:
        [name] = self.acquire_names(1, '--lease', '1')
        time.sleep(1.3)
        rows = self.json('gc')
        self.assertIn((name, 'discarded'),
                      [(r['name'], r['action']) for r in rows])
        self.assertEqual([], self.json('status', '-v'))

    def test_fill_then_acquire_the_reserve(self) -> None:
        self.write_source('fleet', type='pool', reserve=2, store=self.store,
                          sources=','.join(f'h{i}' for i in range(HOSTS)))
        made = self.json('fill', 'fleet')
        self.assertEqual(2, len(made))
        self.assertEqual(2, self.status('fleet')['fleet']['cached'])
        self.assertEqual(sorted(r['name'] for r in made)[:1],
                         self.acquire_names())


class TestEmbeddedStore(LifecycleMixin, StoreTestCase):
    """A second embedded store, of a file of its own."""

    def test_its_own_file(self) -> None:
        self.acquire_names()
        self.assertTrue(os.path.exists(os.path.join(self.cache_dir,
                                                    'mine.db')))
        [row] = [r for r in self.json('stores') if r['store'] == 'mine']
        self.assertEqual(('sqlite', False, True),
                         (row['type'], row['shared'], row['reachable']))


class PostgresTestCase(StoreTestCase):
    """The fleet in a PostgreSQL store, ``team``: a database of its own
    on the test process's server (see :class:`postgres.Database`)."""

    store = 'team'

    def make_store(self) -> None:
        self.pg = self.useFixture(postgres.Database(self))
        self.store_conf = self.write_store(
            'team', type='postgresql', url=self.pg.socket_url,
            heartbeat_timeout=3)


class TestPostgresLifecycle(LifecycleMixin, PostgresTestCase):
    """The same bodies, on PostgreSQL."""


class TestPostgres(PostgresTestCase):
    """What only a shared store does."""

    def other_client(self, name: str, **env: str) -> dict[str, str]:
        """The environment of another user with the same configuration."""
        home = os.path.join(self.home, name)
        os.makedirs(home)
        shutil.copytree(self.config_root,
                        os.path.join(home, '.config', 'crcache'))
        return dict(HOME=home, XDG_CONFIG_HOME=os.path.join(home, '.config'),
                    XDG_CACHE_HOME=os.path.join(home, '.cache'), **env)

    def test_status_and_stores_show_the_store(self) -> None:
        self.acquire_names()
        rows = {r['store']: r for r in self.json('stores')}
        self.assertEqual(('postgresql', True, True),
                         (rows['team']['type'], rows['team']['shared'],
                          rows['team']['reachable']))
        self.assertNotIn(':', rows['team']['location'].split('@')[0]
                         .split('//')[1])  # no password shown
        rows = {r['source']: r for r in self.json('status', '-a')}
        self.assertEqual('team', rows['fleet']['store'])
        self.assertEqual('local', rows['local']['store'])
        table = self.crcache('status', '-a').stdout
        self.assertIn('postgresql', table)

    def test_machine_bound_source_refused(self) -> None:
        path = self.write_source('mine', type='local', store='team')
        result = self.crcache('acquire', '-s', 'mine', expect=None)
        self.assertOneLineError(result, path, "'local'", 'bound to this '
                                'machine', "shared store 'team'")

    def test_pool_and_sources_share_a_store(self) -> None:
        path = self.write_source('mixed', type='pool', sources='h0,local',
                                 store='team')
        result = self.crcache('acquire', '-s', 'mixed', expect=None)
        self.assertOneLineError(result, path, "source 'local'",
                                "store 'local'", "not 'team'")

    def test_unknown_store(self) -> None:
        path = self.write_source('stray', **self.server.source_keys(
            self.known_hosts, store='teem'))
        result = self.crcache('acquire', '-s', 'stray', expect=None)
        self.assertOneLineError(result, path, "unknown store 'teem'",
                                "did you mean 'team'")

    def test_definitions_must_agree(self) -> None:
        names = self.acquire_names(2)
        # Another user whose fleet differs (its hosts allow 2 each).
        env = self.other_client('bob', USER='bob')
        self.write_fleet(root=os.path.join(env['XDG_CONFIG_HOME'],
                                           'crcache'), maximum=2)
        result = self.crcache('acquire', '-s', 'fleet', env=env,
                              expect=None)
        self.assertOneLineError(
            result, env['XDG_CONFIG_HOME'], 'is defined differently here',
            "shared store 'team'", 'live instance', os.path.join(
                self.config_root, 'sources'), 'release its instances')
        # Once no instance is left, the new definition takes over.
        self.crcache('release', *names)
        got = self.crcache('acquire', '-s', 'fleet', env=env).stdout
        self.assertEqual('fleet-2\n', got)

    def test_release_of_another_users_instance(self) -> None:
        env = self.other_client('alice', USER='alice')
        [name] = self.crcache('acquire', '-s', 'fleet',
                              env=env).stdout.split()
        result = self.crcache('release', name, expect=None)
        self.assertOneLineError(result, f"instance '{name}' is held by "
                                'alice@', '--force')
        self.assertEqual('in-use', self.json('status', '-v')[0]['state'])
        self.crcache('release', '--force', name)
        self.assertEqual([], [r for r in self.json('status', '-v')
                              if r['state'] == 'in-use'])

    def test_database_away_then_back(self) -> None:
        # A server of its own, to stop and start.
        self.pg = self.useFixture(postgres.PostgresServer(
            postgres.require(self)))
        self.write_store('team', type='postgresql', url=self.pg.socket_url,
                         heartbeat_timeout=3)
        [name] = self.acquire_names()
        self.pg.stop()
        result = self.crcache('acquire', '-s', 'fleet', expect=None)
        self.assertOneLineError(result, 'state store', "store 'team'")
        result = self.crcache('release', name, expect=None)
        self.assertOneLineError(result, "store 'team'")
        [row] = [r for r in self.json('stores') if r['store'] == 'team']
        self.assertFalse(row['reachable'])
        self.pg.start()
        # Nothing was lost: it is still held, and can be released.
        self.assertEqual('in-use', self.json('status', '-v')[0]['state'])
        self.crcache('release', name)
        self.assertEqual([], self.json('status', '-v'))

    def test_captures_in_a_store_of_the_previous_schema(self) -> None:
        """A shared store made before captures existed gains their
        table (and keeps its instances); claims are one per fingerprint
        whichever client makes them."""
        self.acquire_names()
        before = self.json('status', '-v')
        self.pg.psql("DROP TABLE captures; UPDATE meta SET value = '1' "
                     "WHERE key = 'schema_version'")
        self.assertEqual([], json.loads(self.crcache(
            'snapshot', 'list', '-f', 'json').stdout))
        self.assertEqual(f'{postgresql.SCHEMA_VERSION}\n', self.pg.psql(
            "SELECT value FROM meta WHERE key = 'schema_version'"))
        self.assertEqual(before, self.json('status', '-v'))
        from crcache.store import base as store_base
        stores = [postgresql.PostgreSQLStore(self.pg.socket_url)
                  for _ in range(2)]
        for store in stores:
            self.addCleanup(store.close)
        claims = []
        for store in stores:
            with store.transaction() as tx:
                claims.append(tx.add_capture(store_base.Capture(
                    'h0', 'f1', store_base.CAPTURING, op={'pid': 1})))
        self.assertEqual([True, False], claims)
        with stores[1].transaction() as tx:
            tx.update_capture('h0', 'f1', state=store_base.READY,
                              capture='img', op=None)
        rows = json.loads(self.crcache('snapshot', 'list', '--no-check',
                                       '-f', 'json').stdout)
        self.assertEqual([('h0', 'ready', 'f1', 'img')],
                         [(r['source'], r['state'], r['fingerprint'],
                           r['capture']) for r in rows])

    def test_newer_schema_is_refused(self) -> None:
        self.acquire_names()
        self.pg.psql("UPDATE meta SET value = '99' WHERE key = "
                     "'schema_version'")
        result = self.crcache('status', 'fleet', expect=None)
        self.assertIn('schema version 99, newer than this crcache knows',
                      result.stderr)
        self.assertIn('upgrade crcache', result.stderr)

    def test_schema_is_made_once_by_concurrent_clients(self) -> None:
        procs = [subprocess.Popen(
            [base.CRCACHE, 'acquire', '-s', f'h{i}'], env=self.env,
            cwd=self.project, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(HOSTS)]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            self.assertEqual(0, proc.returncode, err)
        self.assertEqual(f'{postgresql.SCHEMA_VERSION}\n', self.pg.psql(
            "SELECT value FROM meta WHERE key = 'schema_version'"))
