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

The client half of this module imports no paramiko.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from crcache import agentclient
from crcache import daemon

if TYPE_CHECKING:
    from crcache.sources.ssh import Settings

PROTOCOL = 1


def socket_path(settings: 'Settings') -> str:
    """Where the holder for a source's settings listens."""
    return os.path.join(agentclient.runtime_dir(),
                        f'ssh{PROTOCOL}-{settings.digest}.sock')


def _send(sock: socket.socket, message: Any,
          fds: list[int] | None = None) -> None:
    daemon.send_message(sock, message, fds)


def _recv(sock: socket.socket, with_fds: int = 0
          ) -> tuple[Any, list[int]]:
    return daemon.receive_message(sock, with_fds)


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


def _connect(settings: 'Settings') -> socket.socket | None:
    path = socket_path(settings)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def run(settings: 'Settings', line: str, stdin: int, stdout: int,
        stderr: int) -> int | None:
    """Run ``line`` through a holder; None when there is none to use.

    None is only returned before the command has started, so the caller
    can run it directly instead.
    """
    sock = _connect(settings)
    if sock is None:
        return None
    from crcache import process
    try:
        with process.foreground(process.REMOTE, ()) as job:
            try:
                _send(sock, ('exec', line), [stdin, stdout, stderr])
                reply, _ = _recv(sock)
            except (OSError, EOFError):
                return None
            if reply[0] != 'started':
                return None  # busy or broken: connect directly
            job.started(_RemoteSignals(sock))
            try:
                reply, _ = _recv(sock)
            except (OSError, EOFError):
                from crcache import exceptions
                raise exceptions.SourceError(
                    settings.source, f'{settings.label}: the connection '
                    'holder went away while the command ran')
            if reply[0] == 'exit':
                return reply[1]
            from crcache import exceptions
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
        reply, _ = _recv(sock)
        return reply == ('pong',)
    except (OSError, EOFError):
        return False
    finally:
        sock.close()


def spawn(settings: 'Settings', persist: float) -> None:
    """Start a holder for ``settings`` in the background; never raises."""
    from crcache import daemon
    daemon.spawn(socket_path(settings), 'crcache.sshholder', str(persist),
                 settings.to_json())


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
        from crcache import sshconn
        self.conn = sshconn.Connection(sshconn.resolve(self.settings))
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
        with self.lock:
            self.active += 1
        fds: list[int] = []
        try:
            creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                      struct.calcsize('3i'))
            if struct.unpack('3i', creds)[1] != os.getuid():
                return
            request, fds = _recv(client, with_fds=3)
            if request[0] == 'ping':
                _send(client, ('pong',))
            elif request[0] == 'exec' and len(fds) == 3:
                self._exec(client, request[1], fds)
        except Exception as err:  # one bad request never stops the holder
            with contextlib.suppress(Exception):
                _send(client, ('error', str(err)))
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            client.close()
            with self.lock:
                self.active -= 1
                self.last_used = time.monotonic()

    def _exec(self, client: socket.socket, line: str,
              fds: list[int]) -> None:
        from crcache import exceptions
        from crcache import sshconn
        try:
            chan = self.conn.session()
            chan.exec_command(line)
        except (exceptions.CrcacheError, Exception) as err:
            _send(client, ('busy', str(err)))
            return
        _send(client, ('started',))

        def watch() -> None:
            # Signals from the client; its hang-up closes the channel.
            try:
                while True:
                    message, _ = _recv(client)
                    if message[0] == 'signal':
                        sshconn.send_signal(chan, message[1])
            except (OSError, EOFError, ValueError):
                chan.close()

        threading.Thread(target=watch, daemon=True).start()
        status = sshconn.pump(chan, *fds)
        chan.close()
        _send(client, ('exit', status))


def main(argv: list[str] | None = None) -> int:
    """``python -m crcache.sshholder SOCKET PERSIST SETTINGS_JSON``."""
    argv = sys.argv[1:] if argv is None else argv
    from crcache.sources import ssh
    path, persist, spec = argv
    holder = Holder(path, float(persist), ssh.Settings.from_json(spec))
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
