"""The Python API, driven the way a test runner drives it.

Each test points a :class:`crcache.Client` at its own home directory (the
same configuration and state the ``crcache`` command of the test sees,
through ``env``) and checks what it did both through the API and through
the command, which share the state store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import subprocess
import tempfile
import threading
import time

import crcache
from crcache import exceptions
from crcache.tests.functional import base
from crcache.tests.functional import sshd

#: A command that waits (at most ~10 s) until $2 instances have started
#: it in directory $1, then writes where it ran: it only succeeds when
#: the instances really run at once.
RENDEZVOUS = (
    'touch "$1/started.$3"; i=0; '
    'while [ "$(ls "$1" | grep -c "^started\\.")" -lt "$2" ]; do '
    'i=$((i + 1)); [ "$i" -gt 200 ] && exit 9; sleep 0.05; done; '
    'echo "$3 $PWD" > result.txt')


class APITestCase(base.CLITestCase):
    """A client over the test's configuration and state."""

    def setUp(self) -> None:
        super().setUp()
        self.client = crcache.Client(env=self.env)
        self.addCleanup(self.client.close)

    def in_use(self, source: str) -> int:
        """``in-use`` of ``source``, as the command line reports it."""
        return self.status(source)[source]['in-use']


class TestTestRunner(APITestCase):
    """Acquire 3 from a pool, run in parallel threads, copy out, release."""

    def setUp(self) -> None:
        super().setUp()
        for name in ('w1', 'w2', 'w3'):
            self.write_source(name, type='local', concurrency=2)
        self.write_source('fleet', type='pool', sources='w1,w2,w3')

    def test_parallel_run_and_copy_out(self) -> None:
        meeting = os.path.join(self.home, 'meeting')
        results = os.path.join(self.home, 'results')
        os.mkdir(meeting)
        os.mkdir(results)
        outcomes: dict[str, subprocess.CompletedProcess] = {}
        errors: list[BaseException] = []

        def worker(inst: crcache.Instance) -> None:
            try:
                workdir = os.path.join(self.home, 'work', inst.name)
                os.makedirs(workdir)
                outcomes[inst.name] = inst.run(
                    ['sh', '-c', RENDEZVOUS, 'sh', meeting, '3', inst.name],
                    cwd=workdir, capture_output=True, check=True)
                inst.copy_out(os.path.join(workdir, 'result.txt'),
                              os.path.join(results, inst.name))
            except BaseException as err:
                errors.append(err)

        with self.client.acquire('fleet', count=3) as instances:
            self.assertEqual(3, len(instances))
            self.assertEqual(['fleet-0', 'fleet-1', 'fleet-2'],
                             sorted(instances.names))
            self.assertEqual({'fleet'}, {i.source for i in instances})
            self.assertEqual([2, 2, 2], [i.concurrency for i in instances])
            self.assertEqual(3, self.in_use('fleet'))
            threads = [threading.Thread(target=worker, args=(inst,))
                       for inst in instances]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            self.assertEqual([], errors)
        self.assertEqual(0, self.in_use('fleet'))
        for name, result in outcomes.items():
            self.assertEqual(0, result.returncode)
            self.assertEqual(b'', result.stderr)
            with open(os.path.join(results, name)) as f:
                self.assertEqual(
                    f'{name} {os.path.join(self.home, "work", name)}\n',
                    f.read())
        self.assertEqual(3, len(outcomes))

    def test_acquire_from_threads_at_once(self) -> None:
        got: list[str] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def one() -> None:
            try:
                acquired = self.client.acquire('fleet')
                with lock:
                    got.extend(acquired.names)
                acquired[0].run('true', check=True)
                acquired.release()
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=one) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual([], errors)
        self.assertEqual(3, len(set(got)))
        self.assertEqual(0, self.in_use('fleet'))

    def test_released_on_exception(self) -> None:
        with self.assertRaisesRegex(RuntimeError, 'the test failed'):
            with self.client.acquire('fleet', count=2) as instances:
                self.assertEqual(2, self.in_use('fleet'))
                raise RuntimeError('the test failed')
        self.assertEqual(0, self.in_use('fleet'))
        # The handles are spent: a cached instance of the same name may
        # be someone else's by now.
        self.assertRaises(exceptions.InstanceStateError,
                          instances[0].run, 'true')


class TestRun(APITestCase):

    def setUp(self) -> None:
        super().setUp()
        self.acquired = self.client.acquire()
        self.addCleanup(self.acquired.release)
        self.inst = self.acquired[0]

    def test_words_arrive_intact(self) -> None:
        words = ['$HOME', 'two words', "it's", 'A=1', '*', '']
        result = self.inst.run(['printf', '[%s]\\n', *words],
                               capture_output=True)
        self.assertEqual(''.join(f'[{w}]\n' for w in words).encode(),
                         result.stdout)
        self.assertEqual(['printf', '[%s]\\n', *words], result.args)

    def test_a_string_is_a_command_line(self) -> None:
        result = self.inst.run('echo a && echo b; exit 3',
                               capture_output=True)
        self.assertEqual((3, b'a\nb\n', b''),
                         (result.returncode, result.stdout, result.stderr))

    def test_check_raises_command_failed(self) -> None:
        with self.assertRaises(crcache.CommandFailed) as caught:
            self.inst.run(['sh', '-c', 'echo out; echo err >&2; exit 4'],
                          capture_output=True, check=True)
        err = caught.exception
        self.assertIsInstance(err, subprocess.CalledProcessError)
        self.assertIsInstance(err, crcache.CrcacheError)
        self.assertEqual((4, b'out\n', b'err\n', self.inst.name),
                         (err.returncode, err.stdout, err.stderr,
                          err.instance))
        self.assertEqual(
            f"{self.inst.name}: command \"sh -c 'echo out; echo err >&2; "
            "exit 4'\" exited with status 4", str(err))
        # Without check, the status is only reported.
        self.assertEqual(4, self.inst.run('exit 4').returncode)

    def test_streams(self) -> None:
        data = os.urandom(3 << 20)
        result = self.inst.run('cat', stdin=data, capture_output=True)
        self.assertEqual(hashlib.sha256(data).digest(),
                         hashlib.sha256(result.stdout).digest())
        with tempfile.TemporaryFile() as out:
            result = self.inst.run('echo out; echo err >&2', stdout=out,
                                   stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
            out.seek(0)
            self.assertEqual(b'out\nerr\n', out.read())
            self.assertIsNone(result.stdout)
        with tempfile.TemporaryFile() as given:
            given.write(b'from a file\n')
            given.seek(0)
            result = self.inst.run('cat; echo gone >&2', stdin=given,
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        self.assertEqual((b'from a file\n', None),
                         (result.stdout, result.stderr))
        self.assertRaises(ValueError, self.inst.run, 'true',
                          capture_output=True, stdout=subprocess.DEVNULL)
        self.assertRaises(TypeError, self.inst.run, 'cat', stdin='text')
        self.assertRaises(ValueError, self.inst.run, 'true',
                          stdout=io.BytesIO())  # no descriptor

    def test_cwd_and_env(self) -> None:
        odd = os.path.join(self.home, "it's a $dir")
        os.mkdir(odd)
        result = self.inst.run(
            ['sh', '-c', 'pwd; printf "%s|" "$A" "$B"'], cwd=odd,
            env={'A': 'x y', 'B': "$HOME 'q'"}, capture_output=True)
        self.assertEqual(f"{odd}\nx y|$HOME 'q'|".encode(), result.stdout)
        # A directory that cannot be entered runs nothing.
        result = self.inst.run('false || echo ran', cwd='/nonexistent',
                               capture_output=True)
        self.assertNotEqual(0, result.returncode)
        self.assertEqual(b'', result.stdout)
        self.assertRaises(exceptions.InvalidName, self.inst.run, 'true',
                          env={'NOT A NAME': '1'})
        self.assertRaises(exceptions.InvalidName, self.inst.run, 'true',
                          cwd='a\0b')

    def test_copy_in_and_out(self) -> None:
        tree = os.path.join(self.home, 'tree')
        os.makedirs(os.path.join(tree, 'sub'))
        self.write_file(os.path.join(tree, 'sub', 'run.sh'), '#!/bin/sh\n',
                        0o750)
        target = os.path.join(self.home, 'a:colon')
        os.mkdir(target)
        self.inst.copy_in(tree, target, recursive=True)
        self.assertEqual(self.local_listing(tree),
                         self.local_listing(os.path.join(target, 'tree')))
        back = os.path.join(self.home, 'back')
        self.inst.copy_out(os.path.join(target, 'tree'), back, True)
        self.assertEqual(self.local_listing(tree), self.local_listing(back))
        with self.assertRaises(exceptions.CopyError) as caught:
            self.inst.copy_out(os.path.join(target, 'tree'), back + '2')
        self.assertIn('-r', str(caught.exception))

    def test_the_command_line_sees_the_same_instance(self) -> None:
        result = self.run_on(self.inst.name, 'echo', 'from the cli')
        self.assertEqual('from the cli\n', result.stdout)
        rows = self.crcache('status', '-v', '-f', 'json').stdout
        self.assertIn(f'"{self.inst.name}"', rows)


class TestClient(APITestCase):

    def test_instance_acquired_by_the_command_line(self) -> None:
        name = self.crcache('acquire').stdout.strip()
        inst = self.client.instance(name)
        self.assertEqual(('local', name), (inst.source, inst.name))
        self.assertEqual(b'hi\n',
                         inst.run(['echo', 'hi'], capture_output=True).stdout)
        info = inst.info()
        self.assertEqual('in-use', info.state)
        # Held by the command that acquired it, not by us.
        self.assertNotEqual(os.getpid(), info.holder['pid'])
        inst.release()
        self.assertEqual(0, self.in_use('local'))
        self.assertRaises(exceptions.UnknownInstance,
                          lambda: self.client.instance('nosuch-1').source)
        self.assertRaises(exceptions.InvalidName, self.client.instance,
                          '../x')

    def test_status_and_instances(self) -> None:
        self.write_source('pool', type='pool', sources='local', reserve=1)
        with self.client.acquire('pool') as acquired:
            statuses = {s.name: s for s in self.client.status()}
            self.assertEqual(['local', 'pool'], sorted(statuses))
            pool = statuses['pool']
            self.assertIsInstance(pool, crcache.SourceInfo)
            self.assertEqual(('pool', 1, 1, ('local',), 'local', None, 1),
                             (pool.type, pool.maximum, pool.reserve,
                              pool.children, pool.store, pool.error,
                              pool.in_use))
            self.assertEqual((1, 0), (pool.live, pool.available))
            with self.assertRaises(dataclasses.FrozenInstanceError):
                pool.cached = 3  # type: ignore[misc]
            infos = {i.name: i for i in self.client.instances()}
            self.assertEqual({'pool-0', 'local-0'}, set(infos))
            self.assertEqual(('pool', 'in-use', 'local-0'),
                             (infos['pool-0'].source, infos['pool-0'].state,
                              infos['pool-0'].child))
            self.assertEqual('pool-0', infos['local-0'].parent)
            self.assertEqual(['pool-0'], [
                i.name for i in self.client.instances(sources=['pool'])])
            self.assertEqual(acquired.names, ['pool-0'])
        self.assertEqual(
            [('pool-0', 'cached')],
            [(i.name, i.state) for i in self.client.instances('pool')])
        # The cached pool instance still holds what it wraps.
        self.assertEqual([('local-0', 'pool-0')], [
            (i.name, i.parent)
            for i in self.client.instances(states=['in-use'])])
        self.assertRaises(exceptions.UnknownSource, self.client.status,
                          ['nosuch'])

    def test_fill(self) -> None:
        self.write_source('spare', type='local', maximum=3, reserve=2)
        made = self.client.fill()
        self.assertEqual([('spare-0', 'spare', 'cached'),
                          ('spare-1', 'spare', 'cached')],
                         sorted((i.name, i.source, i.state) for i in made))
        self.assertIsInstance(made[0], crcache.InstanceInfo)
        self.assertEqual([], self.client.fill(['spare']))
        with self.client.acquire('spare', count=2) as acquired:
            self.assertEqual(['spare-0', 'spare-1'], sorted(acquired.names))

    def test_gc_reclaims_an_expired_lease(self) -> None:
        acquired = self.client.acquire(lease=0.2)
        time.sleep(0.5)
        actions = self.client.gc()
        self.assertEqual(
            [(acquired[0].name, 'local', 'discarded')],
            [(a.instance, a.source, a.action) for a in actions])
        self.assertIsInstance(actions[0], crcache.GcAction)
        self.assertIn('lease', actions[0].reason)
        self.assertEqual([], self.client.gc())

    def test_gc_forget(self) -> None:
        path = self.write_source('gone', type='local')
        name = self.crcache('acquire', '-s', 'gone').stdout.strip()
        os.unlink(path)
        client = crcache.Client(env=self.env)  # sees the change
        self.addCleanup(client.close)
        actions = client.gc(forget=['gone'])
        self.assertEqual([(name, 'gone', 'forgotten')],
                         [(a.instance, a.source, a.action) for a in actions])

    def test_capacity_and_waiting(self) -> None:
        with self.client.acquire():
            self.assertRaises(crcache.CapacityError, self.client.acquire)
            start = time.monotonic()
            self.assertRaises(crcache.CapacityError, self.client.acquire,
                              wait=0.3)
            self.assertGreaterEqual(time.monotonic() - start, 0.3)
        waited: list[str] = []
        acquired = self.client.acquire()
        thread = threading.Thread(target=lambda: waited.extend(
            self.client.acquire(wait=math.inf).names))
        thread.start()
        time.sleep(0.3)
        self.assertEqual([], waited)
        acquired.release()
        thread.join(30)
        self.assertEqual(1, len(waited))
        self.client.release(waited)

    def test_errors(self) -> None:
        with self.assertRaises(crcache.UnknownSource) as caught:
            self.client.acquire('nosuch')
        self.assertIn("unknown source 'nosuch'", str(caught.exception))
        self.assertRaises(TypeError, self.client.acquire, count='2')
        self.assertRaises(ValueError, self.client.acquire, wait=-1)
        self.assertRaises(crcache.CrcacheError, self.client.acquire,
                          count=0)
        with self.assertRaises(crcache.PartialFailure):
            self.client.release(['nosuch-1', 'nosuch-2'])

    def test_config_path(self) -> None:
        other = os.path.join(self.home, 'other')
        self.write_source('elsewhere', type='local', root=other)
        client = crcache.Client(config_path=[other], env=self.env)
        self.addCleanup(client.close)
        self.assertEqual(['elsewhere', 'local'], client.sources())
        self.assertEqual(['local'], self.client.sources())
        self.assertEqual(
            ['elsewhere', 'local'],
            crcache.Client(config_path=f'{other}:', env=self.env).sources())
        missing = crcache.Client(config_path='/nonexistent', env=self.env)
        with self.assertRaises(crcache.ConfigError) as caught:
            missing.sources()
        self.assertIn('/nonexistent', str(caught.exception))

    def test_processes_share_the_state(self) -> None:
        # Another process, the command line, cannot have what the API
        # holds, and gets it once released.
        with self.client.acquire():
            result = self.crcache('acquire', expect=None)
            self.assertOneLineError(result, 'maximum')
        name = self.crcache('acquire').stdout.strip()
        self.client.release(name)
        self.assertEqual(0, self.in_use('local'))


    def test_a_client_carried_across_fork(self) -> None:
        self.client.acquire().release()  # the store is open here
        pid = os.fork()
        if pid == 0:  # the child: report by exit status only
            status = 1
            try:
                with self.client.acquire() as acquired:
                    acquired[0].run('true', check=True)
                    status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(0, os.waitstatus_to_exitcode(status))
        self.assertEqual(0, self.in_use('local'))
        self.client.acquire().release()


class TestSSH(APITestCase):
    """The API against a real OpenSSH server."""

    def setUp(self) -> None:
        super().setUp()
        base.require_program(self, sshd.SSHD, 'openssh-server')
        known_hosts = os.path.join(self.home, 'known_hosts')
        server = self.useFixture(sshd.SSHServer())
        with open(known_hosts, 'w') as f:
            f.write(server.known_hosts_line() + '\n')
        # No connection holder: it would outlive the test's environment.
        self.write_source('host', **server.source_keys(
            known_hosts, ssh_persist=0))

    def test_run_copy_release(self) -> None:
        local = os.path.join(self.home, 'payload')
        self.write_file(local, 'payload\n', 0o640)
        with self.client.acquire('host') as (inst,):
            result = inst.run(['sh', '-c', 'mkdir -p "$D"; cd "$D"; pwd'],
                              env={'D': os.path.join(self.home, 'a dir')},
                              capture_output=True, check=True)
            remote = result.stdout.decode().strip()
            inst.copy_in(local, remote)
            result = inst.run(['cat', 'payload'], cwd=remote,
                              capture_output=True, check=True)
            self.assertEqual(b'payload\n', result.stdout)
            inst.copy_out(f'{remote}/payload', local + '.back')
            with open(local + '.back') as f:
                self.assertEqual('payload\n', f.read())
            self.assertRaises(crcache.CommandFailed, inst.run, 'exit 2',
                              check=True)
        self.assertEqual(0, self.in_use('host'))
