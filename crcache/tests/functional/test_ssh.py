"""The ssh source through the CLI, against real OpenSSH servers.

Every test starts its own sshd (:mod:`crcache.tests.functional.sshd`) on a
loopback port and reaches it as the source ``host``, with a known_hosts
file in the test's home and a runtime directory of its own, so the
connection holders a test leaves behind can be watched and go with it.
What every source type must do (run semantics, streams, signals, copies,
leak sweeps) is the conformance suite's
(:mod:`crcache.tests.functional.test_conformance_ssh`); what is here is
ssh's own: host keys, connection errors, ~/.ssh/config, the connection
holder, the login shell and large streams.
"""

from __future__ import annotations

import glob
import hashlib
import marshal
import os
import signal
import socket
import stat
import subprocess
import threading
import time

from crcache.tests.functional import base
from crcache.tests.functional import hostile
from crcache.tests.functional import sshd


def fingerprint(public_key_path: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key file."""
    out = subprocess.run(
        ['ssh-keygen', '-l', '-E', 'sha256', '-f', public_key_path],
        capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class SSHTestCase(base.CLITestCase):
    """One real sshd, known to the source ``host``."""

    #: Extra source.conf keys for the source ``host``.
    source_overrides: dict[str, object] = {}
    #: Log in as an unprivileged user with this login shell (made for
    #: the test when running as root) instead of as ourselves.
    login_shell: str | None = None

    def setUp(self) -> None:
        super().setUp()
        base.require_program(self, sshd.SSHD, 'openssh-server')
        user = None
        if self.login_shell:
            # Made first, so it is removed after the server has stopped
            # and nothing runs as it any more.
            user = self.useFixture(sshd.LoginUser(self.login_shell)).name
        self.runtime = os.path.join(self.home, 'run')
        os.mkdir(self.runtime, 0o700)
        self.env['XDG_RUNTIME_DIR'] = self.runtime
        self.addCleanup(self._stop_helpers)
        self.known_hosts = os.path.join(self.home, 'known_hosts')
        self.server = self.useFixture(sshd.SSHServer(user=user))
        self.write_known_hosts(self.server)
        self.write_source('host', **self.server.source_keys(
            self.known_hosts, **self.source_overrides))

    # -- helpers -------------------------------------------------------------

    def write_known_hosts(self, *servers: sshd.SSHServer) -> None:
        with open(self.known_hosts, 'w') as f:
            f.writelines(s.known_hosts_line() + '\n' for s in servers)

    def acquire(self, source: str = 'host') -> str:
        return self.crcache('acquire', '-s', source).stdout.strip()

    def _pids(self, pattern: str) -> list[int]:
        out = subprocess.run(['pgrep', '-f', pattern],
                             capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split() if sshd.alive(int(pid))]

    def holder_pids(self) -> list[int]:
        return self._pids(f'crcache.sources.ssh.holder {self.runtime}/')

    def holder_sockets(self) -> list[str]:
        from crcache.sources.ssh import holder as sshholder
        return glob.glob(os.path.join(self.runtime, 'crcache',
                                      f'ssh{sshholder.PROTOCOL}-*.sock'))

    def _stop_helpers(self) -> None:
        # The agent and the holders this test's commands left behind.
        for pid in (self._pids(f'crcache.daemons.agent {self.runtime}')
                    + self.holder_pids()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def in_terminal_within(self, timeout: float, *args: str,
                           input: bytes) -> tuple[int, bytes]:
        """:meth:`in_terminal`, killing a command still there at timeout.

        A shell that never sees its input would wait for it forever;
        killed, it fails the test instead of hanging the run.
        """
        done = threading.Event()

        def watchdog() -> None:
            if done.wait(timeout):
                return
            for pid in base.children(os.getpid()):
                try:
                    with open(f'/proc/{pid}/cmdline', 'rb') as f:
                        if base.CRCACHE.encode() in f.read():
                            os.kill(pid, signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            return self.in_terminal(*args, input=input)
        finally:
            done.set()

    def remote_tmpdir(self, name: str) -> str:
        """A fresh directory on the host, removed after the test."""
        path = self.run_on(name, 'mktemp -d').stdout.strip()
        self.assertTrue(path.startswith('/'), path)
        self.addCleanup(self.crcache, 'run', name, 'rm', '-rf', path,
                        expect=None)
        return path


class RunMixin:
    """Commands on an ssh host, as a script sees them."""

    def setUp(self) -> None:
        super().setUp()
        self.name = self.acquire()

    def test_the_login_shell_runs_the_line(self) -> None:
        # As "ssh host LINE" does: rc files, bash-isms and all.
        import pwd
        shell = pwd.getpwnam(self.server.user).pw_shell
        result = self.run_on(self.name, 'echo "$0"; echo "$(( 6 * 7 ))"')
        self.assertEqual(f'{os.path.basename(shell)}\n42\n', result.stdout)
        self.assertEqual('', result.stderr)
        if os.path.basename(shell) == 'bash':
            result = self.run_on(self.name, '[[ a == a ]] && echo "${0^^}"')
            self.assertEqual('BASH\n', result.stdout)

    def test_binary_stdin_and_stdout(self) -> None:
        data = os.urandom(64 << 20) + bytes(range(256))
        result = self.run_on(self.name, 'cat', input=data, binary=True)
        self.assertEqual(b'', result.stderr)
        self.assertEqual(len(data), len(result.stdout))
        self.assertEqual(hashlib.sha256(data).hexdigest(),
                         hashlib.sha256(result.stdout).hexdigest())


class TestRunThroughHolder(RunMixin, SSHTestCase):
    """Commands handed to the connection holder: the usual case."""

    def setUp(self) -> None:
        super().setUp()
        # Acquiring ran a command, which left a holder behind.
        self.wait_for(self.holder_sockets, what='a holder socket')


class TestRunDirect(RunMixin, SSHTestCase):
    """Commands on connections of their own (no holder)."""

    source_overrides = {'ssh_persist': 0}


class TestInteractiveShell(SSHTestCase):
    """No command: a login shell on a pty, as plain ssh gives."""

    def test_interactive_shell(self) -> None:
        self.name = self.acquire()
        home = self.run_on(self.name, 'echo $HOME').stdout.strip()
        status, output = self.in_terminal_within(
            15, 'run', self.name, input=b'echo "in $HOME"; exit 3\n')
        with open(self.server.log, errors='replace') as f:
            if os.geteuid() != 0 and 'chown(/dev/pts' in f.read():
                # sshd not run as root hands a terminal to group tty,
                # which it may not do where /dev/pts lacks gid=5 (some
                # containers): the root run tests this.
                self.assertIn(b'terminal', output)
                self.skipTest('a non-root sshd cannot give terminals on '
                              'this machine (/dev/pts without gid=5)')
        self.assertEqual(3, status, output)
        self.assertIn(f'in {home}'.encode(), output)


class TestCopy(SSHTestCase):
    """cp both ways, files and trees, modes kept."""

    def setUp(self) -> None:
        super().setUp()
        self.name = self.acquire()
        self.remote = self.remote_tmpdir(self.name)
        self.tree = os.path.join(self.project, 'tree')
        os.makedirs(os.path.join(self.tree, 'sub', 'deeper'))
        self.write_file(os.path.join(self.tree, 'data.txt'), 'data\n', 0o640)
        self.write_file(os.path.join(self.tree, 'sub', 'run.sh'),
                    '#!/bin/sh\necho ran\n', 0o750)
        self.write_file(os.path.join(self.tree, 'sub', 'deeper', 'blob'),
                    bytes(range(256)) * 1000, 0o600)
        os.chmod(os.path.join(self.tree, 'sub'), 0o751)


class TestHostKeys(SSHTestCase):
    """Host keys are verified; only accept-new records; changed is loud."""

    def test_unknown_key_is_refused_by_default(self) -> None:
        open(self.known_hosts, 'w').close()
        result = self.crcache('acquire', '-s', 'host', expect=None)
        self.assertOneLineError(
            result, "'host'", f'127.0.0.1:{self.server.port}',
            fingerprint(self.server.host_key + '.pub'),
            'ssh_host_key_policy=accept-new')
        with open(self.known_hosts) as f:
            self.assertEqual('', f.read())
        self.assertEqual(0, self.status('host')['host']['in-use'])

    def test_accept_new_records_the_key(self) -> None:
        os.unlink(self.known_hosts)
        self.write_source('host', **self.server.source_keys(
            self.known_hosts, ssh_host_key_policy='accept-new'))
        name = self.acquire()
        self.assertEqual(self.server.user + '\n',
                         self.run_on(name, 'whoami').stdout)
        with open(self.known_hosts) as f:
            lines = f.read().splitlines()
        expected = self.server.known_hosts_line().split()[:3]
        self.assertEqual([expected], [line.split()[:3] for line in lines])
        # Known now: the default policy connects too.
        self.write_source('host',
                          **self.server.source_keys(self.known_hosts))
        self.crcache('release', name)
        name = self.acquire()
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)

    def test_changed_key_is_refused_whatever_the_policy(self) -> None:
        other = sshd.keygen(os.path.join(self.home, 'other_host_key'))
        with open(self.known_hosts, 'w') as f:
            f.write(f'[127.0.0.1]:{self.server.port} {other}\n')
        with open(self.known_hosts, 'rb') as f:
            before = f.read()
        for policy in ('reject', 'accept-new'):
            self.write_source('host', **self.server.source_keys(
                self.known_hosts, ssh_host_key_policy=policy))
            result = self.crcache('acquire', '-s', 'host', expect=None)
            self.assertOneLineError(
                result, "'host'", f'127.0.0.1:{self.server.port}',
                'HOST KEY CHANGED',
                fingerprint(self.server.host_key + '.pub'))
            with open(self.known_hosts, 'rb') as f:
                self.assertEqual(before, f.read(), policy)
        self.assertEqual(0, self.status('host')['host']['in-use'])


class TestConnectionErrors(SSHTestCase):
    """One line naming the source, host and port, and the cause."""

    def test_wrong_key(self) -> None:
        key = os.path.join(self.home, 'stranger_ed25519')
        public = sshd.keygen(key)
        self.write_source('host', **self.server.source_keys(
            self.known_hosts, ssh_key=key))
        result = self.crcache('acquire', '-s', 'host', expect=None)
        self.assertOneLineError(
            result, "'host'", f'127.0.0.1:{self.server.port}',
            'authentication failed', key)
        with open(key) as f:
            secret = [line for line in f.read().splitlines()
                      if line and not line.startswith('-----')]
        for line in secret + [public.split()[1]]:
            self.assertNotIn(line, result.stderr)
            self.assertNotIn(line, result.stdout)

    def test_missing_key_file(self) -> None:
        key = os.path.join(self.home, 'no_such_key')
        self.write_source('host', **self.server.source_keys(
            self.known_hosts, ssh_key=key))
        # -q: under load a progress line may come first.
        result = self.crcache('-q', 'acquire', '-s', 'host', expect=None)
        self.assertOneLineError(result, "'host'", key, 'no such file')

    def _unreachable(self, **keys: object) -> base.Result:
        self.write_source('host', **self.server.source_keys(
            self.known_hosts, ssh_connect_timeout=2, **keys))
        started = time.monotonic()
        # -q: a slow connection attempt also prints a progress line
        # (test_progress); here only the error counts.
        result = self.crcache('-q', 'acquire', '-s', 'host', expect=None,
                              timeout=30)
        self.assertLess(time.monotonic() - started, 15, str(result))
        return result

    def test_silent_server_times_out(self) -> None:
        # Something listens but never speaks ssh (a hung or overloaded
        # host): the connect timeout applies to the ssh handshake too.
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(('127.0.0.1', 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = self._unreachable(ssh_port=port)
        self.assertOneLineError(result, "'host'", f'127.0.0.1:{port}',
                                'timed out')

    def test_connection_refused(self) -> None:
        port = sshd.free_port()
        result = self._unreachable(ssh_port=port)
        self.assertOneLineError(result, "'host'", f'127.0.0.1:{port}',
                                'connection refused')

    def test_unresolvable_host(self) -> None:
        result = self._unreachable(ssh_host='nosuchhost.invalid')
        self.assertOneLineError(
            result, "'host'", f'nosuchhost.invalid:{self.server.port}',
            'cannot resolve')


class TestPool(SSHTestCase):
    """A pool over three hosts (three servers on three ports)."""

    def test_acquire_three_and_run_on_each(self) -> None:
        servers = [self.server] + [self.useFixture(sshd.SSHServer())
                                   for _ in range(2)]
        self.write_known_hosts(*servers)
        for i, server in enumerate(servers):
            self.write_source(f'h{i}',
                              **server.source_keys(self.known_hosts))
        self.write_source('pool', type='pool', sources='h0,h1,h2')
        names = self.crcache('acquire', '-s', 'pool', '-n', '3'
                             ).stdout.split()
        self.assertEqual(3, len(set(names)), names)
        reached = []
        for name in names:
            # "client address, client port, server address, server port"
            out = self.run_on(name, 'echo $SSH_CONNECTION').stdout
            reached.append(int(out.split()[3]))
        self.assertEqual(sorted(s.port for s in servers), sorted(reached))
        status = self.status('pool', 'h0', 'h1', 'h2')
        self.assertEqual([3, 1, 1, 1], [status[s]['in-use'] for s in
                                        ('pool', 'h0', 'h1', 'h2')])
        self.crcache('release', *names)
        status = self.status('pool', 'h0', 'h1', 'h2')
        self.assertEqual([0, 0, 0, 0], [status[s]['in-use'] for s in
                                        ('pool', 'h0', 'h1', 'h2')])


class TestSSHConfig(SSHTestCase):

    def test_host_alias_from_ssh_config(self) -> None:
        os.mkdir(os.path.join(self.home, '.ssh'), 0o700)
        with open(os.path.join(self.home, '.ssh', 'config'), 'w') as f:
            f.write(f'Host myalias\n'
                    f'    HostName 127.0.0.1\n'
                    f'    Port {self.server.port}\n'
                    f'    User {self.server.user}\n'
                    f'    IdentityFile {self.server.client_key}\n')
        self.write_source('alias', type='ssh', ssh_host='myalias',
                          ssh_known_hosts=self.known_hosts)
        name = self.acquire('alias')
        out = self.run_on(name, 'whoami; echo $SSH_CONNECTION').stdout
        user, connection = out.splitlines()
        self.assertEqual(self.server.user, user)
        self.assertEqual(str(self.server.port), connection.split()[3])


class TestConnectionHolder(SSHTestCase):
    """Later commands reuse one connection; a lost holder costs nothing."""

    def _connection(self, name: str) -> str:
        return self.run_on(name, 'echo $SSH_CONNECTION').stdout.strip()

    def test_later_runs_reuse_one_connection(self) -> None:
        name = self.acquire()
        self.run_on(name, 'true')
        self.wait_for(self.holder_sockets, what='a holder socket')
        before = self.server.accepted_logins()
        connections = {self._connection(name) for _ in range(5)}
        self.assertEqual(1, len(connections), connections)
        self.assertLessEqual(self.server.accepted_logins() - before, 1)
        sockets = self.holder_sockets()
        self.assertEqual(1, len(sockets), sockets)
        self.assertEqual(0, _mode(sockets[0]) & 0o077)  # private
        self.assertEqual(0o700, _mode(os.path.dirname(sockets[0])))

    def test_concurrent_commands_share_it(self) -> None:
        name = self.acquire()
        self.wait_for(self.holder_sockets, what='a holder socket')
        self.run_on(name, 'true')
        before = self.server.accepted_logins()
        started = time.monotonic()
        procs = [self.start('run', name,
                            f'sleep 1; echo {i} $SSH_CONNECTION')
                 for i in range(8)]
        outputs = [(proc.wait(timeout=30), proc.stdout.read().decode())
                   for proc in procs]
        self.assertLess(time.monotonic() - started, 6)  # side by side
        self.assertEqual([0] * 8, [status for status, _ in outputs])
        self.assertEqual([str(i) for i in range(8)],
                         [out.split()[0] for _, out in outputs])
        connections = {tuple(out.split()[1:]) for _, out in outputs}
        self.assertEqual(1, len(connections), connections)
        self.assertLessEqual(self.server.accepted_logins() - before, 1)

    def test_persist_zero_connects_every_time(self) -> None:
        self.write_source('host', **self.server.source_keys(
            self.known_hosts, ssh_persist=0))
        name = self.acquire()
        before = self.server.accepted_logins()
        for _ in range(3):
            self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)
        self.assertEqual(3, self.server.accepted_logins() - before)
        self.assertEqual([], self.holder_sockets())
        self.assertEqual([], self.holder_pids())

    def test_idle_holder_exits(self) -> None:
        self.write_source('host', **self.server.source_keys(
            self.known_hosts, ssh_persist=1))
        name = self.acquire()
        self.wait_for(self.holder_sockets, what='a holder socket')
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)
        self.wait_for(lambda: not self.holder_sockets()
                      and not self.holder_pids(), 8,
                      'the idle holder to go')
        self.assertEqual('again\n', self.run_on(name, 'echo again').stdout)

    def test_killed_holder_leaves_a_stale_socket(self) -> None:
        name = self.acquire()
        self.run_on(name, 'true')
        # (A holder that lost the race to bind the socket exits at once.)
        self.wait_for(lambda: len(self.holder_pids()) == 1,
                      what='one holder')
        self.wait_for(self.holder_sockets, what='a holder socket')
        [pid] = self.holder_pids()
        os.kill(pid, signal.SIGKILL)
        self.wait_for(lambda: not sshd.alive(pid), what='the holder to die')
        self.assertEqual(1, len(self.holder_sockets()))  # stale
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)
        # A new holder takes the stale socket's place.
        self.wait_for(lambda: self.holder_pids() not in ([], [pid]),
                      what='a new holder')
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)

    def test_restarted_server(self) -> None:
        name = self.acquire()
        self.run_on(name, 'true')
        self.wait_for(self.holder_sockets, what='a holder socket')
        old = self._connection(name)  # through the holder
        self.server.stop()
        self.server.start()
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)
        new = self._connection(name)
        self.assertNotEqual(old, new)
        self.assertEqual(str(self.server.port), new.split()[3])

    # -- as careful as the agent ---------------------------------------------

    def _one_holder(self, **keys: object) -> tuple[str, str, int]:
        """Acquire ``host`` (its settings changed by ``keys``) and run on
        it until one holder serves it: (instance, socket, holder pid)."""
        if keys:
            self.write_source('host', **self.server.source_keys(
                self.known_hosts, **keys))
        name = self.acquire()
        seen: list = []

        def one_holder() -> bool:
            # Holders started by earlier commands may still be leaving.
            seen[:] = [self.holder_pids(), self.holder_sockets()]
            return len(seen[0]) == 1 and len(seen[1]) == 1

        self.wait_for(one_holder, what='one holder')
        [pid], [path] = seen
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)
        return name, path, pid

    def test_settings_are_not_on_the_command_line(self) -> None:
        # /proc/PID/cmdline is readable by every local user (ps shows it).
        self.write_source('host', **self.server.source_keys(
            self.known_hosts, ssh_persist=37))
        _, path, pid = self._one_holder()
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            argv = f.read().decode().split('\0')[:-1]
        self.assertEqual(['-m', 'crcache.sources.ssh.holder', path, '37.0'],
                         argv[1:], argv)
        words = ' '.join(argv)
        for secret in (self.server.client_key, self.known_hosts,
                       os.path.join(self.home, '.ssh', 'config'),
                       '127.0.0.1', f'{self.server.user}@', 'host_key'):
            self.assertNotIn(secret, words)
        for secret in (str(self.server.port), self.server.user, 'host'):
            self.assertNotIn(secret, argv)
        # Nor anything left beside the socket for others to find.
        self.assertEqual([], [n for n in os.listdir(os.path.dirname(path))
                              if not n.endswith(('.sock', '.lock', '.log'))])

    def test_silent_client_does_not_keep_it_up(self) -> None:
        _, path, pid = self._one_holder(ssh_persist=2)
        last_used = time.monotonic()
        silent = hostile.raw_connect(path)
        self.addCleanup(silent.close)
        dribbler = hostile.raw_connect(path)
        self.addCleanup(dribbler.close)
        dribbler.send(b'\0\0')  # half a length, then nothing more
        self.wait_for(lambda: not sshd.alive(pid), 2 + 4,
                      'the idle holder to go despite idle clients')
        self.assertLess(time.monotonic() - last_used, 2 + 4)
        self.assertTrue(hostile.hung_up_on(silent, 1))
        self.assertTrue(hostile.hung_up_on(dribbler, 1))

    def test_silent_client_is_dropped_at_the_request_deadline(self) -> None:
        name, path, pid = self._one_holder()
        connections = self._connection(name)
        connected = time.monotonic()
        silent = hostile.raw_connect(path)
        self.addCleanup(silent.close)
        self.assertTrue(hostile.hung_up_on(silent, 15))
        self.assertLess(time.monotonic() - connected, 5 + 3)
        self.assertEqual([pid], self.holder_pids())
        self.assertEqual(connections, self._connection(name))

    def test_stuck_holder_is_given_up_on_and_runs_nothing(self) -> None:
        name, path, pid = self._one_holder(ssh_connect_timeout=1)
        counter = os.path.join(self.home, 'counter')
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        started = time.monotonic()
        result = self.run_on(name, f'echo once >> {counter}', timeout=60)
        self.assertLess(time.monotonic() - started, 1 + 5 + 5)
        self.assertEqual(
            'crcache: the ssh connection holder for '
            f'{self.server.user}@127.0.0.1:{self.server.port} did not '
            'answer within 6s; connecting directly\n', result.stderr)
        os.kill(pid, signal.SIGCONT)
        # Awake, it finds a request whose client hung up: it runs nothing
        # (the command ran once, directly) and serves the next ones.
        connection = self._connection(name)
        self.assertEqual(connection, self._connection(name))
        # The direct run started a holder of its own, which finds the
        # socket served and leaves.
        self.wait_for(lambda: self.holder_pids() == [pid], 10,
                      'only the first holder to be left')
        with open(counter) as f:
            self.assertEqual('once\n', f.read())

    def test_malformed_requests_are_refused_and_leak_nothing(self) -> None:
        from crcache.daemons import messages
        name, path, pid = self._one_holder()
        marker = os.path.join(self.home, 'ran')
        exec_it = ('exec', f'touch {marker}')
        good, fds = framed(exec_it), framed(('fds',))
        null = os.open(os.devnull, os.O_RDWR)
        self.addCleanup(os.close, null)
        three, one, five = [null] * 3, [null], [null] * 5
        # What goes wrong with the request itself (descriptors sent along
        # must not stay open in the holder) ...
        first = {
            'not marshal data': (hostile.frame(b'\xffnot marshal'), three),
            'not a tuple': (framed(42), three),
            'unknown request': (framed(('format', '/')), three),
            'command not text': (framed(('exec', ['touch', marker])), three),
            'too many fields': (framed(exec_it + ('more',)), three),
            'empty message': (hostile.frame(b''), three),
            'length past the data, then hang-up': (
                hostile.frame(good[4:], 1000), three),
            'length over the limit': (hostile.frame(b'x', 1 << 30), three),
            'descriptors and one byte, then hang-up': (b'\0', three),
            'descriptors with the request': (good, three),
            'ping with descriptors': (framed(('ping',)), three),
            'bytes after the request': (good + b'xx', None),
        }
        # ... and with the descriptors, once the holder said "ready".
        second = {
            'one descriptor': (fds, one),
            'five descriptors': (fds, five),
            'no descriptors': (fds, None),
            'another message': (framed(('files',)), three),
            'bytes after the descriptors': (fds + b'xx', three),
            'hang-up instead': (b'', None),
            'length past the data, then hang-up': (
                hostile.frame(fds[4:], 100), three),
        }
        cases = [(False, label, case) for label, case in first.items()]
        cases += [(True, label, case) for label, case in second.items()]
        before = hostile.settled_fd_count(pid)
        for after_ready, label, (data, attached) in cases:
            sock = hostile.raw_connect(path)
            try:
                if after_ready:
                    hostile.send_raw(sock, good)
                    self.assertEqual(('ready',),
                                     messages.receive_message(sock)[0])
                if data:
                    hostile.send_raw(sock, data, attached)
                sock.shutdown(socket.SHUT_WR)
                self.assertTrue(hostile.hung_up_on(sock, 10), label)
            finally:
                sock.close()
        self.wait_for(lambda: hostile.fd_count(pid) == before, 5,
                      f'the holder to be back at {before} descriptors, '
                      f'not {hostile.fd_count(pid)}')
        self.assertFalse(os.path.exists(marker))
        self.assertEqual([pid], self.holder_pids())
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)
        # Well formed, the same request runs: the cases above were
        # refused for what is wrong with them.
        sock = hostile.raw_connect(path)
        self.addCleanup(sock.close)
        hostile.send_raw(sock, good)
        self.assertEqual(('ready',), messages.receive_message(sock)[0])
        hostile.send_raw(sock, fds, three)
        self.assertEqual(('started',), messages.receive_message(sock)[0])
        self.assertEqual(('exit', 0), messages.receive_message(sock)[0])
        self.assertTrue(os.path.exists(marker))
        self.wait_for(lambda: hostile.fd_count(pid) == before, 5,
                      'the holder to close the last request\'s descriptors')


def framed(message: object) -> bytes:
    """``message`` as crcache's daemons frame it."""
    return hostile.frame(marshal.dumps(message))


class TestLargeStream(SSHTestCase):
    """600 MiB through one command: past paramiko's 512 MiB rekey limit."""

    SIZE = 600 << 20

    def test_600_mib_down(self) -> None:
        name = self.acquire()
        # Counted by wc in a pipe: the test process never holds the data.
        proc = subprocess.run(
            ['bash', '-c', 'set -o pipefail; "$0" run "$1" "$2" | wc -c',
             base.CRCACHE, name, f'head -c {self.SIZE} /dev/zero'],
            env=self.env, cwd=self.project, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=300)
        self.assertEqual((0, f'{self.SIZE}\n', ''),
                         (proc.returncode, proc.stdout.lstrip(),
                          proc.stderr))

    def test_600_mib_up(self) -> None:
        name = self.acquire()
        proc = subprocess.run(
            ['bash', '-c', 'set -o pipefail; head -c "$2" /dev/zero | '
             '"$0" run "$1" "wc -c"', base.CRCACHE, name, str(self.SIZE)],
            env=self.env, cwd=self.project, capture_output=True,
            text=True, timeout=300)
        self.assertEqual((0, f'{self.SIZE}\n', ''),
                         (proc.returncode, proc.stdout.lstrip(),
                          proc.stderr))
