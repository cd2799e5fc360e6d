"""One verified, fast paramiko connection to one ssh host.

Used by the ssh source directly and by the connection holder
(:mod:`crcache.sources.ssh.holder`), for the :class:`~crcache.sources.
ssh.target.Target` that :func:`crcache.sources.ssh.target.resolve` makes
of a source's settings; commands run on it with
:mod:`crcache.sources.ssh.command`. Everything paramiko raises is turned
into a one-line :class:`~crcache.exceptions.SourceError` naming the
source, the host and port, and the cause.

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
  refuses for root logins: see
  :class:`crcache.sources.ssh.command.RemoteCommand`.
* Host keys are always verified against ``known_hosts`` (the user's and
  the system's); a first-seen key is recorded only under the
  ``accept-new`` policy, and a changed key is always refused
  (:mod:`crcache.sources.ssh.hostkeys`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST
from paramiko.message import Message

from crcache import exceptions
from crcache.sources.ssh import hostkeys
from crcache.sources.ssh.target import Target

# paramiko's transport thread logs failures (with tracebacks) that we
# also raise as one clear line; they reach the user only with -vv.
_PARAMIKO_LOG = logging.getLogger('paramiko')
_PARAMIKO_LOG.addHandler(logging.NullHandler())
_PARAMIKO_LOG.propagate = False

REKEY_BYTES = 1 << 36
#: Signal numbers by the names the ssh protocol uses (RFC 4254 6.10).
SIGNALS = {name[3:]: int(getattr(signal, name)) for name in dir(signal)
           if name.startswith('SIG') and not name.startswith('SIG_')
           and name.isupper()}


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
            hostkeys.verify(self.target, transport.get_remote_server_key())
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
        known = hostkeys.known_types(self.target)
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
                    label = f'agent key {hostkeys.fingerprint(key)}'
                    found.append((label, key))
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
