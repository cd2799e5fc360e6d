"""A command on a channel of an ssh connection, and its bytes.

:class:`RemoteCommand` starts a command line so that it can be signalled
(through the wrapper of :mod:`crcache.transport.remotegroup`, from a
second exec channel, as OpenSSH refuses the ``signal`` channel request
for root logins); :func:`pump` moves bytes between local descriptors and
the channel until the command ends, and returns its status.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko

from crcache import exceptions
from crcache.sources.ssh.connection import SIGNALS, Connection
from crcache.transport import fdio
from crcache.transport import remotegroup

#: What paramiko keeps of a channel's largest packet for its own header
#: (Channel._wait_for_send_window): the most data one send() sends.
PACKET_OVERHEAD = 64
#: Bytes asked of a channel per read: more than its window (2 MiB), so
#: paramiko hands over its whole buffer instead of moving the rest of it
#: down after every read (which costs a third of the download speed).
RECV_CHUNK = 1 << 23


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

    def __init__(self, conn: Connection, chan: paramiko.Channel,
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
            # The command may have ended meanwhile (of this very signal,
            # often) and the connection closed with it: nothing to say.
            if self.warn is not None and not self.chan.exit_status_ready():
                self.warn(f'could not pass SIG{name} on to the command: '
                          f'{err or type(err).__name__}')
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


def sender(chan: paramiko.Channel) -> Callable[[bytes], None]:
    """``chan.sendall``, without its copies.

    paramiko's ``sendall`` sends one packet's worth (32 KiB) and slices
    the rest off as a new bytes object, again and again: a 256 KiB read
    is copied seven more times on its way out. This slices each packet
    once.
    """

    def send(data: bytes) -> None:
        step = max(1024, chan.out_max_packet_size - PACKET_OVERHEAD)
        for start in range(0, len(data), step):
            piece = data[start:start + step]
            while piece:
                sent = chan.send(piece)
                if not sent:
                    raise OSError('the channel was closed')
                piece = piece[sent:]

    return send


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

    feeder = fdio.Feeder(stdin, sender(chan), chan.shutdown_write,
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
