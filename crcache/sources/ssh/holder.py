"""Keep an ssh connection open between crcache invocations.

Like OpenSSH's ControlPersist: after a command has run on an ssh host, a
small *holder* process keeps an authenticated connection to it and
listens on a private unix socket (in the same 0700 runtime directory as
the agent's sockets, mode 0600). Later commands hand it the command line
and their stdin/stdout/stderr descriptors; it opens a channel, moves the
bytes itself and replies with the exit status. A command that reaches a
holder neither imports paramiko nor pays for a key exchange.

Nobody starts or stops a holder: the ssh source spawns one after a
successful direct connection, and it exits after ``ssh_persist`` seconds
without work, or as soon as its connection drops. A missing or dead
holder (stale socket) just means the next command connects directly.
The socket's name is derived from everything that decides how the host
is reached and trusted, so a changed ``source.conf`` gets a new holder.

A holder is as careful as the agent (see :mod:`crcache.daemons.ipc`): a
command is handed only to a holder that provably runs as the same user
(a socket that is not is ignored, saying so, and the command connects
directly); the settings (host, port, user, key, known_hosts) reach it on
a pipe, never on its command line, where ``ps`` would show them to
everyone; and only running commands keep it up, while a client that
connects and does not send its request in time is dropped.

The client half of this module imports no paramiko.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from crcache.daemons import ipc as daemon
from crcache.daemons import messages

if TYPE_CHECKING:
    from crcache.sources.ssh.settings import Settings

PROTOCOL = 3
#: Seconds, beyond the connect timeout (which bounds opening a channel),
#: that a holder has to start a command or answer a ping.
REPLY_MARGIN = 5.0


def socket_path(settings: 'Settings') -> str | None:
    """Where the holder for a source's settings listens; None if there is
    no private directory for it."""
    directory = daemon.runtime_dir()
    if directory is None:
        return None
    return os.path.join(directory, f'ssh{PROTOCOL}-{settings.digest}.sock')


def _send(sock: socket.socket, message: Any,
          fds: list[int] | None = None) -> None:
    messages.send_message(sock, message, fds)


def _recv(sock: socket.socket, with_fds: int = 0,
          deadline: float | None = None) -> tuple[Any, list[int]]:
    return messages.receive_message(sock, with_fds, deadline)


# -- the client side ---------------------------------------------------------

class _RemoteSignals:
    """Passes signals to the holder, which passes them to the command."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send_signal(self, signum: int) -> None:
        import signal as signal_module
        name = signal_module.Signals(signum).name[3:]
        with contextlib.suppress(OSError):
            _send(self.sock, ('signal', name))

    def abandon(self) -> str:
        # Our hanging up (the socket closes as crcache ends) makes the
        # holder hang up on the command.
        return 'is being hung up on'


def _connect(settings: 'Settings') -> socket.socket | None:
    """A connection to our holder for ``settings``, if one safely answers.

    A socket that is not provably ours gets nothing, not even the command
    line; the user is told, and the command connects directly.
    """
    path = socket_path(settings)
    if path is None:
        return None
    try:
        return daemon.connect(path)
    except daemon.Refused as why:
        sys.stderr.write(f'crcache: ignoring ssh connection holder socket '
                         f'{path}: {why}; connecting directly\n')
        return None


def run(settings: 'Settings', line: str, stdin: int, stdout: int,
        stderr: int) -> int | None:
    """Run ``line`` through a holder; None when there is none to use.

    None is only returned before the command can have started, so the
    caller can run it directly instead.
    """
    sock = _connect(settings)
    if sock is None:
        return None
    from crcache import exceptions
    from crcache.transport import process
    # Opening a channel is bounded by the connect timeout.
    ready_within = settings.timeout + REPLY_MARGIN
    try:
        with process.foreground(process.REMOTE, ()) as job:
            try:
                _send(sock, ('exec', line))
                reply, _ = _recv(sock,
                                 deadline=time.monotonic() + ready_within)
            except TimeoutError:
                # Hanging up tells it not to start the command after all.
                sys.stderr.write(
                    f'crcache: the ssh connection holder for '
                    f'{settings.label} did not answer within '
                    f'{ready_within:g}s; connecting directly\n')
                return None
            except (OSError, EOFError, ValueError):
                return None
            if reply != ('ready',):
                return None  # busy or broken: connect directly
            # Only now do our descriptors go: a holder that is stuck
            # never holds them (and with them our pipes) open.
            try:
                _send(sock, ('fds',), [stdin, stdout, stderr])
                reply, _ = _recv(
                    sock, deadline=time.monotonic() + REPLY_MARGIN)
            except TimeoutError:
                # It may start the command yet: running it directly too
                # could run it twice.
                raise exceptions.SourceError(
                    settings.source, f'{settings.label}: the ssh connection '
                    f'holder did not start the command within '
                    f'{REPLY_MARGIN:g}s')
            except (OSError, EOFError, ValueError):
                return None
            if reply != ('started',):
                return None  # could not start it: connect directly
            job.started(_RemoteSignals(sock))
            try:
                reply, _ = _recv(sock)
            except (OSError, EOFError, ValueError):
                reply = None
            if not (isinstance(reply, tuple) and len(reply) == 2):
                raise exceptions.SourceError(
                    settings.source, f'{settings.label}: the connection '
                    'holder went away while the command ran')
            if reply[0] == 'exit':
                return reply[1]
            raise exceptions.SourceError(
                settings.source, f'{settings.label}: {reply[1]}')
    finally:
        sock.close()


def ping(settings: 'Settings') -> bool:
    """Whether a holder for ``settings`` answers."""
    sock = _connect(settings)
    if sock is None:
        return False
    try:
        _send(sock, ('ping',))
        reply, _ = _recv(sock, deadline=time.monotonic() + REPLY_MARGIN)
        return reply == ('pong',)
    except (OSError, EOFError, ValueError):
        return False
    finally:
        sock.close()


def spawn(settings: 'Settings', persist: float) -> None:
    """Start a holder for ``settings`` in the background; never raises.

    Only the socket path and ``persist`` show on its command line: the
    settings (host, user, key, known_hosts...) travel on its stdin.
    """
    path = socket_path(settings)
    if path is None:
        return
    daemon.spawn(path, 'crcache.sources.ssh.holder', str(persist),
                 stdin=settings.to_json().encode())


# -- the holder itself ------------------------------------------------------

class Holder:
    """Serves commands over one connection until idle or disconnected."""

    def __init__(self, path: str, persist: float,
                 settings: 'Settings') -> None:
        self.path = path
        self.persist = persist
        self.settings = settings
        self.active = 0
        self.last_used = time.monotonic()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None

    def bind(self) -> bool:
        """Listen on the socket; False if a live holder already does."""
        self.listener = daemon.claim(self.path, backlog=64)
        if self.listener is None:
            return False
        self.listener.settimeout(1.0)
        self.inode = os.stat(self.path).st_ino
        return True

    def serve(self) -> None:
        from crcache.sources.ssh import connection as sshconn
        from crcache.sources.ssh import target as sshtarget
        self.conn = sshconn.Connection(sshtarget.resolve(self.settings))
        try:
            self.conn.open()
            while self._wanted():
                try:
                    client, _ = self.listener.accept()
                except socket.timeout:
                    continue
                except OSError:
                    break
                threading.Thread(target=self._handle, args=(client,),
                                 daemon=True).start()
        finally:
            if daemon.still_ours(self.path, self.inode):
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            self.listener.close()
            self.conn.close()

    def _wanted(self) -> bool:
        transport = self.conn.transport
        if transport is None or not transport.is_active():
            return False
        if not daemon.still_ours(self.path, self.inode):
            return False
        with self.lock:
            idle = time.monotonic() - self.last_used
            return self.active > 0 or idle < self.persist

    def _handle(self, client: socket.socket) -> None:
        # Connected is not busy: only a command being started or run
        # (counted in _exec) keeps the holder up, and only one that ran
        # restarts the ssh_persist clock. A client that sends nothing, or
        # dribbles, is dropped at the request deadline and postpones
        # nothing.
        try:
            _, uid = daemon.peer(client)
            if uid != os.geteuid():
                return  # before reading a byte of it
            request, fds = _recv(
                client, deadline=time.monotonic() + daemon.REQUEST_DEADLINE)
            if request == ('ping',):
                _send(client, ('pong',))
            elif (isinstance(request, tuple) and len(request) == 2
                    and request[0] == 'exec'
                    and isinstance(request[1], str)):
                if messages.only_request(client):
                    self._exec(client, request[1])
            else:
                _send(client, ('error', 'malformed request'))
        except Exception as err:  # one bad request never stops the holder
            with contextlib.suppress(Exception):
                _send(client, ('error', str(err)))
        finally:
            client.close()

    def _exec(self, client: socket.socket, line: str) -> None:
        """Open a channel, say "ready", take the client's descriptors,
        start ``line`` and move its bytes until it ends."""
        from crcache import exceptions
        from crcache.sources.ssh import command as sshcommand
        fds: list[int] = []
        chan = None
        started = False
        with self.lock:
            self.active += 1
        try:
            try:
                chan = self.conn.session()
            except (exceptions.CrcacheError, Exception) as err:
                _send(client, ('busy', str(err)))
                return
            _send(client, ('ready',))
            message, fds = _recv(
                client, with_fds=3,
                deadline=time.monotonic() + daemon.REQUEST_DEADLINE)
            if message != ('fds',) or len(fds) != 3:
                _send(client, ('error', 'malformed request'))
                return
            if not messages.only_request(client):
                return  # it gave up on us, and runs the command itself
            command = sshcommand.RemoteCommand(
                self.conn, chan, warn=_warner(self.settings, fds[2]))
            try:
                command.exec(line)
            except (exceptions.CrcacheError, Exception) as err:
                _send(client, ('busy', str(err)))
                return
            started = True
            finished = threading.Event()
            with contextlib.suppress(OSError):
                # Should it have given up on us, watch() hangs up on the
                # command, which must not run on.
                _send(client, ('started',))

            def watch() -> None:
                # Signals from the client. A client that hangs up before
                # the command ends was killed or gave up on it: the
                # command is hung up on, as by a closed terminal.
                try:
                    while True:
                        message, _ = _recv(client)
                        if (isinstance(message, tuple) and len(message) == 2
                                and message[0] == 'signal'
                                and isinstance(message[1], str)):
                            command.signal(message[1])
                except (OSError, EOFError, ValueError):
                    if not finished.is_set():
                        command.hang_up(finished)
                    chan.close()

            threading.Thread(target=watch, daemon=True).start()
            status = sshcommand.pump(chan, *fds, command.report)
            finished.set()
            chan.close()
            _send(client, ('exit', status))
        finally:
            if chan is not None:
                chan.close()
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with self.lock:
                self.active -= 1
                if started:  # what ssh_persist counts from
                    self.last_used = time.monotonic()


def _warner(settings: 'Settings', fd: int) -> Any:
    """Warnings about running a command, for the client's stderr."""
    from crcache.sources.ssh import settings as ssh_settings
    return ssh_settings.warner(settings, fd)


def main(argv: list[str] | None = None) -> int:
    """``python -m crcache.sources.ssh.holder SOCKET PERSIST``, the
    settings as JSON on stdin (see :func:`spawn`)."""
    argv = sys.argv[1:] if argv is None else argv
    from crcache.sources.ssh.settings import Settings
    if len(argv) != 2:
        sys.stderr.write('usage: python -m crcache.sources.ssh.holder '
                         'SOCKET PERSIST < SETTINGS_JSON\n')
        return 2
    path, persist = argv
    try:
        settings = Settings.from_json(daemon.read_stdin().decode())
    except (OSError, ValueError, TypeError) as err:
        sys.stderr.write(f'crcache ssh holder {path}: no usable settings on '
                         f'stdin: {err}\n')
        return 2
    holder = Holder(path, float(persist), settings)
    if not holder.bind():
        return 0
    try:
        holder.serve()
    except Exception as err:
        sys.stderr.write(f'crcache ssh holder for {holder.settings.label}: '
                         f'{err}\n')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
