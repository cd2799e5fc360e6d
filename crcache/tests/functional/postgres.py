"""A real PostgreSQL server for the shared-store tests.

Each fixture makes a cluster of its own with ``initdb`` in a temporary
directory (as the unprivileged ``postgres`` user when the tests run as
root, since initdb refuses root; as the user running the tests
otherwise), starts it with ``pg_ctl`` on a private unix socket directory
and a free loopback port (plus any addresses the test asks for), creates
a role and a database named ``crcache``, and stops it by ``pg_ctl stop``
in its cleanup, pass or fail. Logins are trusted: the server listens
only on addresses the test chose.

Making a cluster takes seconds, so tests that do not stop or restart
their server take a :class:`Database` instead: a database of their own
(dropped after the test) on one server per test process, which
:func:`shared_server` starts on first use and stops when the process
exits.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid

import fixtures
import testtools

from crcache.tests.functional import sshd

PACKAGE = 'postgresql'
ROLE = 'crcache'
DATABASE = 'crcache'


def bin_dir() -> str | None:
    """Where Debian's newest PostgreSQL programs are, if installed."""
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'),
                   key=lambda p: int(p.split('/')[4]))
    return os.path.dirname(found[-1]) if found else None


def require(test: testtools.TestCase) -> str:
    """The bin directory; skips (or, under CI=true, fails) without one."""
    found = bin_dir()
    if found is None:
        message = ('PostgreSQL is not installed (Debian package '
                   f'{PACKAGE})')
        if os.environ.get('CI') == 'true':
            test.fail(message + ': CI must install it')
        test.skipTest(message)
    return found


class PostgresServer(fixtures.Fixture):
    """A private PostgreSQL cluster; see the module docstring.

    ``addresses`` are extra addresses to listen on and ``networks``
    (CIDR) the clients to trust besides loopback (for tests with network
    namespaces).
    """

    def __init__(self, bin_path: str, addresses: tuple[str, ...] = (),
                 networks: tuple[str, ...] = (),
                 settings: dict[str, str] | None = None) -> None:
        super().__init__()
        self.bin = bin_path
        self.addresses = addresses
        self.networks = networks
        #: Server settings (``-c name=value``) besides the fixture's own.
        self.settings = settings or {}

    def _setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix='crcache-pg.')
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, 'data')
        self.sockets = os.path.join(self.dir, 'run')
        os.mkdir(self.sockets)
        self.log = os.path.join(self.dir, 'postgres.log')
        self.owner = None
        if os.geteuid() == 0:
            self.owner = pwd.getpwnam('postgres')
            for path in (self.dir, self.sockets):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self._as_owner([os.path.join(self.bin, 'initdb'), '-D', self.data,
                        '-U', 'postgres', '-A', 'trust', '-E', 'UTF8',
                        '--no-locale', '-N'])
        with open(os.path.join(self.data, 'pg_hba.conf'), 'a') as f:
            for network in self.networks:
                f.write(f'host all all {network} trust\n')
        self.port = sshd.free_port()
        self.start()
        self.addCleanup(self.stop)
        self.psql(f'CREATE ROLE {ROLE} LOGIN')
        self.psql(f'CREATE DATABASE {DATABASE} OWNER {ROLE}')

    def _as_owner(self, argv: list[str], check: bool = True
                  ) -> subprocess.CompletedProcess:
        if self.owner is not None:
            argv = ['runuser', '-u', 'postgres', '--', *argv]
        return subprocess.run(argv, capture_output=True, text=True,
                              check=check, stdin=subprocess.DEVNULL,
                              cwd=self.dir)

    def start(self) -> None:
        """Start the server (again, on the same port)."""
        listen = ','.join(('127.0.0.1',) + self.addresses)
        result = self._as_owner(
            [os.path.join(self.bin, 'pg_ctl'), '-D', self.data, '-l',
             self.log, '-w', '-t', '30', '-o',
             f"-k {self.sockets} -p {self.port} "
             f"-c listen_addresses='{listen}' -c fsync=off"
             + ''.join(f' -c {name}={value}'
                       for name, value in self.settings.items()),
             'start'], check=False)
        if result.returncode:
            with open(self.log, errors='replace') as f:
                raise RuntimeError(f'PostgreSQL did not start: '
                                   f'{result.stderr}{f.read()[-2000:]}')

    def stop(self) -> None:
        """Stop the server at once (connections are dropped)."""
        self._as_owner([os.path.join(self.bin, 'pg_ctl'), '-D', self.data,
                        '-m', 'fast', '-w', 'stop'], check=False)

    def restart(self, down: float = 0.0) -> None:
        """Stop, stay down ``down`` seconds, start again."""
        self.stop()
        time.sleep(down)
        self.start()

    def psql(self, sql: str, database: str = 'postgres',
             user: str = 'postgres') -> str:
        """Run ``sql`` as ``user``; return what psql printed."""
        result = subprocess.run(
            [os.path.join(self.bin, 'psql'), '-X', '-q', '-A', '-t',
             '-h', self.sockets, '-p', str(self.port), '-U', user,
             '-d', database, '-c', sql], capture_output=True, text=True,
            stdin=subprocess.DEVNULL)
        if result.returncode:
            raise RuntimeError(f'psql {sql!r}: {result.stderr.strip()}')
        return result.stdout

    @property
    def tcp_url(self) -> str:
        """The crcache database over loopback TCP."""
        return f'postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}'

    @property
    def socket_url(self) -> str:
        """The crcache database over the unix socket."""
        return (f'postgresql://{ROLE}@/{DATABASE}?host={self.sockets}'
                f'&port={self.port}')

    def url_at(self, address: str) -> str:
        """The crcache database at another address it listens on."""
        return f'postgresql://{ROLE}@{address}:{self.port}/{DATABASE}'


_SHARED: PostgresServer | None = None


def shared_server(test: testtools.TestCase) -> PostgresServer:
    """This process's PostgreSQL server, started on first use."""
    global _SHARED
    if _SHARED is None:
        server = PostgresServer(require(test))
        server.setUp()
        # Stopped with the test process (its runner's workers end when
        # the run does), pass or fail.
        atexit.register(server.cleanUp)
        _SHARED = server
    return _SHARED


class Database(fixtures.Fixture):
    """A database of its own, owned by ``crcache``, on the process's
    shared server (see :func:`shared_server`), dropped after the test.

    Has the URLs and ``psql`` of :class:`PostgresServer`, for that
    database; a test that stops or restarts its server needs a
    :class:`PostgresServer` of its own instead.
    """

    def __init__(self, test: testtools.TestCase) -> None:
        super().__init__()
        self.server = shared_server(test)
        self.database = f'crcache_{uuid.uuid4().hex[:12]}'

    def _setUp(self) -> None:
        self.server.psql(f'CREATE DATABASE {self.database} OWNER {ROLE}')
        self.addCleanup(self.server.psql, f'DROP DATABASE IF EXISTS '
                        f'{self.database} WITH (FORCE)')

    @property
    def port(self) -> int:
        return self.server.port

    def psql(self, sql: str, user: str = ROLE) -> str:
        """Run ``sql`` in this database as ``user``."""
        return self.server.psql(sql, self.database, user)

    @property
    def tcp_url(self) -> str:
        return (f'postgresql://{ROLE}@127.0.0.1:{self.server.port}/'
                f'{self.database}')

    @property
    def socket_url(self) -> str:
        return (f'postgresql://{ROLE}@/{self.database}?host='
                f'{self.server.sockets}&port={self.server.port}')
