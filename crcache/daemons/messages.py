"""Messages between crcache's processes on their unix sockets.

What the agent, the ssh connection holders and their clients say to each
other, once :mod:`crcache.daemons.ipc` has made sure who is at the other
end: a 4-byte length, then marshal data (both ends run the same
interpreter); descriptors ride along as ``SCM_RIGHTS`` on the first byte.
A reader takes no more than one message at a time, refuses messages over
:data:`MAX_MESSAGE` and more descriptors than it expects, and closes the
descriptors of a message it drops. (The agent's client, which must stay
lighter still, frames its two messages the same way by hand.)

Builtin modules only, as :mod:`crcache.daemons.ipc`.
"""

from __future__ import annotations

import os
import sys

#: Largest message either end accepts (an agent request carries the
#: whole environment).
MAX_MESSAGE = 32 << 20


def send_message(sock, message: object, fds: list[int] | None = None
                 ) -> None:
    """Send one message, with ``fds`` attached if given."""
    import _socket
    import marshal
    data = marshal.dumps(message)
    payload = len(data).to_bytes(4, 'big') + data
    if fds:
        sock.sendmsg([payload], [(
            _socket.SOL_SOCKET, _socket.SCM_RIGHTS,
            b''.join(fd.to_bytes(4, sys.byteorder, signed=True)
                     for fd in fds))])
    else:
        sock.sendall(payload)


class Incoming:
    """One message arriving in pieces, with the descriptors sent along.

    Reads no further than the message's end (later messages stay in the
    socket), refuses more than ``max_fds`` descriptors and messages over
    :data:`MAX_MESSAGE`, and owns the descriptors received until
    :meth:`take_fds`: :meth:`close` closes them, whatever went wrong.
    """

    def __init__(self, max_fds: int = 0) -> None:
        self.max_fds = max_fds
        self.data = bytearray()
        self.fds: list[int] = []
        self.done = False
        self.message: object = None

    def _wanted(self) -> int:
        if len(self.data) < 4:
            return 4 - len(self.data)
        size = int.from_bytes(self.data[:4], 'big')
        if size > MAX_MESSAGE:
            raise ValueError(f'message of {size} bytes is too large')
        return min(4 + size - len(self.data), 1 << 20)

    def receive(self, sock) -> bool:
        """Take what one read of ``sock`` gives; True once complete.

        Raises EOFError if the peer hangs up first, ValueError for a
        malformed message, OSError (BlockingIOError on a non-blocking
        socket with nothing to read) from the socket.
        """
        import _socket
        import marshal
        wanted = self._wanted()
        if self.max_fds:
            data, ancdata, flags, _ = sock.recvmsg(
                wanted, _socket.CMSG_SPACE(self.max_fds * 4),
                _socket.MSG_CMSG_CLOEXEC)
            for level, kind, blob in ancdata:
                if (level == _socket.SOL_SOCKET
                        and kind == _socket.SCM_RIGHTS):
                    usable = len(blob) - len(blob) % 4
                    self.fds.extend(
                        int.from_bytes(blob[i:i + 4], sys.byteorder,
                                       signed=True)
                        for i in range(0, usable, 4))
            if flags & _socket.MSG_CTRUNC or len(self.fds) > self.max_fds:
                raise ValueError('too many descriptors')
        else:
            data = sock.recv(wanted)
        if not data:
            raise EOFError
        self.data += data
        if len(self.data) >= 4 and self._wanted() == 0:
            try:
                self.message = marshal.loads(bytes(self.data[4:]))
            except (EOFError, TypeError, ValueError) as err:
                raise ValueError(f'malformed message: {err}')
            self.done = True
        return self.done

    def take_fds(self) -> list[int]:
        """The descriptors received, now the caller's to close."""
        fds, self.fds = self.fds, []
        return fds

    def close(self) -> None:
        """Close the descriptors received (if not taken)."""
        for fd in self.take_fds():
            try:
                os.close(fd)
            except OSError:
                pass


def only_request(sock) -> bool:
    """Whether the client that sent us its request still waits for the
    answer and has sent nothing more.

    One that gave up waiting has hung up, and runs the command itself:
    it must not run here too. One that sent more than its request is
    not speaking our protocol.
    """
    import _socket
    try:
        sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


def receive_message(sock, with_fds: int = 0,
                    deadline: float | None = None
                    ) -> tuple[object, list[int]]:
    """Receive one message and the descriptors (up to ``with_fds``) sent
    with it, by ``deadline`` (a ``time.monotonic()`` value) if given.

    Raises EOFError if the peer hangs up first, TimeoutError at the
    deadline, ValueError for a malformed message; received descriptors
    are closed on every error.
    """
    import time
    incoming = Incoming(with_fds)
    saved = sock.gettimeout()
    try:
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError('no complete message in time')
                sock.settimeout(left)
            if incoming.receive(sock):
                return incoming.message, incoming.take_fds()
    finally:
        incoming.close()
        if deadline is not None:
            try:
                sock.settimeout(saved)
            except OSError:
                pass
