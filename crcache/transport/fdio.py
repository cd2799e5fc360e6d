"""Moving bytes between file descriptors and remote streams.

Remote backends (an ssh channel, a Docker exec connection) take the
caller's stdin until its end and hand output to the caller's descriptors;
these are the pieces they share.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

CHUNK = 1 << 18


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Feeder:
    """Copies a descriptor into ``send`` until EOF, then calls ``eof``.

    Runs in a thread of its own, which :meth:`stop` ends at once even
    while the descriptor has nothing to read (a remote command may finish
    without reading all its input). Errors on either side just end it.
    """

    def __init__(self, fd: int, send: Callable[[bytes], object],
                 eof: Callable[[], object],
                 errors: tuple[type[BaseException], ...] = (OSError,)
                 ) -> None:
        self.fd = fd
        self.send = send
        self.eof = eof
        self.errors = errors
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.fd, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                data = os.read(self.fd, CHUNK)
                if not data:
                    self.eof()
                    return
                self.send(data)
        except (OSError, EOFError, *self.errors):
            return

    def stop(self) -> None:
        """End the copying and release the thread's resources."""
        os.write(self._wake_w, b'x')
        self._thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)
