"""One verified, fast paramiko connection to one ssh host.

Used by the ssh source directly and by the connection holder
(:mod:`crcache.sources.ssh.holder`). Everything paramiko raises is turned
into a
one-line :class:`~crcache.exceptions.SourceError` naming the source, the
host and port, and the cause.

What differs from paramiko's defaults, and why:

* ``TCP_NODELAY``: paramiko never sets it, and Nagle's algorithm with
  delayed ACKs stalls every exchange by about 85 ms.
* AES-GCM ciphers first: the fastest paramiko offers, by far.
* Rekeying every 64 GiB instead of every 512 MiB: OpenSSH's own default
  for 128-bit block ciphers. paramiko's rekey during a large transfer
  stalls or times out (paramiko issue 822).
* ``exit-signal`` is understood: paramiko ignores it, so a remote command
  killed by a signal would report -1; crcache reports 128+N as a shell
  does.
* Signals do not use the ``signal`` channel request, which OpenSSH
  refuses for root logins: see :class:`RemoteCommand`.
* Host keys are always verified against ``known_hosts`` (the user's and
  the system's); a first-seen key is recorded only under the
  ``accept-new`` policy, and a changed key is always refused.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import hashlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST
from paramiko.message import Message

from crcache import exceptions
from crcache.transport import fdio
from crcache.transport import remotegroup

# paramiko's transport thread logs failures (with tracebacks) that we
# also raise as one clear line; they reach the user only with -vv.
_PARAMIKO_LOG = logging.getLogger('paramiko')
_PARAMIKO_LOG.addHandler(logging.NullHandler())
_PARAMIKO_LOG.propagate = False

SYSTEM_KNOWN_HOSTS = '/etc/ssh/ssh_known_hosts'
DEFAULT_KEY_FILES = ('~/.ssh/id_ed25519', '~/.ssh/id_ecdsa', '~/.ssh/id_rsa')
POLICIES = ('reject', 'accept-new')
REKEY_BYTES = 1 << 36
#: Bytes asked of a channel per read: more than its window (2 MiB), so
#: paramiko hands over its whole buffer instead of moving the rest of it
#: down after every read (which costs a third of the download speed).
RECV_CHUNK = 1 << 23
#: Signal numbers by the names the ssh protocol uses (RFC 4254 6.10).
SIGNALS = {name[3:]: int(getattr(signal, name)) for name in dir(signal)
           if name.startswith('SIG') and not name.startswith('SIG_')
           and name.isupper()}


@dataclasses.dataclass(frozen=True)
class Target:
    """Everything needed to reach and trust one ssh host."""

    source: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    explicit_key: bool
    known_hosts: str
    policy: str
    timeout: float

    @property
    def label(self) -> str:
        return f'{self.user}@{self.hostname}:{self.port}'

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts names it."""
        if self.port == 22:
            return self.hostname
        return f'[{self.hostname}]:{self.port}'

    def error(self, message: str) -> exceptions.SourceError:
        return exceptions.SourceError(self.source, f'{self.label}: {message}')


def resolve(settings: Any) -> Target:
    """Apply ``~/.ssh/config`` to a source's settings; keys set win."""
    found: dict[str, Any] = {}
    try:
        ssh_config = paramiko.SSHConfig.from_path(settings.ssh_config)
    except FileNotFoundError:
        ssh_config = None
    except Exception as err:
        raise exceptions.SourceError(
            settings.source, f'cannot read {settings.ssh_config}: {err}')
    if ssh_config is not None:
        try:
            found = ssh_config.lookup(settings.host)
        except Exception as err:
            raise exceptions.SourceError(
                settings.source, f'{settings.ssh_config}: cannot look up '
                f'{settings.host}: {err}')
    try:
        port = settings.port or int(found.get('port', 22))
    except ValueError:
        raise exceptions.SourceError(
            settings.source, f'{settings.ssh_config}: bad Port for '
            f'{settings.host}: {found.get("port")!r}')
    if settings.key:
        key_files: tuple[str, ...] = (settings.key,)
    else:
        key_files = tuple(found.get('identityfile', [])) + DEFAULT_KEY_FILES
    return Target(
        source=settings.source,
        hostname=found.get('hostname', settings.host),
        port=port,
        user=settings.user or found.get('user') or getpass.getuser(),
        key_files=key_files,
        explicit_key=bool(settings.key),
        known_hosts=settings.known_hosts,
        policy=settings.policy,
        timeout=settings.timeout,
    )


class RemoteCommand:
    """A command on a channel, started so that it can be signalled.

    :meth:`exec` starts the command line through the wrapper of
    :mod:`crcache.transport.remotegroup`; :attr:`report` takes the
    wrapper's line
    out of the channel's stderr (pass it to :func:`pump`). Signals go to
    the command's whole process group, from a second exec channel on the
    same connection, whatever user the server logged us in as (OpenSSH
    honours the ``signal`` request only for privilege-separated
    sessions, never for root). A signal that comes before the report is
    held until it arrives. Has ``send_signal`` and ``abandon``, as
    :class:`crcache.transport.process.Foreground` takes them.
    """

    def __init__(self, conn: 'Connection', chan: paramiko.Channel,
                 warn: Callable[[str], None] | None = None) -> None:
        self.conn = conn
        self.chan = chan
        self.warn = warn
        self.nonce = remotegroup.new_nonce()
        self.report = remotegroup.Report(self.nonce, self._located)
        self.where: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int | None]] = []
        self._found = threading.Event()

    def exec(self, line: str) -> None:
        """Start ``line``, run by the login shell as ``ssh host line``."""
        self.chan.exec_command(remotegroup.ssh_line(line, self.nonce))

    def _located(self, where: tuple[int, str]) -> None:
        with self._lock:
            self.where = where
            pending, self._pending = self._pending, []
        self._found.set()
        for name, after in pending:
            self._in_background(name, after)

    def send_signal(self, signum: int) -> None:
        self.signal(signal.Signals(signum).name[3:])

    def signal(self, name: str, then_kill_after: int | None = None) -> None:
        """Send SIG``name`` to the command's group, without waiting."""
        if name not in SIGNALS:
            return
        with self._lock:
            if self.where is None:
                self._pending.append((name, then_kill_after))
                return
        self._in_background(name, then_kill_after)

    def _in_background(self, name: str, after: int | None) -> None:
        threading.Thread(target=self.kill, args=(name, after),
                         daemon=True).start()

    def kill(self, name: str, then_kill_after: int | None = None) -> bool:
        """Send SIG``name`` to the command's group and wait for that to be
        done (and, with ``then_kill_after``, SIGKILL that many seconds
        later); False if the command was never located or it failed."""
        if self.where is None:
            return False
        line = remotegroup.kill_line(name, self.where, then_kill_after)
        wait = self.conn.target.timeout + (then_kill_after or 0)
        try:
            chan = self.conn.session()
            try:
                chan.exec_command(line)
                chan.status_event.wait(wait)
            finally:
                chan.close()
        except (exceptions.CrcacheError, OSError, EOFError,
                paramiko.SSHException) as err:
            if self.warn is not None:
                self.warn(f'could not pass SIG{name} on to the command: '
                          f'{err}')
            return False
        return True

    def hang_up(self, ended: threading.Event | None = None) -> None:
        """End the command as a hang-up does: SIGHUP, then SIGKILL.

        Waits for the command to be located (the channel must be pumped
        meanwhile), unless ``ended`` is set first.
        """
        deadline = time.monotonic() + self.conn.target.timeout
        while not self._found.wait(0.05):
            if (ended is not None and ended.is_set()) \
                    or time.monotonic() > deadline:
                return
        self.kill('HUP', remotegroup.HANG_UP_GRACE)

    def abandon(self) -> str:
        # Closing the connection orphans the command, which the wrapper's
        # watcher notices.
        return 'is hung up on as the connection closes'


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return 'SHA256:' + base64.b64encode(digest).decode().rstrip('=')


def _handle_channel_request(chan: paramiko.Channel, m: Message) -> None:
    start = m.packet.tell()
    kind = m.get_text()
    if kind == 'exit-signal':
        m.get_boolean()  # want reply: never, for exit-signal
        name = m.get_text()
        m.get_boolean()  # core dumped
        chan.exit_signal = name
        chan.exit_status = 128 + SIGNALS.get(name, 0)
        chan.status_event.set()
        return
    m.packet.seek(start)
    paramiko.Channel._handle_request(chan, m)


class _Transport(paramiko.Transport):
    """A Transport that also understands ``exit-signal``."""

    _channel_handler_table = dict(paramiko.Transport._channel_handler_table)
    _channel_handler_table[MSG_CHANNEL_REQUEST] = _handle_channel_request


class Connection:
    """An authenticated connection; open with :meth:`open`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: paramiko.Transport | None = None

    # -- connecting ----------------------------------------------------------

    def open(self) -> 'Connection':
        target = self.target
        try:
            sock = socket.create_connection(
                (target.hostname, target.port), timeout=target.timeout)
        except socket.gaierror as err:
            raise target.error(f'cannot resolve host name: {err.strerror}')
        except ConnectionRefusedError:
            raise target.error('connection refused')
        except (TimeoutError, socket.timeout):
            raise target.error(
                f'connection timed out after {target.timeout:g}s')
        except OSError as err:
            raise target.error(f'cannot connect: {err.strerror or err}')
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = _Transport(sock)
        self.transport = transport
        try:
            self._negotiate(transport)
            self._verify(transport.get_remote_server_key())
            self._authenticate(transport)
        except BaseException:
            transport.close()
            self.transport = None
            raise
        sock.settimeout(None)
        return self

    def _negotiate(self, transport: paramiko.Transport) -> None:
        options = transport.get_security_options()
        ciphers = list(options.ciphers)
        fast = [c for c in ciphers if 'gcm' in c]
        options.ciphers = tuple(fast + [c for c in ciphers if c not in fast])
        known = self._known_types()
        if known:
            # Prefer the key types already on record for this host, as
            # OpenSSH does, so a host with several keys is not "changed".
            types = list(options.key_types)
            first = [t for t in types if t in known]
            options.key_types = tuple(
                first + [t for t in types if t not in first])
        transport.packetizer.REKEY_BYTES = REKEY_BYTES
        transport.packetizer.REKEY_PACKETS = REKEY_BYTES
        transport.packetizer.REKEY_BYTES_OVERFLOW_MAX = REKEY_BYTES
        transport.packetizer.REKEY_PACKETS_OVERFLOW_MAX = REKEY_BYTES
        transport.banner_timeout = self.target.timeout
        timed_out = self.target.error(
            f'connection timed out after {self.target.timeout:g}s waiting '
            'for the ssh handshake')
        try:
            transport.start_client(timeout=self.target.timeout)
        except paramiko.SSHException as err:
            if 'banner' in str(err):
                raise timed_out
            raise self.target.error(f'ssh negotiation failed: {err}')
        except (EOFError, OSError) as err:
            raise self.target.error(
                f'connection closed during ssh negotiation: {err}')
        if transport.host_key is None:
            # start_client returns quietly when its timeout runs out.
            raise timed_out

    # -- host keys -----------------------------------------------------------

    def _host_keys(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        for path in (SYSTEM_KNOWN_HOSTS, self.target.known_hosts):
            try:
                keys.load(path)
            except FileNotFoundError:
                continue
            except (OSError, paramiko.SSHException, ValueError) as err:
                raise self.target.error(
                    f'cannot read known hosts file {path}: {err}')
        return keys

    def _known_types(self) -> set[str]:
        entry = self._host_keys().lookup(self.target.known_hosts_name)
        return set(entry.keys()) if entry else set()

    def _verify(self, key: paramiko.PKey) -> None:
        target = self.target
        name = target.known_hosts_name
        entry = self._host_keys().lookup(name)
        key_type = key.get_name()
        if entry:
            known = entry.get(key_type)
            if known is not None and known.asbytes() == key.asbytes():
                return
            if known is not None:
                raise target.error(
                    f'HOST KEY CHANGED: {name} now presents {key_type} '
                    f'{fingerprint(key)}, which does not match '
                    f'{target.known_hosts}; refusing to connect (someone '
                    'may be intercepting the connection). If the host was '
                    'reinstalled, remove its old entry with ssh-keygen -R '
                    f"'{name}' -f {target.known_hosts}")
            raise target.error(
                f'{name} presents a {key_type} host key '
                f'({fingerprint(key)}) but known hosts only has '
                f'{", ".join(sorted(entry.keys()))} for it; refusing to '
                'connect')
        if target.policy == 'accept-new':
            self._record(name, key)
            return
        raise target.error(
            f'unknown host key {key_type} {fingerprint(key)}; to trust it, '
            f'add it to {target.known_hosts} (for example ssh-keyscan -p '
            f'{target.port} {target.hostname} >> {target.known_hosts}) or '
            'set ssh_host_key_policy=accept-new')

    def _record(self, name: str, key: paramiko.PKey) -> None:
        path = self.target.known_hosts
        line = f'{name} {key.get_name()} {key.get_base64()}\n'
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                         0o600)
            with os.fdopen(fd, 'a') as f:
                if f.tell():
                    with open(path, 'rb') as existing:
                        existing.seek(-1, os.SEEK_END)
                        if existing.read(1) != b'\n':
                            f.write('\n')
                f.write(line)
        except OSError as err:
            raise self.target.error(
                f'cannot record the host key in {path}: '
                f'{err.strerror or err}')

    # -- authentication ------------------------------------------------------

    def _load_key(self, path: str) -> paramiko.PKey:
        try:
            return paramiko.PKey.from_path(os.path.expanduser(path))
        except FileNotFoundError:
            raise self.target.error(f'ssh_key {path}: no such file')
        except PermissionError:
            raise self.target.error(f'ssh_key {path}: permission denied')
        except TypeError:
            raise self.target.error(
                f'ssh_key {path} is protected by a passphrase; load it '
                'into an ssh agent and leave ssh_key unset')
        except (ValueError, paramiko.SSHException,
                paramiko.ssh_exception.UnknownKeyType) as err:
            raise self.target.error(
                f'ssh_key {path} is not a usable private key: {err}')

    def _candidates(self) -> list[tuple[str, Any]]:
        """(label, key or loader) pairs in the order they are tried."""
        target = self.target
        if target.explicit_key:
            path = target.key_files[0]
            return [(path, lambda: self._load_key(path))]
        found: list[tuple[str, Any]] = []
        if os.environ.get('SSH_AUTH_SOCK'):
            try:
                for key in paramiko.Agent().get_keys():
                    found.append((f'agent key {fingerprint(key)}', key))
            except paramiko.SSHException:
                pass
        for path in target.key_files:
            expanded = os.path.expanduser(path)
            if os.path.exists(expanded):
                found.append((path, lambda p=path: self._load_key(p)))
        return found

    def _authenticate(self, transport: paramiko.Transport) -> None:
        target = self.target
        tried = []
        for label, key in self._candidates():
            if callable(key):
                try:
                    key = key()
                except exceptions.SourceError:
                    if target.explicit_key:
                        raise
                    continue  # an unusable default key: as ssh, skip it
            tried.append(label)
            try:
                transport.auth_publickey(target.user, key)
            except paramiko.AuthenticationException:
                continue
            except paramiko.SSHException as err:
                raise target.error(f'authentication failed: {err}')
            if transport.is_authenticated():
                return
        raise target.error(
            f"authentication failed for user '{target.user}' (tried "
            f"{', '.join(tried) if tried else 'no keys: none found'})")

    # -- using it -----------------------------------------------------------

    def session(self) -> paramiko.Channel:
        """Open a session channel."""
        if self.transport is None or not self.transport.is_active():
            raise self.target.error('the connection was lost')
        try:
            return self.transport.open_session(timeout=self.target.timeout)
        except (paramiko.SSHException, EOFError, OSError) as err:
            raise self.target.error(f'cannot open a session: {err}')

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def pump(chan: paramiko.Channel, stdin: int, stdout: int, stderr: int,
         report: remotegroup.Report | None = None) -> int:
    """Move bytes between descriptors and a started channel; return status.

    stdin is read until EOF, which is passed on; stdout and stderr are
    written as data arrives (stderr through ``report``, if given, which
    takes the wrapper's line out). Returns the exit status (128+N for a
    signal), or 255 if the connection ended without one.
    """

    def drain(recv: Any, fd: int,
              report: remotegroup.Report | None = None) -> None:
        try:
            while data := recv(RECV_CHUNK):
                if report is not None and not report.done:
                    data = report.feed(data)
                fdio.write_all(fd, data)
            if report is not None:
                fdio.write_all(fd, report.flush())
        except (OSError, EOFError, paramiko.SSHException):
            # Nobody reads our output any more (or the connection went):
            # stop the command, as a closed pipe would.
            chan.close()

    feeder = fdio.Feeder(stdin, chan.sendall, chan.shutdown_write,
                         errors=(paramiko.SSHException,))
    err_thread = threading.Thread(
        target=drain, args=(chan.recv_stderr, stderr, report), daemon=True)
    err_thread.start()
    try:
        drain(chan.recv, stdout)
        err_thread.join()
        status = chan.recv_exit_status()
    finally:
        feeder.stop()
    return 255 if status < 0 else status
