"""``crcache run``: argv, streams and exit status, as a script sees them."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

from crcache.tests.functional import base


class RunMixin:
    """Tests shared by the agent and direct invocation."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('pool', type='pool', sources='local')
        self.name = self.crcache('acquire', '-s', 'pool').stdout.strip()

    def test_assignments_and_quoting(self) -> None:
        result = self.crcache('run', self.name, '--', 'A=1', 'B=x y', 'sh',
                              '-c', 'echo "$A|$B|$0"', 'arg zero')
        self.assertEqual('1|x y|arg zero\n', result.stdout)

    def test_single_word_is_a_command_line(self) -> None:
        result = self.crcache('run', self.name, 'echo a && echo b')
        self.assertEqual('a\nb\n', result.stdout)

    def test_exit_status(self) -> None:
        self.crcache('run', self.name, 'exit 7', expect=7)

    def test_signal_death_is_128_plus_n(self) -> None:
        self.crcache('run', self.name, 'kill -KILL $$', expect=137)

    def test_streams_stay_apart(self) -> None:
        result = self.crcache('run', self.name, 'echo out; echo err >&2')
        self.assertEqual('out\n', result.stdout)
        self.assertEqual('err\n', result.stderr)

    def test_binary_stdin_and_stdout(self) -> None:
        data = os.urandom(4 << 20) + bytes(range(256))
        result = self.crcache('run', self.name, 'cat', input=data,
                              binary=True)
        self.assertEqual(hashlib.sha256(data).hexdigest(),
                         hashlib.sha256(result.stdout).hexdigest())

    def test_caller_environment_and_directory(self) -> None:
        subdir = os.path.join(self.project, 'sub')
        os.mkdir(subdir)
        result = self.crcache('run', self.name, 'echo "$FOO"; pwd',
                              env={'FOO': 'bar baz'}, cwd=subdir)
        self.assertEqual(f'bar baz\n{subdir}\n', result.stdout)

    def test_cwd(self) -> None:
        other = os.path.join(self.home, 'some dir')
        os.mkdir(other)
        result = self.crcache('run', '--cwd', other, self.name, '--', 'sh',
                              '-c', 'pwd; echo "$1"', 'x', 'a b')
        self.assertEqual(f'{other}\na b\n', result.stdout)
        result = self.crcache('run', '--cwd', '/nonexistent', self.name,
                              'true', expect=None)
        self.assertNotEqual(0, result.returncode)

    def test_not_acquired(self) -> None:
        self.write_source('pool', type='pool', sources='local', reserve=1)
        self.crcache('release', self.name)
        result = self.crcache('run', self.name, 'true', expect=255)
        self.assertOneLineError(result, self.name, 'not acquired',
                               'cached')

    def test_unknown_instance(self) -> None:
        result = self.crcache('run', 'nosuch-3', 'true', expect=255)
        self.assertOneLineError(result, "unknown instance 'nosuch-3'")

    def test_sigterm_reaches_the_command(self) -> None:
        marker = os.path.join(self.home, 'terminated')
        proc = subprocess.Popen(
            [base.CRCACHE, 'run', self.name,
             f"trap 'touch {marker}; exit 5' TERM; "
             'echo ready; while :; do sleep 0.1; done'],
            env=self.env, cwd=self.project, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)
        self.assertEqual(b'ready\n', proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(5, proc.wait(timeout=30))
        self.assertTrue(os.path.exists(marker))

    def test_sigint_goes_to_the_command(self) -> None:
        # As Ctrl-C: the whole process group gets SIGINT.
        proc = subprocess.Popen(
            [base.CRCACHE, 'run', self.name, 'echo ready; exec sleep 30'],
            env=self.env, cwd=self.project, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        self.addCleanup(proc.kill)
        self.assertEqual(b'ready\n', proc.stdout.readline())
        time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        self.assertEqual(130, proc.wait(timeout=30))
        self.assertNotIn(b'Traceback', proc.stderr.read())


class TestRun(RunMixin, base.CLITestCase):
    """Through the agent (the default when stdin is not a terminal)."""


class TestRunDirect(RunMixin, base.CLITestCase):
    """With the agent turned off."""

    extra_env = {'CRCACHE_AGENT': '0'}


class TestInteractiveShell(base.CLITestCase):
    """No command: an interactive shell on the instance's terminal."""

    def test_shell_reads_the_terminal(self) -> None:
        name = self.crcache('acquire').stdout.strip()
        status, output = self.in_terminal(
            'run', name, input=b'echo "in $PWD"; exit 3\n',
            env={'SHELL': '/bin/sh', 'PS1': '$ '})
        self.assertEqual(3, status)
        self.assertIn(f'in {self.project}'.encode(), output)
