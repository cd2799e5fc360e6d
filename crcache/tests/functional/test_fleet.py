"""A fleet shared by several machines through one PostgreSQL store.

Three client "machines" (``alpha``, ``bravo``, ``charlie``) and four ssh
hosts (``fleet0``..``fleet3``) are hosts of a :class:`~crcache.tests.
functional.fleet.Lab`: each has its own host name, machine id, home and
address, and reaches the others over addresses the lab made (network
namespaces on a bridge when run as root, loopback addresses otherwise).
A real PostgreSQL server listens on the lab's network. Every client host
has the same configuration, copied into its own home: the store
``team`` (that server, heartbeats expiring after a few seconds), one ssh
source per fleet host and a pool ``fleet`` over them, all in ``team``.

Then what a team does to it: many clients on every machine acquire,
prove on the ssh host that nobody else has it (``mkdir`` of a marker
named after the host, which fails if another holder is there), and
release; a client killed mid-provision is settled by ``crcache gc`` on
another machine once its heartbeat has stopped for long enough, and not
before; a queued ``acquire --wait`` killed on one machine holds up no
other; machines may reach a host with their own credentials; the
database restarts under the clients and nothing is lost.

``CRCACHE_TEST_FLEET_REPORT``, if set, names a file the tests append
their figures to (clients, cycles, durations).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time

import testtools
from testtools import content

from crcache.tests.functional import base
from crcache.tests.functional import fleet
from crcache.tests.functional import postgres
from crcache.tests.functional import sshd

CLIENT_HOSTS = ('alpha', 'bravo', 'charlie')
SSH_HOSTS = 4
CLIENTS = 16
#: The store's heartbeat_timeout (seconds).
HEARTBEAT = 8
#: How long the clients cycle (seconds).
RUN_FOR = 20
#: How long the clients cycle while the database restarts.
RESTART_RUN = 15

#: Runs on the fleet host: a marker named after the host proves nobody
#: else holds it (mkdir fails if the marker is there).
PROOF = ('h=$(hostname); d={locks}/$h; mkdir "$d" 2>/dev/null || '
         '{{ echo "$h"; exit 3; }}; sleep 0.2; rmdir "$d"; echo "$h"')

#: One client: acquire from the pool (queueing), prove, release; until
#: the deadline. Prints what it did as JSON.
CLIENT = textwrap.dedent('''
    import json, subprocess, sys, time
    crcache, proof, deadline = sys.argv[1], sys.argv[2], float(sys.argv[3])
    report = {'cycles': 0, 'doubles': [], 'acquired': [], 'released': [],
              'failures': [], 'hosts': {}, 'times': {}}
    def cr(*args):
        start = time.monotonic()
        try:
            return subprocess.run([crcache, '-q', *args],
                                  capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
        finally:
            report['times'].setdefault(args[0], []).append(
                time.monotonic() - start)
    while time.time() < deadline:
        # Queued behind every other client at worst.
        got = cr('acquire', '-s', 'fleet', '--wait', '120')
        if got.returncode:
            report['failures'].append(['acquire', got.stderr])
            time.sleep(0.2)
            continue
        name = got.stdout.strip()
        report['acquired'].append(name)
        ran = cr('run', name, proof)
        host = ran.stdout.strip()
        if ran.returncode == 3:
            report['doubles'].append([name, host])
        elif ran.returncode:
            report['failures'].append(['run ' + name, ran.stderr])
        else:
            report['hosts'][host] = report['hosts'].get(host, 0) + 1
        # A release that fails (the database away) is tried again, as a
        # user would: giving up would lose the instance.
        while True:
            rel = cr('release', name)
            if rel.returncode == 0:
                report['released'].append(name)
                break
            report['failures'].append(['release ' + name, rel.stderr])
            if 'is not acquired' in rel.stderr:
                # The failed release had let go of it: crcache gc
                # finishes discarding it.
                report['released'].append(name)
                break
            if time.time() > deadline + 60:
                break
            time.sleep(0.2)
        report['cycles'] += 1
    print(json.dumps(report))
''')


class FleetTestCase(testtools.TestCase):
    """The lab, the database, the fleet and the configuration."""

    def setUp(self) -> None:
        super().setUp()
        base.require_program(self, sshd.SSHD, 'openssh-server')
        pg_bin = postgres.require(self)
        self.lab = self.useFixture(fleet.Lab())
        self.clients = [self.lab.add_host(name) for name in CLIENT_HOSTS]
        ssh_hosts = [self.lab.add_host(f'fleet{i}')
                     for i in range(SSH_HOSTS)]
        self.lab.check(self)
        self.pg = self.useFixture(postgres.PostgresServer(
            pg_bin, addresses=(self.lab.db_address,),
            networks=(str(self.lab.network),)))
        self.servers = [self.useFixture(fleet.FleetSSHServer(host))
                        for host in ssh_hosts]
        # Whatever the hosts started goes first, pass or fail.
        self.addCleanup(self.lab.sweep)
        self.shared = os.path.join(self.lab.dir, 'shared')
        self.locks = os.path.join(self.shared, 'locks')
        self.marks = os.path.join(self.shared, 'marks')
        for path in (self.locks, self.marks):
            os.makedirs(path)
            os.chmod(path, 0o777)
        self.known_hosts = os.path.join(self.shared, 'known_hosts')
        with open(self.known_hosts, 'w') as f:
            f.writelines(s.known_hosts_line() + '\n' for s in self.servers)
        self.url = self.pg.url_at(self.lab.db_address)
        self.write_configuration()
        self.reachable()
        self.addDetail('lab', content.text_content(
            f'{self.lab.mode} mode, network {self.lab.network}, database '
            f'{self.url}'))

    # -- configuration -----------------------------------------------------

    def write_configuration(self) -> None:
        """Write one configuration, and copy it to every client host."""
        template = os.path.join(self.lab.dir, 'config')
        write(template, 'stores/team/store.conf', type='postgresql',
              url=self.url, heartbeat_timeout=HEARTBEAT)
        names = []
        for i, server in enumerate(self.servers):
            names.append(f'fleet{i}')
            write(template, f'sources/fleet{i}/source.conf',
                  **server.source_keys(self.known_hosts, store='team'))
        write(template, 'sources/fleet/source.conf', type='pool',
              sources=','.join(names), reserve=2, store='team')
        # A host of its own source, whose provision.d takes its time.
        write(template, 'sources/slow/source.conf',
              **self.servers[0].source_keys(
                  self.known_hosts, store='team', provision_timeout=120))
        write(template, 'sources/slow/provision.d/10-slow',
              f'#!/bin/sh\necho $$ > {self.marks}/hook-pid\n'
              'exec sleep 60\n', mode=0o755)
        write(template, 'sources/slow/discard.d/10-mark',
              f'#!/bin/sh\necho "$1 $(hostname)" >> {self.marks}/discarded\n',
              mode=0o755)
        for host in self.clients:
            shutil.copytree(template, host.config_root, dirs_exist_ok=True)

    def reachable(self) -> None:
        """Every client host reaches the database and every ssh host."""
        targets = [(self.lab.db_address, self.pg.port)] + [
            (s.host.address, s.port) for s in self.servers]
        probe = ('import socket, sys\n'
                 'for a in sys.argv[1:]:\n'
                 '    h, p = a.rsplit(":", 1)\n'
                 '    socket.create_connection((h, int(p)), 5).close()\n')
        for host in self.clients:
            result = host.run([sys.executable, '-c', probe, *(
                f'{a}:{p}' for a, p in targets)], timeout=60)
            self.assertEqual(
                0, result.returncode,
                f'{host.name} cannot reach the lab ({self.lab.mode} mode; '
                f'a firewall between the bridge ports?): {result.stderr}')

    # -- driving the hosts -------------------------------------------------

    def crcache(self, host: fleet.Host, *args: str,
                expect: int | None = 0, timeout: float = 120
                ) -> base.Result:
        """``crcache ARGS`` on ``host``."""
        proc = host.run([base.CRCACHE, *args], timeout=timeout)
        result = base.Result(args, proc.returncode, proc.stdout,
                             proc.stderr)
        if expect is not None:
            self.assertEqual(expect, proc.returncode,
                             f'on {host.name}: {result}')
        return result

    def json(self, host: fleet.Host, *args: str) -> list[dict]:
        return json.loads(self.crcache(host, *args, '-f', 'json').stdout)

    def sql(self, query: str) -> list[list[str]]:
        """Rows of ``query`` on the crcache database."""
        out = self.pg.psql(query, postgres.DATABASE, postgres.ROLE)
        return [line.split('|') for line in out.splitlines() if line]

    def start_clients(self, count: int, seconds: float
                      ) -> list[tuple[fleet.Host, subprocess.Popen]]:
        """``count`` clients spread over the client hosts."""
        proof = PROOF.format(locks=self.locks)
        deadline = time.time() + seconds
        started = []
        for i in range(count):
            host = self.clients[i % len(self.clients)]
            proc = host.popen(
                [sys.executable, '-c', CLIENT, base.CRCACHE, proof,
                 str(deadline)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.addCleanup(proc.wait)
            self.addCleanup(kill, proc)
            started.append((host, proc))
        return started

    def reports(self, clients: list[tuple[fleet.Host, subprocess.Popen]],
                timeout: float) -> list[dict]:
        found = []
        for host, proc in clients:
            out, err = proc.communicate(timeout=timeout)
            self.assertEqual(0, proc.returncode,
                             f'a client on {host.name}: {err}')
            report = json.loads(out)
            report['host'] = host.name
            found.append(report)
        return found

    # -- checks ------------------------------------------------------------

    def assertSettled(self, host: fleet.Host) -> dict:
        """Nothing in use or half-done; counts equal to rows. Returns
        status by source."""
        rows = self.json(host, 'status', '-v')
        self.assertEqual(
            [], [r for r in rows if r['state'] not in ('cached', 'in-use')],
            'half-done instances left')
        status = {r['source']: r for r in self.json(host, 'status')}
        pool = [r for r in rows if r['source'] == 'fleet']
        self.assertEqual(0, status['fleet']['in-use'], rows)
        self.assertEqual(len(pool), status['fleet']['cached'], rows)
        for i in range(SSH_HOSTS):
            mine = [r for r in rows if r['source'] == f'fleet{i}']
            self.assertEqual(
                len(mine), status[f'fleet{i}']['in-use']
                + status[f'fleet{i}']['cached'], rows)
            # In use only inside a cached pool instance.
            self.assertEqual(
                [], [r for r in mine if r['state'] == 'in-use'
                     and not r['held-by'].startswith('fleet-')], rows)
        self.assertEqual(sorted(r['name'] for r in rows), sorted(
            row[0] for row in self.sql('SELECT name FROM instances')))
        self.assertEqual([], self.sql('SELECT id, source, process FROM '
                                      'waiters'))
        self.assertEqual([], os.listdir(self.locks))
        return status

    def assertNoGarbage(self, host: fleet.Host) -> None:
        actions = self.json(host, 'gc')
        self.assertEqual([], [a for a in actions
                              if a['action'] in ('failed', 'kept')],
                         actions)


def write(root: str, path: str, text: str = '', mode: int = 0o644,
          **keys: object) -> None:
    """A file of a configuration tree: ``text``, or ``[DEFAULT]`` keys."""
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    if keys:
        text = '[DEFAULT]\n' + ''.join(f'{k}={v}\n' for k, v in keys.items())
    with open(full, 'w') as f:
        f.write(text)
    os.chmod(full, mode)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()


class TestFleet(FleetTestCase):

    def test_clients_on_every_machine_share_the_fleet(self) -> None:
        started = time.monotonic()
        clients = self.start_clients(CLIENTS, RUN_FOR)
        reports = self.reports(clients, RUN_FOR + 90)
        took = time.monotonic() - started
        cycles = sum(r['cycles'] for r in reports)
        per_host: dict[str, int] = {}
        for report in reports:
            for host, n in report['hosts'].items():
                per_host[host] = per_host.get(host, 0) + n
        summary = (f'{CLIENTS} clients on {len(self.clients)} hosts '
                   f'({self.lab.mode} mode), {cycles} cycles in {took:.1f}s'
                   f' ({cycles / took:.1f}/s); per client '
                   f'{min(r["cycles"] for r in reports)}-'
                   f'{max(r["cycles"] for r in reports)}; per fleet host '
                   f'{dict(sorted(per_host.items()))}')
        times: dict[str, list[float]] = {}
        for report in reports:
            for command, spent in report['times'].items():
                times.setdefault(command, []).extend(spent)
        summary += '; median seconds: ' + ', '.join(
            f'{command} {statistics.median(spent):.2f}'
            for command, spent in sorted(times.items()))
        self.addDetail('summary', content.text_content(summary))
        report_to(summary)
        self.assertEqual([], [d for r in reports for d in r['doubles']])
        self.assertEqual([], [f for r in reports for f in r['failures']])
        for report in reports:
            self.assertEqual(report['acquired'], report['released'])
            self.assertGreater(report['cycles'], 0, report)
        # Every fleet host served, under its own name.
        self.assertEqual(sorted(s.host.name for s in self.servers),
                         sorted(per_host))
        self.assertEqual(cycles, sum(per_host.values()))
        status = self.assertSettled(self.clients[0])
        self.assertEqual(2, status['fleet']['cached'])
        self.assertNoGarbage(self.clients[1])
        # Each machine is itself to the store: holders carry their name.
        names = self.sql("SELECT DISTINCT origin::json->>'host' FROM "
                         'sources')
        self.assertLessEqual({n[0] for n in names}, set(CLIENT_HOSTS))


    def op(self, name: str) -> tuple[str, dict]:
        """The state and work record of a row, as the database has it."""
        [[state, op]] = self.sql(f"SELECT state, op FROM instances WHERE "
                                 f"name = '{name}'")
        return state, json.loads(op)

    def test_killed_client_is_settled_elsewhere_after_its_heartbeat(
            self) -> None:
        alpha, bravo = self.clients[:2]
        client = alpha.popen([base.CRCACHE, 'acquire', '-s', 'slow'],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(client.wait)
        self.addCleanup(kill, client)
        pid_file = os.path.join(self.marks, 'hook-pid')
        base.CLITestCase.wait_for(self, lambda: os.path.exists(pid_file)
                                  and open(pid_file).read().strip(), 60,
                                  'provision.d to start')
        with open(pid_file) as f:
            hook = int(f.read())
        # Alive on its own machine, however long it takes: its heartbeat
        # keeps another machine's gc off it.
        alive_until = time.time() + HEARTBEAT + 1.5
        while time.time() < alive_until:
            self.assertEqual([], self.json(bravo, 'gc'))
        state, op = self.op('slow-0')
        self.assertEqual('provisioning', state)
        self.assertEqual(alpha.name, op['host'])
        self.assertGreater(op['heartbeat'], op['since'] + HEARTBEAT)
        client.kill()
        client.wait()
        # Its hook dies with it.
        base.CLITestCase.wait_for(self, lambda: not sshd.alive(hook), 10,
                                  f'hook {hook} to die with its crcache')
        state, op = self.op('slow-0')
        self.assertEqual('provisioning', state)
        expires = op['heartbeat'] + HEARTBEAT
        early = []
        while True:
            started = time.time()
            actions = self.json(bravo, 'gc')
            ended = time.time()
            if actions:
                break
            early.append(ended)
            self.assertLess(ended, expires + 10, 'gc never settled it')
            time.sleep(0.2)
        # Left alone until the heartbeat expired, then settled there.
        self.assertNotEqual([], [t for t in early if t < expires])
        self.assertGreater(ended, expires)
        [action] = actions
        self.assertEqual(('slow-0', 'discarded'),
                         (action['name'], action['action']))
        self.assertIn(f'on {alpha.name}, whose heartbeat stopped',
                      action['reason'])
        with open(os.path.join(self.marks, 'discarded')) as f:
            self.assertEqual(f'slow-0 {bravo.name}\n', f.read())
        self.assertEqual([], self.json(alpha, 'status', '-v'))
        self.report(f'killed client: settled by gc on {bravo.name} '
                    f'{ended - expires:.1f}s after its heartbeat expired, '
                    f'{started - expires:+.1f}s from the start of that gc; '
                    f'{len(early)} gc before that left it alone')

    def queued(self, host: fleet.Host) -> subprocess.Popen:
        """``acquire -s fleet --wait`` on ``host``, once it is queued."""
        before = int(self.sql('SELECT count(*) FROM waiters')[0][0])
        waiter = host.popen([base.CRCACHE, 'acquire', '-s', 'fleet',
                             '--wait', '120'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
        self.addCleanup(waiter.wait)
        self.addCleanup(kill, waiter)
        base.CLITestCase.wait_for(
            self, lambda: int(self.sql('SELECT count(*) FROM waiters')
                              [0][0]) > before, 30, 'the waiter to queue')
        return waiter

    def test_waiters_of_other_machines(self) -> None:
        alpha, bravo, charlie = self.clients
        held = self.crcache(charlie, 'acquire', '-s', 'fleet', '-n',
                            str(SSH_HOSTS)).stdout.split()
        # Killed while queued on alpha: only alpha can see its process
        # gone; the others pass over it once its heartbeat has stopped.
        waiter = self.queued(alpha)
        waiter.kill()
        waiter.wait()
        self.crcache(charlie, 'release', held[0])
        started = time.monotonic()
        got = self.crcache(bravo, 'acquire', '-s', 'fleet', '--wait',
                           str(4 * HEARTBEAT), expect=None)
        self.assertEqual(0, got.returncode, str(got))
        self.assertLess(time.monotonic() - started, 2 * HEARTBEAT + 5)
        # Passed over while alive (too busy to renew its heartbeat in
        # time; here its row is deleted): it notices, and queues again.
        waiter = self.queued(alpha)
        self.sql('DELETE FROM waiters')
        time.sleep(1)
        self.crcache(charlie, 'release', held[1])
        out, err = waiter.communicate(timeout=60)
        self.assertEqual(0, waiter.returncode, err)
        self.assertEqual(f'fleet-{SSH_HOSTS + 1}\n', out)
        self.assertEqual([], self.sql('SELECT id FROM waiters'))

    def test_machines_may_reach_a_host_their_own_way(self) -> None:
        alpha, bravo = self.clients[:2]
        # bravo has its own copy of the key and of known_hosts, and its
        # own patience: credentials and timeouts, not the host.
        server = self.servers[0]
        mine = os.path.join(bravo.home, 'ssh')
        os.makedirs(mine)
        for path in (server.client_key, self.known_hosts):
            shutil.copy(path, mine)
        write(bravo.config_root, 'sources/fleet0/source.conf',
              **server.source_keys(
                  os.path.join(mine, 'known_hosts'), store='team',
                  ssh_key=os.path.join(mine, 'client_ed25519'),
                  ssh_connect_timeout=20, ssh_persist=5))
        # While alpha holds fleet0, bravo draws from the pool over it.
        [held] = self.crcache(alpha, 'acquire', '-s',
                              'fleet0').stdout.split()
        got = self.crcache(bravo, 'acquire', '-s', 'fleet', '-n', '3',
                           expect=None)
        self.assertEqual(0, got.returncode, str(got))
        self.crcache(bravo, 'release', *got.stdout.split())
        self.crcache(alpha, 'release', held)
        [held] = self.crcache(bravo, 'acquire', '-s',
                              'fleet0').stdout.split()
        self.assertEqual('fleet0\n', self.crcache(bravo, 'run', held,
                                                  'hostname').stdout)
        # Which host it is, though, every machine must agree on.
        write(alpha.config_root, 'sources/fleet0/source.conf',
              **self.servers[1].source_keys(self.known_hosts,
                                            store='team'))
        result = self.crcache(alpha, 'acquire', '-s', 'fleet', expect=None)
        self.assertIn("source 'fleet0' is defined differently here",
                      result.stderr)

    def test_database_restart_loses_nothing(self) -> None:
        started = time.monotonic()
        clients = self.start_clients(CLIENTS, RESTART_RUN)
        time.sleep(RESTART_RUN / 3)
        down = time.monotonic()
        self.pg.restart(down=1.5)
        down = time.monotonic() - down
        reports = self.reports(clients, RESTART_RUN + 120)
        took = time.monotonic() - started
        # Commands the outage hit said so in one line.
        failures = [f for r in reports for f in r['failures']]
        for what, stderr in failures:
            lines = stderr.strip().splitlines()
            self.assertEqual(1, len(lines), f'{what}: {stderr}')
            self.assertNotIn('Traceback', stderr)
            self.assertIn("store 'team'", lines[0], f'{what}: {stderr}')
        self.assertEqual([], [d for r in reports for d in r['doubles']])
        for report in reports:
            self.assertEqual(report['acquired'], report['released'])
        # What the outage cut short is settled by gc: at once on the
        # machine that was doing it, on any other once its heartbeat
        # has expired.
        time.sleep(HEARTBEAT + 1)
        for host in self.clients:
            actions = self.json(host, 'gc')
            self.assertEqual([], [a for a in actions
                                  if a['action'] != 'discarded'], actions)
        self.assertSettled(self.clients[0])
        self.assertNoGarbage(self.clients[2])
        cycles = sum(r['cycles'] for r in reports)
        self.report(f'database restart: {CLIENTS} clients, {cycles} cycles '
                    f'in {took:.1f}s, database down {down:.1f}s; '
                    f'{len(failures)} commands failed during the outage: '
                    + '; '.join(sorted({f[1].strip()[:150]
                                        for f in failures})))
        report_to(json.dumps(failures))

    def report(self, line: str) -> None:
        self.addDetail('summary', content.text_content(line))
        report_to(line)


def report_to(line: str) -> None:
    """Also write the figures where a developer asked for them."""
    path = os.environ.get('CRCACHE_TEST_FLEET_REPORT')
    if path:
        with open(path, 'a') as f:
            f.write(line + '\n')
