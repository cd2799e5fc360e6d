"""What the shared transports need of a backend: a way to run commands.

Every source that makes resources runs command lines on them with
descriptors for stdin, stdout and stderr (see
:meth:`crcache.sources.base.BackendSource.run`); the copies over ``run``
(:mod:`crcache.transport.tarcopy`) need nothing else, so they are
written against this protocol rather than the source classes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

Ref = dict[str, Any]
"""A backend's reference to one resource; stored as JSON by the cache."""


class Runner(Protocol):
    """Runs command lines on a backend's resources."""

    #: The source's name, for messages.
    name: str

    def run(self, ref: Ref, argv: list[str], stdin: int, stdout: int,
            stderr: int) -> int:
        """Run ``argv`` on the resource ``ref``; return its exit status."""

    def capture(self, ref: Ref, argv: list[str],
                input: bytes = b'') -> tuple[int, bytes, bytes]:
        """Run ``argv`` with ``input``; return (status, out, err)."""


def capture(run: Callable[[int, int, int], int],
            input: bytes = b'') -> tuple[int, bytes, bytes]:
    """Call ``run(stdin, stdout, stderr)`` with pipes; collect the output.

    Readers and the writer are threads so that a command producing more
    than a pipe buffer never deadlocks against us.
    """
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        while data := os.read(fd, 65536):
            chunks[fd].append(data)

    def feed() -> None:
        try:
            view = memoryview(input)
            while view:
                view = view[os.write(in_w, view):]
        except BrokenPipeError:
            pass
        finally:
            os.close(in_w)

    threads = [threading.Thread(target=drain, args=(out_r,), daemon=True),
               threading.Thread(target=drain, args=(err_r,), daemon=True),
               threading.Thread(target=feed, daemon=True)]
    for t in threads:
        t.start()
    try:
        status = run(in_r, out_w, err_w)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        for t in threads:
            t.join()
        os.close(out_r)
        os.close(err_r)
    return status, b''.join(chunks[out_r]), b''.join(chunks[err_r])

