"""A real OpenSSH server on a loopback port, for the ssh source's tests.

Each fixture has its own throwaway host key, client key, authorized_keys
and known_hosts in a temporary directory, runs ``/usr/sbin/sshd -D -e``
in the foreground and stops it by pid. Nothing touches the real
``~/.ssh``, and no account has to be prepared: the server logs in as
whoever runs the tests (as ``CRCACHE_TEST_SSH_USER`` if set), through
that user's own login shell and rc files (root's bash sources
``~/.bashrc``), or as a ``user`` a test makes itself (see
:class:`LoginUser`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import fixtures

SSHD = '/usr/sbin/sshd'


def login_user() -> str:
    """The account the test servers accept logins for by default."""
    return os.environ.get('CRCACHE_TEST_SSH_USER') or getpass.getuser()


class LoginUser(fixtures.Fixture):
    """An unprivileged account with ``shell`` to log in as, when root.

    Made with ``useradd`` (a home of its own, password ``*``: no password
    login, but not a locked account, which sshd refuses without PAM) and
    removed afterwards. Not root, it is whoever runs the tests: ``name``
    is the account to log in as either way, ``made`` says which.
    """

    def __init__(self, shell: str = '/bin/sh') -> None:
        super().__init__()
        self.shell = shell

    def _setUp(self) -> None:
        self.made = os.geteuid() == 0
        if not self.made:
            self.name = getpass.getuser()
            return
        self.name = f'crct{uuid.uuid4().hex[:10]}'
        parent = tempfile.mkdtemp(prefix='crcache-login.')
        os.chmod(parent, 0o755)
        self.addCleanup(subprocess.run, ['rm', '-rf', parent])
        self.home = os.path.join(parent, self.name)
        _retry(['useradd', '--create-home', '--home-dir', self.home,
                '--shell', self.shell, '--password', '*', '--user-group',
                '--comment', 'crcache test login', self.name],
               f'useradd {self.name}')
        self.addCleanup(self._remove)

    def _remove(self) -> None:
        # Whatever the tests left running as the user would stop userdel
        # (and would be a test's failure to clean up, reported there).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc = subprocess.run(['userdel', self.name],
                                  capture_output=True)
            if proc.returncode in (0, 6):  # done, or no such user
                return
            time.sleep(0.1)


def _retry(argv: list[str], what: str) -> None:
    """Run ``argv`` until it succeeds (other tests may hold the passwd
    lock)."""
    for attempt in range(100):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f'{what} failed: {proc.stderr.strip()}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def keygen(path: str) -> str:
    """Make an ed25519 key pair at ``path``; return the public key line."""
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                    'crcache-test', '-f', path], check=True)
    with open(path + '.pub') as f:
        return f.read().strip()


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


class SSHServer(fixtures.Fixture):
    """An sshd on 127.0.0.1:<port> accepting ``client_key`` for ``user``
    (by default :func:`login_user`)."""

    def __init__(self, extra_config: str = '',
                 user: str | None = None) -> None:
        super().__init__()
        self.extra_config = extra_config
        self.user = user or login_user()

    def _setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix='crcache-sshd.')
        self.addCleanup(subprocess.run, ['rm', '-rf', self.dir])
        # The login user reads authorized_keys from here.
        os.chmod(self.dir, 0o755)
        self.host_key = os.path.join(self.dir, 'host_ed25519')
        self.host_public = keygen(self.host_key)
        self.client_key = os.path.join(self.dir, 'client_ed25519')
        client_public = keygen(self.client_key)
        self.authorized_keys = os.path.join(self.dir, 'authorized_keys')
        with open(self.authorized_keys, 'w') as f:
            f.write(client_public + '\n')
        os.chmod(self.authorized_keys, 0o644)
        self.log = os.path.join(self.dir, 'sshd.log')
        if os.geteuid() == 0:
            os.makedirs('/run/sshd', mode=0o755, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.start()
        self.addCleanup(self.stop)

    def _write_config(self) -> str:
        config = os.path.join(self.dir, 'sshd_config')
        with open(config, 'w') as f:
            f.write(f'''\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
AuthorizedKeysFile {self.authorized_keys}
PidFile {self.dir}/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
Subsystem sftp internal-sftp
LogLevel VERBOSE
MaxStartups 100
MaxSessions 50
{self.extra_config}
''')
        return config

    def start(self) -> None:
        """Start (or restart) the server, on a new port the first time."""
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            config = self._write_config()
            log = open(self.log, 'ab')
            self.proc = subprocess.Popen(
                [SSHD, '-D', '-e', '-f', config], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
            log.close()
            if self._wait_listening():
                return
            self.stop()
            self.port = 0  # taken meanwhile: try another
        raise RuntimeError(f'sshd did not start; see {self.log}: '
                           + open(self.log).read()[-2000:])

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(('127.0.0.1', self.port), 1):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def sessions(self) -> list[int]:
        """Pids of the server's per-connection processes."""
        if self.proc is None:
            return []
        from crcache.tests.functional import base
        return base.children(self.proc.pid)

    def stop(self) -> None:
        """Stop the server and drop its connections, as a host going down.

        Stopping sshd alone leaves the connections it accepted open.
        """
        if self.proc is not None and self.proc.poll() is None:
            sessions = self.sessions()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while sessions and time.monotonic() < deadline:
                sessions = [pid for pid in sessions if alive(pid)]
                time.sleep(0.02)
        self.proc = None

    def known_hosts_line(self) -> str:
        """This server's entry for a known_hosts file."""
        return f'[127.0.0.1]:{self.port} {self.host_public}'

    def accepted_logins(self) -> int:
        """How many logins the server has accepted so far."""
        with open(self.log, errors='replace') as f:
            return f.read().count('Accepted publickey')

    def source_keys(self, known_hosts: str, **overrides: object) -> dict:
        """source.conf keys for an ssh source reaching this server."""
        keys = {
            'type': 'ssh',
            'ssh_host': '127.0.0.1',
            'ssh_port': self.port,
            'ssh_user': self.user,
            'ssh_key': self.client_key,
            'ssh_known_hosts': known_hosts,
        }
        keys.update(overrides)
        return {k: v for k, v in keys.items() if v is not None}
