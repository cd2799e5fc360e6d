"""The conformance checks of ``crcache run``: what a command sees.

Command lines (one word is a shell command line; several arrive
intact), exit statuses (128+N for signal N), the streams (apart, at
volume, binary, end of input, a reader that stops early) and signals
(SIGINT and SIGTERM end the command's whole process group on the
instance, in time).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import uuid
from typing import Any

from crcache.testing.conformance.kit import BackendKit
from crcache.testing.environment import CRCACHE


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


class RunChecks(BackendKit):
    """The checks of ``crcache run``; part of the backend suite."""

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
