"""The docker source through the CLI, against a real Docker engine.

:mod:`crcache.tests.functional.dockerd` provides the engine (the one
``$CRCACHE_TEST_DOCKER_HOST`` names, else a private ``dockerd`` for the
test process) and a busybox image imported locally. Every test drives
the real ``crcache`` command and checks what a user sees, and where it
matters the engine's own view: its containers, found by the label that
names the test's state store. Whatever a test leaves on the engine,
pass or fail, is removed after it.
What every source type must do is the conformance suite's
(:mod:`crcache.tests.functional.test_conformance_docker`); what is here
is docker's own: labels and names, limits, the engine's errors, the
reserve and crashes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time

from crcache.tests.functional import base
from crcache.tests.functional import dockerd

#: /etc/passwd of the test image (see dockerd._busybox_rootfs).
PASSWD = 'root:x:0:0:root:/root:/bin/sh\n'


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _tree_snapshot(root: str, skip: str) -> dict[str, tuple]:
    """Every path under ``root`` but those under ``skip``: (type, mode)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs
                   if os.path.join(directory, d) != skip]
        for entry in dirs + files:
            path = os.path.join(directory, entry)
            st = os.lstat(path)
            found[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    return found


class DockerTestCase(base.CLITestCase):
    """The source ``box``: containers of the test image on the engine."""

    #: Extra source.conf keys for the source ``box``.
    source_overrides: dict[str, object] = {}

    def setUp(self) -> None:
        super().setUp()
        self.host, self.image = dockerd.engine(self)
        self.env['DOCKER_HOST'] = self.host
        # Runs after every other cleanup (processes killed first), and
        # reads the store id then: the store does not exist yet.
        self.addCleanup(self._remove_containers)
        self.write_box(**self.source_overrides)

    def _remove_containers(self) -> None:
        dockerd.remove_containers(self.host, dockerd.store_id(self))

    # -- helpers -------------------------------------------------------------

    def write_box(self, name: str = 'box', **keys: object) -> str:
        return self.write_source(
            name, **dict({'type': 'docker', 'docker_image': self.image,
                          'docker_pull': 'never'}, **keys))

    @property
    def client(self):
        import docker
        return docker.APIClient(base_url=self.host, version='1.41',
                                timeout=60)

    @property
    def store(self) -> str:
        store = dockerd.store_id(self)
        self.assertIsNotNone(store, 'no state store yet')
        return store

    def containers(self) -> list[dict]:
        """The engine's containers labelled with this test's store."""
        return dockerd.containers(self.host, dockerd.store_id(self))

    def container_of(self, name: str) -> dict:
        """The one container the engine has for instance ``name``."""
        found = [c for c in self.containers()
                 if c['Labels'].get('crcache.instance') == name]
        self.assertEqual(1, len(found), found)
        return found[0]

    def acquire(self, source: str = 'box', count: int = 1) -> list[str]:
        out = self.crcache('acquire', '-s', source, '-n', str(count)).stdout
        names = out.split()
        self.assertEqual(count, len(names), out)
        return names

    def gc(self, *args: str) -> list[dict]:
        return json.loads(self.crcache('gc', '-f', 'json', *args).stdout)

    def running(self, container_id: str) -> bool:
        import docker.errors
        try:
            info = self.client.inspect_container(container_id)
        except docker.errors.NotFound:
            return False
        return bool(info['State']['Running'])

    def assertGone(self, container_id: str) -> None:
        import docker.errors
        self.assertRaises(docker.errors.NotFound,
                          self.client.inspect_container, container_id)


class TestAcquireRunRelease(DockerTestCase):

    def test_acquire_run_release(self) -> None:
        # -q: under load, making the container can take long enough for
        # a progress line on stderr.
        result = self.crcache('-q', 'acquire', '-s', 'box')
        self.assertEqual('', result.stderr)
        self.assertRegex(result.stdout, r'^box-\d+\n$')
        name = result.stdout.strip()

        [container] = self.containers()
        self.assertEqual(
            {'crcache.instance': name, 'crcache.source': 'box',
             'crcache.store': self.store},
            {k: v for k, v in container['Labels'].items()
             if k.startswith('crcache.')})
        self.assertEqual('running', container['State'])
        [container_name] = container['Names']
        self.assertRegex(container_name,
                         rf'^/crcache-{re.escape(name)}-[0-9a-z]+$')
        self.assertEqual(self.image, container['Image'])

        result = self.run_on(name, 'cat /etc/passwd')
        self.assertEqual((PASSWD, ''), (result.stdout, result.stderr))
        result = self.run_on(name, 'hostname')
        self.assertEqual(container['Id'][:12] + '\n', result.stdout)
        row = self.status('box')['box']
        self.assertEqual((1, 0), (row['in-use'], row['cached']), row)

        self.crcache('release', name)
        self.assertEqual([], self.containers())
        self.assertGone(container['Id'])
        row = self.status('box')['box']
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
        result = self.run_on(name, 'true', expect=255)
        self.assertOneLineError(result, f"unknown instance '{name}'")

    def test_concurrency_from_the_cpu_limit(self) -> None:
        self.write_box(docker_cpus=1.5)
        out = self.crcache('acquire', '-s', 'box', '-f', 'json').stdout
        [row] = json.loads(out)
        self.assertEqual(2, row['concurrency'], row)
        info = self.client.inspect_container(
            self.container_of(row['name'])['Id'])
        self.assertEqual(1500000000, info['HostConfig']['NanoCpus'])


class TestRun(DockerTestCase):
    """Commands in a container, as a script sees them."""

    def setUp(self) -> None:
        super().setUp()
        [self.name] = self.acquire()

    def test_no_command_without_a_terminal_reads_a_script(self) -> None:
        result = self.run_on(self.name, input='echo "$((6 * 7))"\nexit 4\n',
                             expect=4)
        self.assertEqual('42\n', result.stdout)

    def test_interactive_shell(self) -> None:
        import pty
        pids: list[int] = []
        real_fork = pty.fork

        def fork() -> tuple[int, int]:
            pid, fd = real_fork()
            if pid:
                pids.append(pid)
            return pid, fd

        self.patch(pty, 'fork', fork)
        done = threading.Event()

        def watchdog() -> None:
            # A shell that never sees its input would wait for ever:
            # killed, it fails the test instead of hanging the run.
            if not done.wait(30):
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            status, output = self.in_terminal(
                'run', self.name, input=b'echo "in $HOME"; exit 3\n')
        finally:
            done.set()
        self.assertEqual(3, status, output)
        self.assertIn(b'in /root', output)


class TestCopy(DockerTestCase):
    """cp both ways through the engine's archive API."""

    def setUp(self) -> None:
        super().setUp()
        [self.name] = self.acquire()
        self.tree = os.path.join(self.project, 'tree')
        os.makedirs(os.path.join(self.tree, 'sub', 'deeper'))
        self.write_file(os.path.join(self.tree, 'data.txt'), 'data\n', 0o640)
        self.write_file(os.path.join(self.tree, 'sub', 'run.sh'),
                    '#!/bin/sh\necho ran\n', 0o751)
        self.write_file(os.path.join(self.tree, 'sub', 'deeper', 'blob'),
                    bytes(range(256)) * 1000, 0o600)
        os.chmod(os.path.join(self.tree, 'sub'), 0o751)

    def test_link_out_of_the_copy_is_refused(self) -> None:
        self.run_on(self.name, 'mkdir -p /tmp/t && echo ok > /tmp/t/f && '
                    'ln -s /etc/passwd /tmp/t/link')
        target = os.path.join(self.home, 'target')
        os.mkdir(target)
        before = _tree_snapshot(self.home, target)
        result = self.crcache('cp', '-r', f'{self.name}:/tmp/t', target,
                              expect=None)
        self.assertOneLineError(result, 'link', '/etc/passwd')
        self.assertEqual(before, _tree_snapshot(self.home, target))
        self.assertFalse(os.path.lexists(os.path.join(target, 't', 'link')))
        # A relative link climbing out is refused as well.
        self.run_on(self.name, 'rm /tmp/t/link; '
                    'ln -s ../../../../../../../../etc/passwd /tmp/t/up')
        renamed = os.path.join(self.home, 'renamed')
        result = self.crcache('cp', '-r', f'{self.name}:/tmp/t', renamed,
                              expect=None)
        self.assertOneLineError(result, 'up', 'outside')
        self.assertFalse(os.path.lexists(renamed))
        self.assertEqual(before, _tree_snapshot(self.home, target))


class TestReserve(DockerTestCase):
    """A warm reserve: released containers keep running for reuse."""

    source_overrides = {'reserve': 1}

    def test_reserve_keeps_the_container_warm(self) -> None:
        [name] = self.acquire()
        container = self.container_of(name)
        self.crcache('release', name)
        row = self.status('box')['box']
        self.assertEqual((1, 0), (row['cached'], row['in-use']), row)
        self.assertTrue(self.running(container['Id']))
        self.assertEqual([container['Id']],
                         [c['Id'] for c in self.containers()])

        [again] = self.acquire()
        self.assertEqual(name, again)
        self.assertEqual([container['Id']],
                         [c['Id'] for c in self.containers()])
        self.assertEqual(container['Id'][:12] + '\n',
                         self.run_on(again, 'hostname').stdout)
        row = self.status('box')['box']
        self.assertEqual((0, 1), (row['cached'], row['in-use']), row)

    def test_max_idle_expiry(self) -> None:
        self.write_box(reserve=1, max_idle=1)
        [name] = self.acquire()
        container = self.container_of(name)
        self.crcache('release', name)
        self.assertTrue(self.running(container['Id']))
        time.sleep(1.5)
        actions = self.gc()
        self.assertEqual([(name, 'box', 'discarded')],
                         [(a['name'], a['source'], a['action'])
                          for a in actions], actions)
        self.assertIn('max_idle', actions[0]['reason'])
        self.assertEqual([], self.containers())
        self.assertGone(container['Id'])
        row = self.status('box')['box']
        self.assertEqual((0, 0), (row['cached'], row['in-use']), row)


class TestPool(DockerTestCase):
    """A pool drawing on a docker source and the local machine."""

    def test_pool_of_docker_and_local(self) -> None:
        self.write_box(maximum=1)
        self.write_source('mix', type='pool', sources='box,local')
        names = self.acquire('mix', 2)
        self.assertEqual(2, len(set(names)), names)
        [container] = self.containers()
        hostnames = sorted(self.run_on(name, 'hostname').stdout.strip()
                           for name in names)
        self.assertEqual(sorted([container['Id'][:12],
                                 socket.gethostname()]), hostnames)
        status = self.status('mix', 'box', 'local')
        self.assertEqual([2, 1, 1], [status[s]['in-use']
                                     for s in ('mix', 'box', 'local')])
        self.crcache('release', *names)
        status = self.status('mix', 'box', 'local')
        self.assertEqual([0, 0, 0], [status[s]['in-use']
                                     for s in ('mix', 'box', 'local')])
        self.assertEqual([], self.containers())


class TestCrash(DockerTestCase):
    """What a killed crcache leaves, gc finds by the engine's labels."""

    def test_kill_during_acquire_then_gc(self) -> None:
        hooks = os.path.join(self.config_root, 'sources', 'box',
                             'provision.d')
        os.mkdir(hooks)
        with open(os.path.join(hooks, '50-slow'), 'w') as f:
            f.write('#!/bin/sh\nsleep 5\n')
        os.chmod(os.path.join(hooks, '50-slow'), 0o755)
        proc = self.start('acquire', '-s', 'box')
        # The container is made before provision.d runs.
        self.wait_for(lambda: self._pids(hooks), 15,
                      'provision.d to be running')
        self.assertIsNone(proc.poll())
        proc.kill()
        proc.wait()
        [orphan] = self.containers()
        name = orphan['Labels']['crcache.instance']
        self.assertEqual('box-0', name)
        self.assertEqual(['provisioning'], [row['state'] for row in json.loads(
            self.crcache('status', '-v', '-f', 'json').stdout)])
        self.assertTrue(self.running(orphan['Id']))
        actions = self.gc()
        self.assertEqual([(name, 'box', 'discarded')],
                         [(a['name'], a['source'], a['action'])
                          for a in actions], actions)
        self.assertEqual([], self.containers())
        self.assertGone(orphan['Id'])
        self.assertEqual([], json.loads(self.crcache(
            'status', '-v', '-f', 'json').stdout))
        # The provision.d script it was running went too.
        self.wait_for(lambda: not self._pids(hooks), 2,
                      'the orphaned provision.d script to be stopped')

    def _pids(self, pattern: str) -> list[str]:
        return subprocess.run(['pgrep', '-f', pattern], capture_output=True,
                              text=True).stdout.split()

    def test_kill_during_acquire_then_gc_without_agent(self) -> None:
        self.env['CRCACHE_AGENT'] = '0'
        self.test_kill_during_acquire_then_gc()

    def test_other_stores_containers_are_not_leaks(self) -> None:
        self.crcache('gc')
        created = self.client.create_container(
            self.image, command=['sleep', '60'], detach=True,
            labels={'crcache.store': 'some-other-store',
                    'crcache.source': 'box', 'crcache.instance': 'box-0'})
        self.addCleanup(self.client.remove_container, created['Id'],
                        force=True)
        self.client.start(created['Id'])
        self.assertEqual([], self.gc('--leaks'))
        self.assertTrue(self.running(created['Id']))


class TestErrors(DockerTestCase):
    """One line naming the source and the cause."""

    def test_engine_unreachable_leaves_nothing_behind(self) -> None:
        self.write_box('gone', docker_host='unix:///nonexistent.sock')
        for _ in range(2):
            result = self.crcache('acquire', '-s', 'gone', expect=None)
            self.assertNotEqual(0, result.returncode, str(result))
        row = self.status('gone')['gone']
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
        # No instance is left half-made for every later gc to trip on.
        self.assertEqual([], json.loads(self.crcache(
            'status', '-v', '-f', 'json').stdout))

    def test_docker_host_from_the_environment(self) -> None:
        result = self.crcache(
            'acquire', '-s', 'box', expect=None,
            env={'DOCKER_HOST': 'unix:///nonexistent.sock'})
        self.assertOneLineError(result, "'box'", '/nonexistent.sock')
        # The source's own docker_host beats the environment.
        self.write_box(docker_host=self.host)
        [name] = self.acquire()
        self.crcache('release', name,
                     env={'DOCKER_HOST': 'unix:///nonexistent.sock'})
        self.assertEqual([], self.containers())

    def test_image_missing_with_pull_never(self) -> None:
        self.write_box(docker_image='nosuch/image:1')
        result = self.crcache('acquire', '-s', 'box', expect=None)
        self.assertOneLineError(result, "'box'", 'nosuch/image:1',
                                'docker_pull=never')
        self.assertEqual([], self.containers())
        row = self.status('box')['box']
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)

    def test_container_died(self) -> None:
        [name] = self.acquire()
        container = self.container_of(name)
        self.client.kill(container['Id'])
        self.wait_for(lambda: not self.running(container['Id']),
                      what='the container to stop')
        result = self.run_on(name, 'true', expect=255)
        self.assertOneLineError(result, "'box'", 'not running')
        # Releasing it still cleans up.
        self.crcache('release', name)
        self.assertEqual([], self.containers())

    def test_container_removed(self) -> None:
        [name] = self.acquire()
        container = self.container_of(name)
        self.client.remove_container(container['Id'], force=True)
        result = self.run_on(name, 'true', expect=255)
        self.assertOneLineError(result, "'box'", 'no longer exists')
        # Discarding what is already gone is success.
        self.crcache('release', name)
        row = self.status('box')['box']
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
