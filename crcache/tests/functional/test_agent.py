"""The agent: invisible, self-starting, self-stopping, never in the way."""

from __future__ import annotations

import glob
import os
import signal
import subprocess

from crcache.tests.functional import base


def _cmdline(pid: int) -> str:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
        return f.read().replace(b'\0', b' ').decode()


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split()[2] != 'Z'
    except FileNotFoundError:
        return False


class TestAgent(base.CLITestCase):

    def setUp(self) -> None:
        super().setUp()
        # A runtime directory of this test's own, to watch its agent.
        self.runtime = os.path.join(self.home, 'run')
        os.mkdir(self.runtime, 0o700)
        self.env['XDG_RUNTIME_DIR'] = self.runtime
        self.env['CRCACHE_AGENT_IDLE'] = '60'
        self.addCleanup(self._stop_agents)

    def _sockets(self) -> list[str]:
        return glob.glob(os.path.join(self.runtime, 'crcache', '*.sock'))

    def _agent_pids(self) -> list[int]:
        out = subprocess.run(['pgrep', '-f', f'crcache.agent {self.runtime}'],
                             capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def _stop_agents(self) -> None:
        for pid in self._agent_pids():
            os.kill(pid, signal.SIGTERM)

    def _runner_of_command(self) -> str:
        # The command line of the process that ran the user's command.
        return self.crcache('run', self.name,
                            'cat /proc/$PPID/cmdline | tr "\\0" " "').stdout

    def test_first_command_starts_it_and_later_ones_use_it(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: self._sockets())
        self.assertEqual(0o700, os.stat(os.path.dirname(
            self._sockets()[0])).st_mode & 0o777)
        self.wait_for(lambda: 'crcache.agent' in self._runner_of_command())

    def test_off_switch(self) -> None:
        self.env['CRCACHE_AGENT'] = '0'
        self.name = self.crcache('acquire').stdout.strip()
        self.assertIn('bin/crcache run', self._runner_of_command())
        self.assertEqual([], self._sockets())

    def test_terminal_stdin_runs_directly(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: self._sockets())
        _, output = self.in_terminal(
            'run', self.name, 'cat /proc/$PPID/cmdline | tr "\\0" " "')
        self.assertIn(b'bin/crcache run', output)

    def test_idle_agent_exits(self) -> None:
        self.env['CRCACHE_AGENT_IDLE'] = '1'
        self.crcache('status')
        self.wait_for(lambda: self._agent_pids())
        self.wait_for(lambda: not self._agent_pids())
        self.assertEqual([], self._sockets())

    def test_dead_agent_is_replaced(self) -> None:
        self.crcache('status')
        self.wait_for(lambda: self._agent_pids())
        for pid in self._agent_pids():
            os.kill(pid, signal.SIGKILL)
        self.wait_for(lambda: not self._agent_pids())
        self.assertNotEqual([], self._sockets())  # left behind, stale
        self.assertIn('local', self.crcache('status').stdout)
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: 'crcache.agent' in self._runner_of_command())

    def test_environment_directory_and_umask_follow_the_client(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: 'crcache.agent' in self._runner_of_command())
        sub = os.path.join(self.project, 'sub')
        os.mkdir(sub)
        old = os.umask(0o027)
        try:
            out = self.crcache('run', self.name, 'echo "$X"; pwd; umask',
                               cwd=sub, env={'X': 'y z'}).stdout
        finally:
            os.umask(old)
        self.assertEqual(f'y z\n{sub}\n0027\n', out)

    def test_killed_client_takes_its_worker_along(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: 'crcache.agent' in self._runner_of_command())
        proc = self.start('run', self.name, 'echo $PPID; exec sleep 20')
        worker = int(proc.stdout.readline())
        self.assertIn('crcache.agent', _cmdline(worker))
        proc.kill()
        proc.wait()
        self.wait_for(lambda: not _alive(worker))
        # The agent itself carries on.
        self.assertIn('crcache.agent', self._runner_of_command())

    def test_worker_killed_by_signal_kills_the_client_alike(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: 'crcache.agent' in self._runner_of_command())
        proc = self.start('run', self.name, 'echo $PPID; exec sleep 20')
        worker = int(proc.stdout.readline())
        os.kill(worker, signal.SIGKILL)
        self.assertEqual(-signal.SIGKILL, proc.wait(timeout=30))
