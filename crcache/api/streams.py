"""A command's standard streams as :meth:`crcache.Instance.run` takes
them: bytes to feed, descriptors, file objects, or pipes to capture."""

from __future__ import annotations

import os
import subprocess
import threading
from typing import IO, Any, Union

#: What ``stdin`` may be: None (this process's stdin), bytes to feed,
#: a descriptor, a file object with ``fileno()``, or subprocess.DEVNULL.
Input = Union[None, bytes, bytearray, memoryview, int, IO[Any]]
#: What ``stdout``/``stderr`` may be: None (this process's), a
#: descriptor, a file object, subprocess.DEVNULL or subprocess.PIPE
#: (``stderr`` also subprocess.STDOUT).
Output = Union[None, int, IO[Any]]


def fd_of(stream: Any, what: str) -> int:
    """The descriptor of a file object (flushed first) or a descriptor."""
    if isinstance(stream, int) and not isinstance(stream, bool):
        if stream < 0:
            raise ValueError(f'{what}: {stream} is not a descriptor')
        return stream
    fileno = getattr(stream, 'fileno', None)
    if fileno is None:
        raise TypeError(f'{what} must be None, bytes, a descriptor or a '
                        f'file object, not {type(stream).__name__}')
    flush = getattr(stream, 'flush', None)
    if flush is not None and what != 'stdin':
        flush()
    return fileno()


def with_streams(run: Any, stdin: Input, stdout: Output,
                  stderr: Output) -> tuple[int, bytes | None, bytes | None]:
    """Call ``run(stdin_fd, stdout_fd, stderr_fd)`` with the streams the
    caller asked for; return its status and what was captured.

    Feeding and capturing are threads, so a command writing more than a
    pipe holds never blocks against us.
    """
    to_close: list[int] = []
    threads: list[threading.Thread] = []
    captured: dict[str, list[bytes]] = {}
    readers: list[tuple[str, int]] = []

    def pipe() -> tuple[int, int]:
        r, w = os.pipe()
        to_close.extend((r, w))
        return r, w

    def close(fd: int) -> None:
        if fd in to_close:
            to_close.remove(fd)
            os.close(fd)

    try:
        if stdin is None:
            in_fd = 0
        elif isinstance(stdin, (bytes, bytearray, memoryview)):
            in_fd, feed_fd = pipe()
            data = memoryview(bytes(stdin))
            to_close.remove(feed_fd)  # the feeder closes it

            def feed() -> None:
                view = data
                try:
                    while view:
                        view = view[os.write(feed_fd, view):]
                except OSError:  # the command stopped reading
                    pass
                finally:
                    os.close(feed_fd)

            threads.append(threading.Thread(target=feed, daemon=True))
        elif isinstance(stdin, int) and stdin == subprocess.DEVNULL:
            in_fd = os.open(os.devnull, os.O_RDONLY)
            to_close.append(in_fd)
        elif isinstance(stdin, int) and stdin in (subprocess.PIPE,
                                                  subprocess.STDOUT):
            raise ValueError('stdin may not be subprocess.PIPE or STDOUT: '
                             'give the bytes to feed instead')
        elif isinstance(stdin, str):
            raise TypeError('stdin takes bytes, not str')
        else:
            in_fd = fd_of(stdin, 'stdin')

        def output(stream: Output, what: str, default: int) -> int:
            if stream is None:
                return default
            if isinstance(stream, int) and stream == subprocess.PIPE:
                r, w = pipe()
                captured[what] = []
                readers.append((what, r))
                return w
            if isinstance(stream, int) and stream == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_WRONLY)
                to_close.append(fd)
                return fd
            if isinstance(stream, int) and stream == subprocess.STDOUT:
                raise ValueError(f'{what} may not be subprocess.STDOUT')
            return fd_of(stream, what)

        out_fd = output(stdout, 'stdout', 1)
        if isinstance(stderr, int) and stderr == subprocess.STDOUT:
            err_fd = out_fd
        else:
            err_fd = output(stderr, 'stderr', 2)

        def drain(what: str, fd: int) -> None:
            chunks = captured[what]
            while data := os.read(fd, 65536):
                chunks.append(data)

        threads.extend(threading.Thread(target=drain, args=reader,
                                        daemon=True) for reader in readers)
        for thread in threads:
            thread.start()
        try:
            status = run(in_fd, out_fd, err_fd)
        finally:
            # Our copies of the command's ends: the readers then see end
            # of file once the command's own copies are closed.
            for fd in (in_fd, out_fd, err_fd):
                close(fd)
            for thread in threads:
                thread.join()
    finally:
        for fd in list(to_close):
            close(fd)

    def got(what: str) -> bytes | None:
        return b''.join(captured[what]) if what in captured else None

    return status, got('stdout'), got('stderr')
