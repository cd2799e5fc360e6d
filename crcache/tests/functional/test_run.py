"""``crcache run``: argv, streams and exit status, as a script sees them.

Run semantics every source shares (quoting, streams, exit status,
signals) are the conformance suite's
(:mod:`crcache.tests.functional.test_conformance_local`).
"""

from __future__ import annotations

import os

from crcache.tests.functional import base


class RunMixin:
    """Tests shared by the agent and direct invocation."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('pool', type='pool', sources='local')
        self.name = self.crcache('acquire', '-s', 'pool').stdout.strip()

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
