"""Tests for transport.remotegroup: the wrapper, its report and the kill.

The scripts are run by the real shells installed here (dash as /bin/sh,
bash, busybox sh), as a login shell would run them; the report filter is
fed streams cut every possible way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import fixtures
import testtools

from crcache.transport import remotegroup

SHELLS = [['/bin/sh'], ['bash'], ['busybox', 'sh']]


def available() -> list[list[str]]:
    return [shell for shell in SHELLS if shutil.which(shell[0])]


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie nobody reaps does not)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


class TestReport(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.nonce = remotegroup.new_nonce()
        self.found: list[tuple[int, str]] = []

    def filtered(self, chunks: list[bytes]) -> bytes:
        report = remotegroup.Report(self.nonce, self.found.append)
        out = b''.join(report.feed(chunk) for chunk in chunks)
        return out + report.flush()

    def test_line_is_taken_out_however_the_stream_is_cut(self) -> None:
        before = b'rc file says\xff\x00 hi c'  # ends like the tag starts
        after = b'\x00binary\xfe and the command\n' * 3
        stream = before + f'{self.nonce} 4242 8888\n'.encode() + after
        for cut in range(len(stream) + 1):
            for second in (cut, min(cut + 7, len(stream))):
                self.found.clear()
                out = self.filtered(
                    [stream[:cut], stream[cut:second], stream[second:]])
                self.assertEqual(before + after, out, cut)
                self.assertEqual([(4242, '8888')], self.found, cut)

    def test_without_proc_the_start_time_is_unknown(self) -> None:
        out = self.filtered([f'{self.nonce} 17 -\nerr'.encode()])
        self.assertEqual(b'err', out)
        self.assertEqual([(17, '-')], self.found)

    def test_no_report_passes_everything_on(self) -> None:
        stream = b'crcache-not-it 1 2\ncrc'
        self.assertEqual(stream, self.filtered([stream[:5], stream[5:]]))
        self.assertEqual([], self.found)

    def test_only_the_first_report_counts(self) -> None:
        line = f'{self.nonce} 5 6\n'.encode()
        self.assertEqual(line, self.filtered([line + line]))
        self.assertEqual([(5, '6')], self.found)

    def test_a_tag_without_a_line_end_is_not_held_for_ever(self) -> None:
        stream = self.nonce.encode() + b' ' + b'x' * 200
        self.assertEqual(stream, self.filtered([stream[:40], stream[40:]]))
        self.assertEqual([], self.found)

    def test_kill_refuses_what_is_not_a_signal_name(self) -> None:
        self.assertRaises(ValueError, remotegroup.kill_argv,
                          'INT; rm -rf ~', (1, '-'))


class TestScripts(testtools.TestCase):
    """The wrapper run by each shell, as a login shell runs a line."""

    def run_line(self, shell: list[str], line: str,
                 input: bytes = b'') -> subprocess.CompletedProcess:
        # A session of its own, as sshd gives a command.
        return subprocess.run(
            [*shell, '-c', line], input=input, capture_output=True,
            start_new_session=True, timeout=30)

    def test_the_line_runs_as_usual_after_the_report(self) -> None:
        for shell in available():
            nonce = remotegroup.new_nonce()
            line = remotegroup.ssh_line(
                'echo "$#"; cat; echo err >&2; exit 3', nonce)
            proc = self.run_line(shell, line, input=b'in\x00put')
            self.assertEqual(3, proc.returncode, shell)
            self.assertEqual(b'0\nin\x00put', proc.stdout, shell)
            head, _, rest = proc.stderr.partition(b'\n')
            tag, pid, start = head.decode().split()
            self.assertEqual(nonce, tag)
            self.assertEqual(b'err\n', rest, shell)
            self.assertNotEqual('-', start)  # Linux has /proc

    def test_the_report_names_the_group_leader(self) -> None:
        for shell in available():
            nonce = remotegroup.new_nonce()
            proc = self.run_line(shell, remotegroup.ssh_line(
                'read s </proc/$$/stat; s=${s##*") "}; set -- $s; '
                'echo $$ $3', nonce))
            leader, group = proc.stdout.split()
            _, reported, _ = proc.stderr.split(b'\n')[0].split()
            self.assertEqual((leader, leader), (reported, group), shell)

    def test_docker_wrapper_execs_the_command(self) -> None:
        nonce = remotegroup.new_nonce()
        argv = remotegroup.docker_argv(
            ['/bin/sh', '-c', 'echo "$0|$$|$1"', 'zero', 'x y'], nonce)
        proc = subprocess.run(argv, capture_output=True, timeout=30)
        name, pid, arg = proc.stdout.decode().split('|')
        self.assertEqual(('zero', 'x y\n'), (name, arg))
        self.assertEqual([nonce, pid],
                         proc.stderr.decode().split()[:2])

    def test_kill_reaches_the_group_and_checks_the_start(self) -> None:
        for shell in available():
            proc = subprocess.Popen(
                [*shell, '-c', remotegroup.ssh_line(
                    'trap "echo got INT; exit 9" INT; echo ready; '
                    'sh -c "while :; do sleep 0.1; done"',
                    remotegroup.new_nonce())],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True)
            self.addCleanup(self.kill_group, proc)
            _, pid, start = proc.stderr.readline().split()
            self.assertEqual(b'ready\n', proc.stdout.readline())
            where = (int(pid), start.decode())
            # Another process than the one started then: left alone.
            stale = (int(pid), str(int(start) - 1))
            subprocess.run(remotegroup.kill_argv('INT', stale), check=True)
            time.sleep(0.3)
            self.assertIsNone(proc.poll())
            subprocess.run(remotegroup.kill_argv('INT', where), check=True)
            self.assertEqual(9, proc.wait(10), shell)
            self.assertEqual(b'got INT\n', proc.stdout.read())

    def test_each_shell_signals_the_group_once(self) -> None:
        # busybox's kill refuses "--" but signals the group all the same,
        # and exits 1: a fallback on that status signalled it twice. The
        # shell's kill is wrapped to count the calls (two signals close
        # together could arrive as one).
        log = os.path.join(self.useFixture(fixtures.TempDir()).path, 'log')
        for shell in available():
            proc = subprocess.Popen(
                ['/bin/sh', '-c', 'trap "echo INT" INT; echo ready; '
                 'while :; do sleep 0.05; done'],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True)
            self.addCleanup(self.kill_group, proc)
            self.assertEqual(b'ready\n', proc.stdout.readline())
            argv = remotegroup.kill_argv('INT', (proc.pid, '-'))
            counted = (f'kill() {{ echo "$*" >>{log}; command kill "$@"; '
                       f'}}; {argv[2]}')
            open(log, 'w').close()
            subprocess.run([*shell, '-c', counted, *argv[3:]], check=True)
            self.assertEqual(b'INT\n', proc.stdout.readline())
            with open(log) as f:
                self.assertEqual(1, len(f.readlines()), shell)

    def test_an_orphaned_command_is_hung_up_on(self) -> None:
        # The login shell's parent going away (sshd, when the connection
        # drops) is what the watcher looks for: here the parent is a
        # shell we kill.
        for shell in available():
            nonce = remotegroup.new_nonce()
            parent = subprocess.Popen(
                ['/bin/sh', '-c', '"$@" & wait', 'sh', *shell, '-c',
                 remotegroup.ssh_line(
                     'trap "" INT TERM; echo ready; '
                     'while :; do sleep 0.1; done', nonce)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True)
            self.addCleanup(self.kill_group, parent)
            _, pid, _ = parent.stderr.readline().split()
            self.assertEqual(b'ready\n', parent.stdout.readline())
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait()
            deadline = time.monotonic() + 10
            while alive(int(pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertFalse(alive(int(pid)), shell)

    @staticmethod
    def kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
