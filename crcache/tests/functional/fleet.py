"""Several "machines" on one: hosts for tests of a fleet shared by many.

A :class:`Lab` makes hosts that crcache must take for different
machines. Each has its own host name (a UTS namespace), its own machine
id (a file bind-mounted over ``/etc/machine-id`` in a private mount
namespace: crcache knows a host by both), its own home directory and its
own address:

* run as root (with ``ip`` from iproute2), each host is a network
  namespace with an address on a private /24 behind a bridge the lab
  creates, which exists only on this machine (``mode == 'netns'``);
* run as an ordinary user, who cannot link network namespaces, each host
  gets its own loopback address (all of 127.0.0.0/8 is this machine's)
  and a user namespace gives it its name and machine id
  (``mode == 'loopback'``). ``CRCACHE_TEST_FLEET_MODE`` forces a mode.

A host runs a command through :meth:`Host.wrap`, in fresh UTS and mount
namespaces (and its network namespace) set up as that host: every
process of one host sees the same name, machine id and addresses, as on
a real machine. Hosts share the file system, /tmp and pids with the
test, as the namespaced hosts of TEST-HOSTS.md do.

Everything a host runs carries ``CRCACHE_FLEET_RUN=<token>`` in its
environment (:class:`FleetSSHServer` passes it on to remote commands
with sshd's ``SetEnv``), so the lab's cleanup finds every process the
test started wherever it ended up (clients, agents, connection holders,
hooks, remote commands) and kills it by pid, pass or fail; then the
namespaces, veths and bridge go. Every name carries a token unique to
the run, so two runs never collide.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import fixtures
import testtools

from crcache.tests.functional import sshd

#: Marks every process a lab's hosts run (see the module docstring).
RUN_ENV = 'CRCACHE_FLEET_RUN'
#: Forces a mode: ``netns`` or ``loopback``.
MODE_ENV = 'CRCACHE_TEST_FLEET_MODE'
MODES = ('netns', 'loopback')
#: Run inside a host's namespaces: take its name and machine id, then
#: become the command. ``$3``/``$4``, when given, are the uid and gid to
#: map back to (an ordinary user's namespaces are entered as root).
_ENTER = '''
hostname "$1" || exit 125
if [ -e /etc/machine-id ]; then
    mount --bind "$2" /etc/machine-id || exit 125
fi
if [ "$3" = - ]; then
    shift 4
    exec "$@"
fi
uid=$3 gid=$4
shift 4
exec unshare --map-user="$uid" --map-group="$gid" -- "$@"
'''


def default_mode() -> str:
    """The mode this user can have: netns for root, else loopback."""
    forced = os.environ.get(MODE_ENV)
    if forced:
        if forced not in MODES:
            raise ValueError(f'{MODE_ENV}={forced}: expected one of '
                             f'{", ".join(MODES)}')
        return forced
    if os.geteuid() == 0 and shutil.which('ip'):
        return 'netns'
    return 'loopback'


def _run(argv: list[str], check: bool = True
         ) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode:
        raise RuntimeError(f'{" ".join(argv)} failed: '
                           f'{result.stderr.strip()}')
    return result


def tagged(token: str) -> list[int]:
    """Pids of live processes carrying the run's mark."""
    needle = f'{RUN_ENV}={token}'.encode()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f'/proc/{entry}/environ', 'rb') as f:
                if needle not in f.read().split(b'\0'):
                    continue
        except OSError:
            continue
        if sshd.alive(int(entry)):
            found.append(int(entry))
    return found


class Host:
    """One "machine": its name, machine id, address and home."""

    def __init__(self, lab: 'Lab', name: str, index: int) -> None:
        self.lab = lab
        self.name = name
        self.address = lab.address(index)
        self.netns = (f'crcache-{lab.token}-{name}' if lab.mode == 'netns'
                      else None)
        #: The root-side end of its veth pair (netns mode).
        self.veth = f'cr{lab.token}h{index}'
        self.dir = os.path.join(lab.dir, 'hosts', name)
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.machine_id = secrets.token_hex(16)
        self.machine_id_file = os.path.join(self.dir, 'machine-id')
        with open(self.machine_id_file, 'w') as f:
            f.write(self.machine_id + '\n')
        os.chmod(self.machine_id_file, 0o444)
        self.home = os.path.join(self.dir, 'home')
        self.config_root = os.path.join(self.home, '.config', 'crcache')
        os.makedirs(self.config_root)
        runtime = os.path.join(self.home, 'run')
        os.mkdir(runtime, 0o700)
        self.env = {
            'PATH': os.path.dirname(sys.executable) + os.pathsep
            + os.environ.get('PATH', '/usr/bin:/bin'),
            'HOME': self.home,
            'XDG_CONFIG_HOME': os.path.join(self.home, '.config'),
            'XDG_CACHE_HOME': os.path.join(self.home, '.cache'),
            'XDG_RUNTIME_DIR': runtime,
            'CRCACHE_AGENT_IDLE': '15',
            'LANG': 'C.UTF-8',
            'USER': os.environ.get('USER') or sshd.login_user(),
            RUN_ENV: lab.token,
        }

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` as this host runs it."""
        if os.geteuid() == 0:
            prefix = ['unshare', '--uts', '--mount']
            ids = ['-', '-']
        else:
            prefix = ['unshare', '--map-root-user', '--uts', '--mount']
            ids = [str(os.getuid()), str(os.getgid())]
        if self.netns:
            prefix = ['ip', 'netns', 'exec', self.netns] + prefix
        return prefix + ['sh', '-c', _ENTER, 'enter', self.name,
                         self.machine_id_file, *ids, *argv]

    def popen(self, argv: list[str], env: dict[str, str] | None = None,
              **kwargs: object) -> subprocess.Popen:
        """Start ``argv`` on this host, in its environment."""
        kwargs.setdefault('stdin', subprocess.DEVNULL)
        return subprocess.Popen(self.wrap(argv), env=dict(self.env,
                                                          **(env or {})),
                                cwd=self.home, **kwargs)

    def run(self, argv: list[str], timeout: float = 120,
            **kwargs: object) -> subprocess.CompletedProcess:
        """Run ``argv`` on this host; its output as text."""
        proc = self.popen(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise RuntimeError(f'{argv} on {self.name} took more than '
                               f'{timeout}s: {err}')
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class Lab(fixtures.Fixture):
    """Hosts on a network of their own; see the module docstring."""

    def __init__(self, mode: str | None = None) -> None:
        super().__init__()
        self.mode = mode or default_mode()

    def _setUp(self) -> None:
        # Short: interface names have at most 15 characters.
        self.token = secrets.token_hex(3)
        self.hosts: list[Host] = []
        self.dir = tempfile.mkdtemp(prefix=f'crcache-fleet-{self.token}.')
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.chmod(self.dir, 0o755)
        # Registered first, so it runs last: after every fixture that
        # depends on the lab (servers, clients) is gone.
        self.addCleanup(self._teardown)
        if self.mode == 'netns':
            self._make_bridge()
        else:
            self._pick_loopback()

    # -- addresses ---------------------------------------------------------

    def _used_networks(self) -> list[ipaddress.IPv4Network]:
        out = _run(['ip', '-4', '-o', 'addr', 'show']).stdout
        out += _run(['ip', '-4', 'route', 'show', 'table', 'all']).stdout
        found = []
        for word in out.split():
            with contextlib.suppress(ValueError):
                if '/' in word:
                    found.append(ipaddress.ip_network(word, strict=False))
        return found

    def _make_bridge(self) -> None:
        used = self._used_networks()
        for _ in range(100):
            network = ipaddress.ip_network(
                f'10.{random.randint(200, 254)}.{random.randint(0, 255)}'
                '.0/24')
            if not any(network.overlaps(n) for n in used
                       if n.prefixlen > 0):
                break
        else:
            raise RuntimeError('no free private /24 for the lab')
        self.network = network
        self.bridge = f'cr{self.token}br'
        _run(['ip', 'link', 'add', self.bridge, 'type', 'bridge'])
        self._bridge_made = True
        _run(['ip', 'addr', 'add', f'{self.address(1)}/24', 'dev',
              self.bridge])
        _run(['ip', 'link', 'set', self.bridge, 'up'])

    def _pick_loopback(self) -> None:
        self.network = ipaddress.ip_network(
            f'127.{random.randint(100, 254)}.{random.randint(0, 255)}.0/24')
        self.bridge = None

    def address(self, index: int) -> str:
        """The lab's ``index``-th address (1: the database's)."""
        return str(self.network.network_address + index)

    @property
    def db_address(self) -> str:
        """Where the test's servers on "this" machine listen."""
        return self.address(1)

    # -- hosts -------------------------------------------------------------

    def add_host(self, name: str) -> Host:
        """A new host called ``name`` (its host name too)."""
        host = Host(self, name, len(self.hosts) + 2)
        self.hosts.append(host)
        if host.netns:
            netns = host.netns
            _run(['ip', 'netns', 'add', netns])
            _run(['ip', 'link', 'add', host.veth, 'type', 'veth', 'peer',
                  'name', 'eth0', 'netns', netns])
            _run(['ip', 'link', 'set', host.veth, 'master', self.bridge,
                  'up'])
            _run(['ip', '-n', netns, 'addr', 'add',
                  f'{host.address}/{self.network.prefixlen}', 'dev',
                  'eth0'])
            _run(['ip', '-n', netns, 'link', 'set', 'eth0', 'up'])
            _run(['ip', '-n', netns, 'link', 'set', 'lo', 'up'])
        return host

    def check(self, test: testtools.TestCase) -> None:
        """Skip (or, under CI=true, fail) with the reason when hosts
        cannot be made here; run once a host exists."""
        host = self.hosts[0]
        result = host.run(['sh', '-c', 'hostname; cat /etc/machine-id'],
                          timeout=30)
        expected = [host.name]
        if os.path.exists('/etc/machine-id'):
            expected.append(host.machine_id)
        if result.returncode == 0 and result.stdout.split() == expected:
            return
        message = (f'cannot make separate hosts here ({self.mode} mode: '
                   f'{" ".join(host.wrap(["true"])[:6])}...): '
                   f'{result.stderr.strip() or result.stdout.strip()}')
        if os.environ.get('CI') == 'true':
            test.fail(message)
        test.skipTest(message)

    # -- cleanup -----------------------------------------------------------

    def sweep(self, deadline: float = 10) -> list[int]:
        """Kill every process the hosts started; return their pids."""
        killed: set[int] = set()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            pids = tagged(self.token)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        return sorted(killed)

    def _teardown(self) -> None:
        self.sweep()
        for host in self.hosts:
            if host.netns:
                _run(['ip', 'netns', 'del', host.netns], check=False)
                # Deleted lazily with the namespace otherwise.
                _run(['ip', 'link', 'del', host.veth], check=False)
        if self.bridge and getattr(self, '_bridge_made', False):
            _run(['ip', 'link', 'del', self.bridge], check=False)


def free_port(address: str) -> int:
    """A free TCP port on ``address`` (which must be local)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class FleetSSHServer(sshd.SSHServer):
    """An sshd running on a lab host, at its address.

    Remote commands get the lab's mark in their environment, so the lab
    finds them. In netns mode it listens on port 22 of the host's own
    address; in loopback mode on a free port of it.
    """

    def __init__(self, host: Host) -> None:
        super().__init__(f'SetEnv {RUN_ENV}={host.lab.token}')
        self.host = host

    def _write_config(self) -> str:
        config = super()._write_config()
        with open(config) as f:
            text = f.read()
        text = text.replace('ListenAddress 127.0.0.1\n',
                            f'ListenAddress {self.host.address}\n')
        with open(config, 'w') as f:
            f.write(text)
        return config

    def start(self) -> None:
        if not self.port:
            self.port = (22 if self.host.netns
                         else free_port(self.host.address))
        config = self._write_config()
        log = open(self.log, 'ab')
        self.proc = self.host.popen(
            [sshd.SSHD, '-D', '-e', '-f', config], stdout=log, stderr=log)
        log.close()
        if not self._wait_listening():
            self.stop()
            raise RuntimeError(f'sshd on {self.host.name} did not start; '
                               f'see {self.log}: '
                               + open(self.log).read()[-2000:])

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host.address,
                                               self.port), 1):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def known_hosts_line(self) -> str:
        if self.port == 22:
            return f'{self.host.address} {self.host_public}'
        return f'[{self.host.address}]:{self.port} {self.host_public}'

    def source_keys(self, known_hosts: str, **overrides: object) -> dict:
        return super().source_keys(known_hosts, **dict(
            dict(ssh_host=self.host.address, ssh_port=self.port),
            **overrides))
