"""Signals sent to ``crcache run`` reach the command, on every source.

Ctrl-C (SIGINT to crcache's whole process group, as a terminal sends it)
and SIGTERM (to crcache alone) reach the command's whole process group:
its ``trap`` runs, what it runs in the foreground gets the signal too,
and crcache exits with the command's status. A second Ctrl-C gives up on
a command that did not end, at once. Each way, no process of the command
is left afterwards: the "remote" processes of the ssh and docker sources
run on this machine too, so ``/proc`` shows every one of them. Each
command carries a marker of its own (``$0`` of a shell it runs in the
foreground, and so on its command line and its login shell's) to find
them by.

ssh runs both as ourselves (as root: root's login shell, bash, sourcing
root's real ``~/.bashrc``) and as an unprivileged user whose login shell
is ``/bin/sh`` (made for the test when we are root). OpenSSH refuses the
``signal`` channel request for root's sessions, which is what crcache
used to rely on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

from crcache.tests.functional import base
from crcache.tests.functional import test_docker
from crcache.tests.functional import test_ssh

#: Seconds crcache may take to exit once the command got the signal.
PROMPT = 3.0


def foreground_running(marker: str) -> bool:
    """Whether the marked shell of :meth:`SignalMixin.foreground` runs.

    Its command line is then its own (``sh -c SCRIPT MARKER``): one that
    was signalled while still a copy of its parent shell could take the
    signal for that shell's trap, and lose it at exec.
    """
    for pid in marked(marker):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                if f.read().split(b'\0')[-2:-1] == [marker.encode()]:
                    return True
        except OSError:
            continue
    return False


def marked(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found = []
    needle = marker.encode()
    for pid, state, _, _ in base.processes():
        if state == 'Z' or pid == os.getpid():
            continue
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                if needle in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


class SignalMixin:
    """The tests, for a subclass that sets up ``self.name``."""

    def setUp(self) -> None:
        super().setUp()
        self.marker = f'crcmark{uuid.uuid4().hex[:12]}'
        self.addCleanup(self._kill_leftovers)

    def _kill_leftovers(self) -> None:
        # Whatever a failing test leaves must not outlive it.
        for pid in marked(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def foreground(self, script: str) -> str:
        """A shell line running ``script`` marked, in the foreground."""
        return f'sh -c "{script}" {self.marker}'

    def start_command(self, line: str) -> subprocess.Popen:
        """``crcache run`` of ``line``, once it has said "ready"."""
        proc = subprocess.Popen(
            [base.CRCACHE, 'run', self.name, line], env=self.env,
            cwd=self.project, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.assertEqual(b'ready\n', proc.stdout.readline())
        self.wait_for(lambda: foreground_running(self.marker), 10,
                      'the command to be running')
        return proc

    def interrupt(self, proc: subprocess.Popen) -> None:
        """Ctrl-C: SIGINT to crcache's whole process group."""
        os.killpg(proc.pid, signal.SIGINT)

    def assertEnds(self, proc: subprocess.Popen, status: int,
                   since: float) -> bytes:
        """crcache exits ``status`` promptly; returns its stdout."""
        self.assertEqual(status, proc.wait(timeout=30))
        took = time.monotonic() - since
        self.assertLess(took, PROMPT)
        err = proc.stderr.read()
        # A shell may say "Terminated" when its job got SIGTERM; nothing
        # of crcache's (an error, its wrapper's report line) shows.
        self.assertIn(err, (b'', b'Terminated\n'))
        return proc.stdout.read()

    def assertNothingLeft(self, within: float = 0.5) -> None:
        """No process of the command is there (after ``within`` s)."""
        deadline = time.monotonic() + within
        while marked(self.marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = marked(self.marker)
        self.assertEqual([], left, [
            open(f'/proc/{pid}/cmdline', 'rb').read() for pid in left])

    def test_sigint_runs_the_trap(self) -> None:
        proc = self.start_command(
            'trap "echo got INT; exit 9" INT; echo ready; '
            + self.foreground('while :; do sleep 0.1; done'))
        since = time.monotonic()
        self.interrupt(proc)
        self.assertEqual(b'got INT\n', self.assertEnds(proc, 9, since))
        self.assertNothingLeft()

    def test_sigint_ends_the_command(self) -> None:
        proc = self.start_command(
            'echo ready; ' + self.foreground('while :; do sleep 0.1; done'))
        since = time.monotonic()
        self.interrupt(proc)
        self.assertEqual(b'', self.assertEnds(proc, 130, since))
        self.assertNothingLeft()

    def test_sigterm_runs_the_trap(self) -> None:
        proc = self.start_command(
            'trap "echo got TERM; exit 7" TERM; echo ready; '
            + self.foreground('while :; do sleep 0.1; done'))
        since = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(b'got TERM\n', self.assertEnds(proc, 7, since))
        self.assertNothingLeft()

    def test_sigterm_ends_the_command(self) -> None:
        proc = self.start_command(
            'echo ready; ' + self.foreground('while :; do sleep 0.1; done'))
        since = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(b'', self.assertEnds(proc, 143, since))
        self.assertNothingLeft()

    def test_second_sigint_gives_up_at_once(self) -> None:
        # The command survives SIGINT; the second one ends crcache.
        proc = self.start_command(
            'trap "echo got INT" INT; echo ready; while :; do '
            # (a loop: a lone command could be exec'd, marker and all)
            + self.foreground('for i in 1; do sleep 0.1; done') + '; done')
        self.interrupt(proc)
        self.assertEqual(b'got INT\n', proc.stdout.readline())
        since = time.monotonic()
        self.interrupt(proc)
        self.assertEqual(130, proc.wait(timeout=30))
        self.assertLess(time.monotonic() - since, 1.0)
        err = proc.stderr.read().decode()
        lines = err.splitlines()
        self.assertEqual(1, len(lines), err)
        self.assertIn(f'{self.name}: interrupted again', lines[0])
        self.assertIn('trap "echo got INT" INT', lines[0])
        # Hung up on (or killed) on the way out: gone within seconds.
        self.assertNothingLeft(within=10)


class LocalMixin(SignalMixin):

    def setUp(self) -> None:
        super().setUp()
        self.write_source('here', type='local')
        self.name = self.crcache('acquire', '-s', 'here').stdout.strip()


class TestLocal(LocalMixin, base.CLITestCase):
    """A local command, through the agent (the usual case)."""


class TestLocalDirect(LocalMixin, base.CLITestCase):
    """A local command, with the agent turned off."""

    extra_env = {'CRCACHE_AGENT': '0'}


class SSHMixin(SignalMixin):

    def setUp(self) -> None:
        super().setUp()
        self.name = self.acquire()

    def test_killed_crcache_leaves_nothing(self) -> None:
        # SIGKILL: crcache cannot do anything about it, its connection
        # (or its holder's client socket) just goes away.
        proc = self.start_command(
            'trap "" INT TERM; echo ready; '
            + self.foreground('while :; do sleep 0.1; done'))
        proc.kill()
        proc.wait()
        self.assertNothingLeft(within=10)


class TestSSHThroughHolder(SSHMixin, test_ssh.SSHTestCase):
    """Through the connection holder, logged in as ourselves."""

    def setUp(self) -> None:
        super().setUp()
        self.wait_for(self.holder_sockets, what='a holder socket')


class TestSSHDirect(SSHMixin, test_ssh.SSHTestCase):
    """On connections of their own, logged in as ourselves."""

    source_overrides = {'ssh_persist': 0}


class TestSSHThroughHolderAsUser(TestSSHThroughHolder):
    """Through the holder, as an unprivileged user with /bin/sh."""

    login_shell = '/bin/sh'


class TestSSHDirectAsUser(TestSSHDirect):
    """Direct, as an unprivileged user with /bin/sh."""

    login_shell = '/bin/sh'


class DockerMixin(SignalMixin):

    def setUp(self) -> None:
        super().setUp()
        [self.name] = self.acquire()


class TestDocker(DockerMixin, test_docker.DockerTestCase):
    """A command in a busybox container, through the agent."""


class TestDockerDirect(DockerMixin, test_docker.DockerTestCase):
    """The same, with the agent turned off."""

    extra_env = {'CRCACHE_AGENT': '0'}
