"""The conformance suite: what every source type does, as a user sees it.

:class:`SourceConformance` checks a backend type (one that makes its own
instances), :class:`LayeredConformance` a layered one (a pool policy).
Each is a mixin for a ``testtools.TestCase``: the test case supplies the
``source.conf`` keys (starting whatever server the type needs) and
declares what the type can do; every property is a test method of its
own, so a failure names the property. Everything goes through the real
``crcache`` command in a private environment
(:class:`~crcache.testing.environment.CrcacheEnvironment`), except the
few checks that can only be made on the driver itself (discarding what is
already gone, listing leaks), which load it exactly as crcache does, from
the same ``source.conf``.

The instances' side is only assumed to have a POSIX shell and the tools
``crcache cp`` needs anyway (``cat``, ``tar``, ``stat``, ``mktemp``),
plus ``find``, ``sort``, ``sha256sum``, ``wc``, ``kill`` and ``sleep``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

from crcache.testing.environment import CRCACHE, CrcacheMixin


def local_listing(path: str) -> str:
    """``mode path sha256`` of everything under ``path`` on this machine.

    Compare with :meth:`SourceConformance.remote_listing`.
    """
    def mode(entry: str) -> int:
        return os.stat(entry).st_mode & 0o7777

    lines = [f'{mode(path):o} . -']
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            full = os.path.join(root, entry)
            rel = './' + os.path.relpath(full, path)
            if os.path.isfile(full):
                with open(full, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            else:
                digest = '-'
            lines.append(f'{mode(full):o} {rel} {digest}')
    return ''.join(line + '\n' for line in sorted(
        lines, key=lambda line: line.split()[1].encode()))


def _write(path: str, content: str | bytes, mode: int) -> None:
    with open(path, 'wb') as f:
        f.write(content.encode() if isinstance(content, str) else content)
    os.chmod(path, mode)


def _available(stream: Any) -> bytes:
    """What can be read from a pipe now, without waiting for its end."""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b''.join(chunks)


def _mode(path: str) -> int:
    return os.stat(path).st_mode & 0o7777


class _TypeChecks:
    """Checks on a type's declared keys, shared by both suites."""

    #: The ``oslo.config.opts`` entry point that documents the type's
    #: keys for ``oslo-config-generator`` (None: not checked).
    opts_namespace: str | None = None
    #: Keys of the type allowed to break the ``TYPE_*`` naming rule (for
    #: crcache's pool, ``sources``, which the user's guide fixes). Keep
    #: it empty in a new type.
    unprefixed_keys: tuple[str, ...] = ()

    def checked_source(self) -> str:
        raise NotImplementedError

    def load_source(self, name: str | None = None) -> Any:
        """The configured source ``name``, loaded as crcache loads it.

        From this test's configuration root, through the
        ``crcache.sources`` entry point its ``type`` names, with its
        ``source.conf`` parsed and checked. Its :attr:`owner` is not set
        (crcache's cache sets it); set it before provisioning.
        """
        from crcache import config
        name = name or self.checked_source()
        with self.world.applied():
            loaded = config.Config(roots=[self.world.config_root])
            return loaded.source(name)

    def test_keys_carry_the_type_name(self) -> None:
        """Each key of the type is named ``TYPE_...``."""
        source = self.load_source()
        type_name = source.conf.type
        wrong = [opt.dest for opt in type(source).opts
                 if not opt.dest.startswith(f'{type_name}_')
                 and opt.dest not in self.unprefixed_keys]
        self.assertEqual([], wrong, f'keys of type {type_name!r} must '
                         f'start with {type_name + "_"!r}')

    def test_sample_config_documents_the_keys(self) -> None:
        """The ``oslo.config.opts`` entry point lists exactly the keys
        crcache enforces (the class's ``opts``)."""
        if self.opts_namespace is None:
            self.skipTest('no opts_namespace declared')
        found = [ep for ep in importlib.metadata.entry_points(
            group='oslo.config.opts') if ep.name == self.opts_namespace]
        self.assertEqual(1, len(found),
                         f'oslo.config.opts entry point '
                         f'{self.opts_namespace!r}')
        documented = set()
        for group, opts in found[0].load()():
            self.assertIn(group, (None, 'DEFAULT'),
                          'source keys live in [DEFAULT]')
            documented.update(opt.dest for opt in opts)
        enforced = {opt.dest for opt in type(self.load_source()).opts}
        self.assertEqual(enforced, documented)


class SourceConformance(_TypeChecks, CrcacheMixin):
    """The conformance suite for a backend source type.

    Mix into a ``testtools.TestCase`` and supply :meth:`source_keys`::

        class TestMyType(crcache.testing.SourceConformance,
                         testtools.TestCase):
            lists_leaks = True
            opts_namespace = 'my_package.mytype'

            def source_keys(self):
                server = self.useFixture(MyServer())
                return {'type': 'mytype', 'mytype_url': server.url}

    The source is defined as :attr:`source_name`; every instance a test
    acquires is released after it (a type that makes real resources
    should also remove, in a cleanup of its own, whatever a failed test
    leaves on the backend).
    """

    #: The source's name in the test configuration.
    source_name = 'kit'
    #: Whether the type labels its resources so that ``list_owned`` finds
    #: them (and ``crcache gc`` finds leaks).
    lists_leaks = False
    #: How many instances the parallel checks acquire at once (the suite
    #: sets ``maximum`` to it); 0 skips them.
    parallel_instances = 4
    #: Seconds a signalled ``crcache run`` may take to end.
    signal_deadline = 5.0

    # -- what the test case supplies ---------------------------------------

    def source_keys(self) -> dict[str, Any]:
        """The ``source.conf`` keys of a working source, ``type`` first.

        Called once per test, after ``self.world`` (the private home and
        configuration) exists; start servers here with ``useFixture``.
        """
        raise NotImplementedError('source_keys() must return the keys')

    def unreachable_keys(self) -> dict[str, Any] | None:
        """Keys of a source of the type whose backend cannot be reached.

        None (the default) skips the checks that need one.
        """
        return None

    def break_instance(self, name: str) -> bool:
        """Make the cached instance ``name`` stop answering, behind
        crcache's back (stop its machine, remove its container...).

        Return False (the default) when the test case cannot.
        """
        return False

    def expected_concurrency(self, name: str) -> int:
        """The concurrency crcache should find for acquired ``name``.

        By default the CPU count the instance reports itself.
        """
        out = self.run_on(
            name, 'nproc 2>/dev/null || getconf _NPROCESSORS_ONLN').stdout
        return int(out.split()[0])

    # -- set-up ------------------------------------------------------------

    def setUp(self) -> None:
        super().setUp()
        self.keys = dict(self.source_keys())
        self.assertIn('type', self.keys, 'source_keys() must name a type')
        self.type_name = self.keys['type']
        self.world.write_source(self.source_name, self.keys)
        self.addCleanup(self.release_everything)

    def checked_source(self) -> str:
        return self.source_name

    def configure(self, **overrides: Any) -> str:
        """Rewrite the source's ``source.conf`` with these keys changed."""
        return self.world.write_source(self.source_name,
                                       dict(self.keys, **overrides))

    def release_everything(self) -> None:
        """Release whatever a test still holds."""
        result = self.world.run('status', '-v', '-f', 'json')
        if result.returncode != 0:
            return
        rows = json.loads(result.stdout)
        names = {row['name'] for row in rows}
        held = [row['name'] for row in rows if row['state'] == 'in-use'
                and row['held-by'] not in names]
        if held:
            self.world.run('release', *held)

    def acquire_one(self, **overrides: Any) -> str:
        """Acquire one instance (after changing keys, if given)."""
        if overrides:
            self.configure(**overrides)
        return self.acquire(self.source_name)[0]

    def scratch(self, name: str) -> str:
        """A fresh directory on the instance, removed after the test."""
        path = self.run_on(name, 'mktemp -d').stdout.strip()
        self.assertTrue(path.startswith('/'), path)
        self.addCleanup(self.world.run, 'run', name, 'rm', '-rf', path)
        return path

    def remote_listing(self, name: str, path: str) -> str:
        """``mode path sha256`` of everything under ``path`` on an
        instance, as :func:`local_listing` gives it for a local tree."""
        return self.run_on(
            name,
            f'cd {path} && find . | LC_ALL=C sort | while read -r p; do '
            'if [ -f "$p" ]; then s=$(sha256sum < "$p" | cut -c1-64); '
            'else s=-; fi; echo "$(stat -c %a "$p") $p $s"; done').stdout

    def local_tree(self) -> str:
        """A small tree with a mode on everything, in the project."""
        tree = os.path.join(self.world.project, 'tree')
        os.makedirs(os.path.join(tree, 'sub', 'deeper'))
        os.mkdir(os.path.join(tree, 'empty'), 0o700)
        _write(os.path.join(tree, 'data.txt'), 'data\n', 0o640)
        _write(os.path.join(tree, 'sub', 'run.sh'), '#!/bin/sh\necho ran\n',
               0o751)
        _write(os.path.join(tree, 'sub', 'deeper', 'blob'),
               bytes(range(256)) * 1000, 0o600)
        os.chmod(os.path.join(tree, 'sub'), 0o751)
        os.chmod(os.path.join(tree, 'empty'), 0o700)
        return tree

    # -- acquiring and releasing -------------------------------------------

    def test_acquire_run_release(self) -> None:
        """acquire prints the name alone; run works; release ends it."""
        result = self.crcache('acquire', '-s', self.source_name)
        # (stderr may report progress, if provisioning was slow)
        self.assertRegex(result.stdout, rf'^{self.source_name}-\d+\n$')
        name = result.stdout.strip()
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((1, 0), (row['in-use'], row['cached']), row)
        result = self.run_on(name, 'echo hello')
        self.assertEqual(('hello\n', ''), (result.stdout, result.stderr))
        self.release(name)
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
        result = self.run_on(name, 'true', expect=255)
        self.assertOneLineError(result, f"unknown instance '{name}'")

    def test_a_cached_instance_is_handed_out_again(self) -> None:
        """With a reserve, release keeps the very resource for reuse."""
        name = self.acquire_one(reserve=1)
        scratch = self.scratch(name)
        self.run_on(name, f'echo kept > {scratch}/mark')
        self.release(name)
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((0, 1), (row['in-use'], row['cached']), row)
        self.assertEqual([name], self.acquire(self.source_name))
        self.assertEqual('kept\n',
                         self.run_on(name, f'cat {scratch}/mark').stdout)
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((1, 0), (row['in-use'], row['cached']), row)

    def test_a_dead_cached_instance_is_replaced(self) -> None:
        """is_alive: a cached instance that stopped answering is
        discarded and replaced, not handed out."""
        name = self.acquire_one(reserve=1)
        self.release(name)
        if not self.break_instance(name):
            self.skipTest('break_instance() is not provided')
        [fresh] = self.acquire(self.source_name)
        self.assertNotEqual(name, fresh)
        self.assertEqual('ok\n', self.run_on(fresh, 'echo ok').stdout)
        self.assertNotIn(name, self.instances())
        self.assertEqual([], self.leaks())

    # -- run: the command line ---------------------------------------------

    def test_a_single_word_is_a_shell_command_line(self) -> None:
        name = self.acquire_one()
        result = self.run_on(name, 'echo a && echo b; echo "$((6 * 7))"')
        self.assertEqual(('a\nb\n42\n', ''), (result.stdout, result.stderr))

    def test_several_words_arrive_intact(self) -> None:
        """Each word is one argument, whatever it holds."""
        name = self.acquire_one()
        words = ['a b', '', '$HOME', '*', "it's", 'two\nlines', 'é✓', '-n',
                 '\\', '"', ';', '`true`']
        result = self.run_on(name, '--', 'printf', '[%s]\\n', *words)
        self.assertEqual(''.join(f'[{w}]\n' for w in words), result.stdout)
        result = self.run_on(name, '--', 'printf', '[%s]\n', 'x')
        self.assertEqual('[x]\n', result.stdout)

    def test_leading_assignments_stay_assignments(self) -> None:
        name = self.acquire_one()
        result = self.run_on(name, '--', 'A=1', 'B=x y', 'sh', '-c',
                             'echo "$A|$B|$0"', 'arg zero')
        self.assertEqual('1|x y|arg zero\n', result.stdout)
        result = self.run_on(name, '--', 'echo', 'A=1')
        self.assertEqual('A=1\n', result.stdout)

    def test_no_command_reads_commands_from_stdin(self) -> None:
        """An empty argv starts the shell; without a terminal it reads
        its commands from stdin."""
        name = self.acquire_one()
        result = self.run_on(name, input='echo "$((6 * 7))"\nexit 4\n',
                             expect=4)
        self.assertEqual('42\n', result.stdout, str(result))

    # -- run: exit status --------------------------------------------------

    def test_exit_status_is_the_commands(self) -> None:
        name = self.acquire_one()
        for status in (0, 1, 7, 255):
            self.run_on(name, f'exit {status}', expect=status)

    def test_killed_by_signal_n_is_128_plus_n(self) -> None:
        name = self.acquire_one()
        self.run_on(name, 'kill -KILL $$', expect=137)
        self.run_on(name, 'kill -TERM $$', expect=143)

    # -- run: streams ------------------------------------------------------

    def test_stdout_and_stderr_stay_apart(self) -> None:
        name = self.acquire_one()
        result = self.run_on(name, 'echo out; echo err >&2; echo out2')
        self.assertEqual(('out\nout2\n', 'err\n'),
                         (result.stdout, result.stderr))

    def test_both_streams_at_volume(self) -> None:
        """More than a pipe holds on both streams at once: no deadlock,
        nothing lost or mixed."""
        name = self.acquire_one()
        result = self.run_on(
            name, 'i=0; while [ $i -lt 10000 ]; do echo "out $i"; '
            'echo "err $i" >&2; i=$((i+1)); done', timeout=60)
        self.assertEqual(''.join(f'out {i}\n' for i in range(10000)),
                         result.stdout)
        self.assertEqual(''.join(f'err {i}\n' for i in range(10000)),
                         result.stderr)

    def test_binary_stdin_to_stdout(self) -> None:
        name = self.acquire_one()
        data = os.urandom(8 << 20) + bytes(range(256))
        result = self.run_on(name, 'cat', input=data, binary=True)
        self.assertEqual(b'', result.stderr)
        self.assertEqual(len(data), len(result.stdout))
        self.assertEqual(hashlib.sha256(data).hexdigest(),
                         hashlib.sha256(result.stdout).hexdigest())

    def test_binary_stdin_to_stderr(self) -> None:
        name = self.acquire_one()
        data = os.urandom(1 << 20) + bytes(range(256))
        result = self.run_on(name, 'cat >&2', input=data, binary=True)
        self.assertEqual(b'', result.stdout)
        self.assertEqual(hashlib.sha256(data).hexdigest(),
                         hashlib.sha256(result.stderr).hexdigest())

    def test_end_of_stdin_reaches_the_command(self) -> None:
        name = self.acquire_one()
        result = self.run_on(name, 'wc -c', input='x' * 100000)
        self.assertEqual('100000', result.stdout.strip())
        # No input at all is an immediate end of file, not a hang.
        result = self.run_on(name, 'cat; echo done', timeout=30)
        self.assertEqual('done\n', result.stdout)

    def test_a_reader_that_stops_early_ends_the_command(self) -> None:
        """``crcache run x yes | head -n 1`` ends, as with ssh."""
        name = self.acquire_one()
        proc = subprocess.run(
            ['sh', '-c', '"$0" run "$1" yes | head -n 1', CRCACHE, name],
            env=self.world.env, cwd=self.world.project,
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=30)
        self.assertEqual(('y\n', ''), (proc.stdout, proc.stderr))

    # -- run: signals ------------------------------------------------------
    #
    # The contract of issue 10: SIGINT or SIGTERM sent to a running
    # ``crcache run`` ends the command on the instance, its whole process
    # group, and crcache ends within a few seconds with 128+N, leaving no
    # process of the command behind.

    def _pids_file(self, name: str) -> str:
        path = f'/tmp/crcache-kit-{uuid.uuid4().hex}'
        self.addCleanup(
            self.world.run, 'run', name,
            f'for p in $(cat {path} 2>/dev/null); do kill -9 $p; done '
            f'2>/dev/null; rm -f {path}')
        return path

    def _alive(self, name: str, pids_file: str) -> str:
        """Which of the pids listed on the instance still run."""
        return self.run_on(
            name,
            f'for p in $(cat {pids_file}); do '
            'if kill -0 $p 2>/dev/null; then '
            's=$(sed -n "s/^State:[[:space:]]*\\(.\\).*/\\1/p" '
            '/proc/$p/status 2>/dev/null); '
            '[ "$s" = Z ] || echo $p; fi; done').stdout

    def _interrupt(self, signum: int, group: bool) -> None:
        name = self.acquire_one()
        pids = self._pids_file(name)
        # Three processes in one group on the instance: the shell and
        # both ends of a pipeline, each recording its pid.
        child = f"sh -c 'echo $$ >> {pids}; exec sleep 300'"
        proc = self.world.popen(
            'run', name, f'echo $$ > {pids}; {child} | {child}',
            start_new_session=group)
        self.wait_for(
            lambda: proc.poll() is not None or self.run_on(
                name, f'cat {pids} 2>/dev/null | wc -l').stdout.strip()
            == '3', 30, 'the command to start')
        if proc.poll() is not None:
            self.fail(f'crcache run ended early ({proc.returncode}): '
                      + _available(proc.stderr).decode(errors='replace'))
        started = time.monotonic()
        if group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        try:
            proc.wait(timeout=self.signal_deadline + 10)
        except subprocess.TimeoutExpired:
            self.fail(f'crcache run was still running '
                      f'{self.signal_deadline + 10:g}s after '
                      f'{signal.Signals(signum).name}')
        elapsed = time.monotonic() - started
        # Not read to its end: what the command left running may hold it.
        err = _available(proc.stderr).decode(errors='replace')
        # Exiting 128+N and dying of signal N are the same to a shell.
        self.assertIn(proc.returncode, (128 + signum, -signum),
                      f'exit status after {signal.Signals(signum).name}; '
                      f'stderr: {err}')
        self.assertLess(elapsed, self.signal_deadline,
                        f'crcache run took {elapsed:.1f}s to end')
        self.assertNotIn('Traceback', err)
        left: list[str] = []

        def gone() -> bool:
            left[:] = self._alive(name, pids).split()
            return not left

        deadline = time.monotonic() + self.signal_deadline
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual([], left, 'processes of the command still run '
                         'on the instance')

    def test_sigint_ends_the_command(self) -> None:
        """SIGINT to crcache alone (as a supervisor sends it)."""
        self._interrupt(signal.SIGINT, group=False)

    def test_sigterm_ends_the_command(self) -> None:
        """SIGTERM to crcache alone."""
        self._interrupt(signal.SIGTERM, group=False)

    def test_ctrl_c_ends_the_command(self) -> None:
        """SIGINT to crcache's whole process group, as a terminal's
        Ctrl-C sends it."""
        self._interrupt(signal.SIGINT, group=True)

    # -- files -------------------------------------------------------------

    def test_run_files_places_files_at_the_same_path(self) -> None:
        """``run --files`` (testr's ``$FILES``) and shares_filesystem."""
        name = self.acquire_one()
        path = os.path.join(self.world.home, 'ids', 'list.txt')
        os.mkdir(os.path.dirname(path))
        _write(path, 'test.one\ntest.two\n', 0o644)
        result = self.crcache('run', f'--files={path}', name, 'cat', path)
        self.assertEqual('test.one\ntest.two\n', result.stdout)
        if self.load_source().shares_filesystem:
            # Declared: the instance sees this machine's files as they are.
            _write(path, 'changed\n', 0o644)
            self.assertEqual('changed\n', self.run_on(name, 'cat',
                                                      path).stdout)

    def test_file_in_keeps_content_and_mode(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        src = os.path.join(self.world.project, 'run.sh')
        _write(src, '#!/bin/sh\necho ran\n', 0o751)
        self.crcache('cp', src, f'{name}:{scratch}/copy.sh')
        result = self.run_on(name, f'stat -c %a {scratch}/copy.sh; '
                             f'{scratch}/copy.sh')
        self.assertEqual('751\nran\n', result.stdout)
        # Into an existing directory, under its own name.
        self.run_on(name, f'mkdir {scratch}/into')
        self.crcache('cp', src, f'{name}:{scratch}/into')
        result = self.run_on(name, f'stat -c %a {scratch}/into/run.sh')
        self.assertEqual('751\n', result.stdout)

    def test_file_out_keeps_content_and_mode(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        self.run_on(name, f"printf 'one\\ntwo\\n' > {scratch}/f; "
                    f'chmod 640 {scratch}/f')
        dst = os.path.join(self.world.home, 'f.copy')
        self.crcache('cp', f'{name}:{scratch}/f', dst)
        with open(dst) as f:
            self.assertEqual('one\ntwo\n', f.read())
        self.assertEqual(0o640, _mode(dst))
        into = os.path.join(self.world.home, 'into')
        os.mkdir(into)
        self.crcache('cp', f'{name}:{scratch}/f', into)
        self.assertEqual(0o640, _mode(os.path.join(into, 'f')))

    def test_binary_file_round_trip(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        src = os.path.join(self.world.home, 'random.bin')
        data = os.urandom(3 << 20) + bytes(range(256))
        _write(src, data, 0o600)
        self.crcache('cp', src, f'{name}:{scratch}/random.bin')
        dst = os.path.join(self.world.home, 'random.back')
        self.crcache('cp', f'{name}:{scratch}/random.bin', dst)
        with open(dst, 'rb') as f:
            self.assertEqual(hashlib.sha256(data).hexdigest(),
                             hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(0o600, _mode(dst))

    def test_tree_round_trip_keeps_modes(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        tree = self.local_tree()
        expected = local_listing(tree)
        self.crcache('cp', '-r', tree, f'{name}:{scratch}')
        self.assertEqual(expected,
                         self.remote_listing(name, f'{scratch}/tree'))
        target = os.path.join(self.world.home, 'target')
        os.mkdir(target)
        self.crcache('cp', '-r', f'{name}:{scratch}/tree', target)
        self.assertEqual(expected,
                         local_listing(os.path.join(target, 'tree')))
        # To a new name: the tree lands as that name.
        renamed = os.path.join(self.world.home, 'renamed')
        self.crcache('cp', '-r', f'{name}:{scratch}/tree', renamed)
        self.assertEqual(expected, local_listing(renamed))

    def test_links_inside_a_tree_are_kept(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        tree = os.path.join(self.world.project, 't')
        os.mkdir(tree)
        _write(os.path.join(tree, 'f'), 'ok\n', 0o644)
        os.symlink('f', os.path.join(tree, 'link'))
        self.crcache('cp', '-r', tree, f'{name}:{scratch}')
        self.assertEqual('f\nok\n', self.run_on(
            name, f'readlink {scratch}/t/link; cat {scratch}/t/link').stdout)
        back = os.path.join(self.world.home, 'back')
        self.crcache('cp', '-r', f'{name}:{scratch}/t', back)
        self.assertEqual('f', os.readlink(os.path.join(back, 'link')))

    def test_relative_paths_are_where_commands_run(self) -> None:
        """A relative instance path in cp means what it means to run."""
        name = self.acquire_one()
        relative = f'crcache-kit-{uuid.uuid4().hex}'
        self.addCleanup(self.world.run, 'run', name, 'rm', '-f', relative)
        src = os.path.join(self.world.home, 'data.txt')
        _write(src, 'data\n', 0o640)
        self.crcache('cp', src, f'{name}:{relative}')
        self.assertEqual('data\n640\n', self.run_on(
            name, f'cat {relative}; stat -c %a {relative}').stdout)
        dst = os.path.join(self.world.home, 'back.txt')
        self.crcache('cp', f'{name}:{relative}', dst)
        with open(dst) as f:
            self.assertEqual('data\n', f.read())

    def test_missing_paths_name_the_instance(self) -> None:
        """``crcache: INSTANCE:PATH: reason``, as the user wrote it."""
        name = self.acquire_one()
        scratch = self.scratch(name)
        dst = os.path.join(self.world.home, 'dst')
        for path in (f'{scratch}/nosuch', 'crcache-kit-nosuch',
                     '-crcache-kit-nosuch'):
            for flags in ((), ('-r',)):
                result = self.crcache('cp', *flags, f'{name}:{path}', dst,
                                      expect=None)
                self.assertEqual(
                    (1, f'crcache: {name}:{path}: no such file or '
                     'directory\n'),
                    (result.returncode, result.stderr), str(result))
        self.assertFalse(os.path.lexists(dst))
        src = os.path.join(self.world.home, 'data.txt')
        _write(src, 'data\n', 0o644)
        tree = self.local_tree()
        for flags, what in (((), src), (('-r',), tree)):
            for parent in (f'{scratch}/no/such', 'crcache-kit-no/such',
                           '-crcache-kit-no'):
                result = self.crcache('cp', *flags, what,
                                      f'{name}:{parent}/x', expect=None)
                self.assertEqual(
                    (1, f'crcache: {name}:{parent}: no such directory\n'),
                    (result.returncode, result.stderr), str(result))

    def test_directories_need_r(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        tree = self.local_tree()
        result = self.crcache('cp', tree, f'{name}:{scratch}', expect=None)
        self.assertOneLineError(result, tree, '-r')
        self.assertEqual('', self.run_on(name, f'ls -A {scratch}').stdout)
        self.run_on(name, f'mkdir {scratch}/d && echo x > {scratch}/d/f')
        dst = os.path.join(self.world.home, 'd')
        result = self.crcache('cp', f'{name}:{scratch}/d', dst, expect=None)
        self.assertEqual(
            (1, f'crcache: {name}:{scratch}/d: is a directory (use -r to '
             'copy directories)\n'),
            (result.returncode, result.stderr), str(result))
        self.assertFalse(os.path.lexists(dst))

    # -- concurrency -------------------------------------------------------

    def test_concurrency_is_probed(self) -> None:
        """Unless ``concurrency`` is set, the instance is asked."""
        keys = dict(self.keys)
        keys.pop('concurrency', None)
        self.world.write_source(self.source_name, keys)
        out = self.crcache('acquire', '-s', self.source_name, '-f',
                           'json').stdout
        [row] = json.loads(out)
        self.assertIsInstance(row['concurrency'], int)
        self.assertGreaterEqual(row['concurrency'], 1)
        self.assertEqual(self.expected_concurrency(row['name']),
                         row['concurrency'])

    def test_parallel_acquisitions(self) -> None:
        """Several instances provisioned at once (one thread each)."""
        count = self.parallel_instances
        if count < 2:
            self.skipTest('parallel_instances is below 2')
        self.configure(maximum=count)
        out = self.crcache('acquire', '-s', self.source_name, '-n',
                           str(count), '-f', 'json').stdout
        rows = json.loads(out)
        names = [row['name'] for row in rows]
        self.assertEqual(count, len(set(names)), out)
        for row in rows:
            self.assertGreaterEqual(row['concurrency'], 1, row)
            self.assertEqual(f"{row['name']}\n", self.run_on(
                row['name'], '--', 'echo', row['name']).stdout)
        self.release(*names)
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
        self.assertEqual([], self.gc())

    def test_concurrent_commands_on_one_instance(self) -> None:
        """Commands on one instance run side by side, each its own."""
        name = self.acquire_one()
        scratch = self.scratch(name)
        count = 4
        procs = [self.world.popen(
            'run', name,
            f'touch {scratch}/{k}; i=0; '
            f'while [ $(ls {scratch} | wc -l) -lt {count} ]; do '
            '[ $i -ge 600 ] && { echo alone; exit 1; }; '
            f'sleep 0.05; i=$((i+1)); done; echo {k}')
            for k in range(count)]
        for k, proc in enumerate(procs):
            out, err = proc.communicate(timeout=60)
            self.assertEqual((0, f'{k}\n'.encode(), b''),
                             (proc.returncode, out, err))

    # -- unreachable backends ----------------------------------------------

    def _unreachable(self) -> str:
        keys = self.unreachable_keys()
        if keys is None:
            self.skipTest('unreachable_keys() is not provided')
        name = f'{self.source_name}-unreachable'
        self.world.write_source(name, keys)
        return name

    def test_status_reaches_no_backend(self) -> None:
        """Every invocation loads every source: loading reaches nothing."""
        name = self._unreachable()
        row = self.status(name)[name]
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
        self.status()

    def test_an_unreachable_backend_is_one_line(self) -> None:
        """The error names the source, and nothing is left half-made."""
        name = self._unreachable()
        result = self.crcache('acquire', '-s', name, expect=None)
        self.assertOneLineError(result, f"'{name}'")
        self.assertEqual({}, self.instances(name))

    def test_unknown_keys_are_refused(self) -> None:
        """The type's ``opts`` are enforced: one line naming the key."""
        path = self.configure(**{f'{self.type_name}_no_such_key': 1})
        result = self.crcache('acquire', '-s', self.source_name,
                              expect=None)
        self.assertOneLineError(result, path,
                                f'{self.type_name}_no_such_key')

    # -- discarding and leaks (the driver itself) --------------------------

    def _driver(self, owner: str, source: str | None = None) -> Any:
        driver = self.load_source(source)
        driver.owner = owner
        return driver

    def _provision(self, driver: Any) -> tuple[str, dict]:
        """Make one resource through the driver; discarded afterwards."""
        name = f'{driver.name}-{random.randrange(10 ** 6, 10 ** 7)}'
        with self.world.applied():
            refs = driver.provision([name])
        self.addCleanup(self._applied, driver.discard, refs)
        self.assertEqual([name], list(refs))
        self.assertEqual(refs, json.loads(json.dumps(refs)),
                         'a reference must survive a JSON round trip')
        return name, refs

    def _applied(self, func: Callable, *args: Any) -> Any:
        with self.world.applied():
            return func(*args)

    def test_discard_of_what_is_already_gone(self) -> None:
        """discard is idempotent, and takes an empty reference."""
        driver = self._driver(f'kit{uuid.uuid4().hex[:12]}')
        name, refs = self._provision(driver)
        self._applied(driver.discard, refs)
        self._applied(driver.discard, refs)
        self._applied(driver.discard, {name: {}})
        never = f'{driver.name}-{random.randrange(10 ** 7, 10 ** 8)}'
        self._applied(driver.discard, {never: {}})

    def test_discard_finds_a_resource_by_its_name(self) -> None:
        """``discard({name: {}})`` (no reference was recorded, as after
        a failed or interrupted provision) destroys what was made."""
        if not self.lists_leaks:
            self.skipTest('the type does not label its resources')
        owner = f'kit{uuid.uuid4().hex[:12]}'
        driver = self._driver(owner)
        name, refs = self._provision(driver)
        self.assertIn(name, self._applied(driver.list_owned,
                                          owner).values())
        self._applied(driver.discard, {name: {}})
        self.assertNotIn(name, self._applied(driver.list_owned,
                                             owner).values())

    def test_list_owned_lists_this_store_and_source_only(self) -> None:
        owner = f'kit{uuid.uuid4().hex[:12]}'
        driver = self._driver(owner)
        if not self.lists_leaks:
            self.assertIsNone(self._applied(driver.list_owned, owner))
            return
        other_store = self._driver(f'kit{uuid.uuid4().hex[:12]}')
        other_name = f'{self.source_name}-other'
        self.world.write_source(other_name, self.keys)
        other_source = self._driver(owner, other_name)
        mine, _ = self._provision(driver)
        theirs, _ = self._provision(other_store)
        sibling, _ = self._provision(other_source)
        owned = self._applied(driver.list_owned, owner)
        self.assertEqual([mine], list(owned.values()), owned)
        [resource] = owned
        self.assertIsInstance(resource, str)
        self._applied(driver.destroy_owned, resource)
        self.assertEqual({}, self._applied(driver.list_owned, owner))
        # Already gone is success.
        self._applied(driver.destroy_owned, resource)
        self.assertEqual([theirs], list(self._applied(
            other_store.list_owned, other_store.owner).values()))
        self.assertEqual([sibling], list(self._applied(
            other_source.list_owned, owner).values()))

    def test_gc_finds_and_destroys_leaks(self) -> None:
        """A resource the store forgot is reported, then destroyed."""
        if not self.lists_leaks:
            self.skipTest('the type does not label its resources')
        name = self.acquire_one()
        # Forgotten the way a user forgets a source it cannot reach: its
        # definition gone, then ``gc --forget``; then it comes back.
        directory = self.world.source_dir(self.source_name)
        hidden = os.path.join(os.path.dirname(directory),
                              '.' + self.source_name)
        os.rename(directory, hidden)
        try:
            self.crcache('gc', '--forget', self.source_name)
        finally:
            os.rename(hidden, directory)
        self.assertEqual({}, self.instances(self.source_name))
        actions = self.gc()
        self.assertEqual([(name, self.source_name, 'leaked')],
                         [(a['name'], a['source'], a['action'])
                          for a in actions], actions)
        actions = self.gc('--leaks')
        self.assertEqual([(name, self.source_name, 'destroyed')],
                         [(a['name'], a['source'], a['action'])
                          for a in actions], actions)
        self.assertEqual([], self.gc())

    def test_releasing_everything_leaves_nothing(self) -> None:
        names = self.acquire(self.source_name)
        if self.parallel_instances >= 2:
            self.configure(maximum=2)
            names += self.acquire(self.source_name)
        self.release(*names)
        self.assertEqual({}, self.instances(self.source_name))
        # Nothing labelled as this store's is left for gc to find.
        self.assertEqual([], self.gc())


class LayeredConformance(_TypeChecks, CrcacheMixin):
    """The conformance suite for a layered source type (a pool policy).

    Mix into a ``testtools.TestCase`` and supply :meth:`pool_keys`::

        class TestMyPool(crcache.testing.LayeredConformance,
                         testtools.TestCase):
            def pool_keys(self, children):
                return {'type': 'mypool',
                        'mypool_sources': ','.join(children)}

    The sources it draws from are ``local`` ones by default
    (:meth:`child_keys`), which cost nothing to make.
    """

    #: The layered source's name in the test configuration.
    pool_name = 'kitpool'

    def pool_keys(self, children: list[str]) -> dict[str, Any]:
        """``source.conf`` keys of the layered source over ``children``."""
        raise NotImplementedError('pool_keys() must return the keys')

    def child_keys(self, name: str, maximum: int,
                   reserve: int = 0) -> dict[str, Any]:
        """Keys of one source it draws from."""
        return {'type': 'local', 'maximum': maximum, 'reserve': reserve}

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(self._release_pool)

    def checked_source(self) -> str:
        self.make_pool({'kita': 1})
        return self.pool_name

    def make_pool(self, children: dict[str, int],
                  reserve: dict[str, int] | None = None) -> None:
        """Define ``children`` (name: maximum) and the pool over them."""
        for child, maximum in children.items():
            self.world.write_source(child, self.child_keys(
                child, maximum, (reserve or {}).get(child, 0)))
        self.world.write_source(self.pool_name,
                                self.pool_keys(list(children)))

    def _release_pool(self) -> None:
        result = self.world.run('status', '-v', '-f', 'json',
                                self.pool_name)
        if result.returncode == 0:
            held = [row['name'] for row in json.loads(result.stdout)
                    if row['state'] == 'in-use']
            if held:
                self.world.run('release', *held)

    def test_an_instance_wraps_one_of_its_sources(self) -> None:
        self.make_pool({'kita': 2, 'kitb': 2})
        [name] = self.acquire(self.pool_name)
        self.assertTrue(name.startswith(f'{self.pool_name}-'), name)
        child = self.wrapped(name)
        self.assertIn(child['source'], ('kita', 'kitb'))
        self.assertEqual('in-use', child['state'])
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)
        self.release(name)
        status = self.status(self.pool_name, 'kita', 'kitb')
        self.assertEqual([0, 0, 0], [status[s]['in-use'] for s in
                                     (self.pool_name, 'kita', 'kitb')])

    def test_every_source_is_drawn_on_when_others_are_full(self) -> None:
        """An instance is given while any source has room; none beyond."""
        self.make_pool({'kita': 1, 'kitb': 1, 'kitc': 1})
        names = [self.acquire(self.pool_name)[0] for _ in range(3)]
        self.assertEqual(['kita', 'kitb', 'kitc'],
                         sorted(self.wrapped(n)['source'] for n in names))
        result = self.crcache('acquire', '-s', self.pool_name, expect=None)
        self.assertOneLineError(result, f"'{self.pool_name}'")
        self.assertEqual(3, self.status(self.pool_name)[
            self.pool_name]['in-use'])

    def test_several_at_once(self) -> None:
        self.make_pool({'kita': 2, 'kitb': 2})
        names = self.acquire(self.pool_name, 3)
        self.assertEqual(3, len(set(names)))
        drawn = [self.wrapped(n)['source'] for n in names]
        for child in ('kita', 'kitb'):
            self.assertLessEqual(drawn.count(child), 2, drawn)

    def test_release_hands_the_child_back(self) -> None:
        """The child's own reserve decides whether it stays cached."""
        self.make_pool({'kita': 1}, reserve={'kita': 1})
        [name] = self.acquire(self.pool_name)
        child = self.wrapped(name)['name']
        self.release(name)
        self.assertEqual({child: 'cached'},
                         {n: row['state'] for n, row in
                          self.instances('kita').items()})
        [again] = self.acquire(self.pool_name)
        self.assertEqual(child, self.wrapped(again)['name'])
