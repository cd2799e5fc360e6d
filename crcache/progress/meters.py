"""The bytes a copy has moved, counted where the copy happens.

Copies count their bytes on a :class:`Meter` that the cache installs for
the calling thread (:func:`metering`) and copy code finds with
:func:`meter`, so the drivers' ``copy_in``/``copy_out`` need no extra
parameter, and copies in several threads keep their counts apart. A
thread that nobody reports on gets :data:`IDLE`, which counts nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any


class Meter:
    """The bytes a copy has moved so far; safe to use from any thread."""

    #: Whether anyone reads this meter (copy code may skip work if not).
    active = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = 0
        self._probes: list[Callable[[], int]] = []
        #: How many bytes the copy will move, when known.
        self.total: int | None = None

    def expect(self, total: int | None) -> None:
        """Say how many bytes the copy will move."""
        self.total = total

    def add(self, count: int) -> None:
        """Count ``count`` more bytes moved."""
        with self._lock:
            self._done += count

    @property
    def done(self) -> int:
        """The bytes moved so far."""
        with self._lock:
            return self._done + sum(_probe(p) for p in self._probes)

    @contextlib.contextmanager
    def watching(self, probe: Callable[[], int]) -> Iterator[None]:
        """Count what ``probe()`` reports while the block runs.

        For bytes that another process moves through a descriptor of
        ours (its shared file offset tells how far it got). The probe is
        never called once the block has ended, so the descriptor may be
        closed right after.
        """
        with self._lock:
            self._probes.append(probe)
        try:
            yield
        finally:
            with self._lock:
                self._probes.remove(probe)
                self._done += _probe(probe)

    def counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks``, counted as they are consumed."""
        for chunk in chunks:
            self.add(len(chunk))
            yield chunk

    def writer(self, fileobj: IO[bytes]) -> Any:
        """A file object for writing to ``fileobj`` that counts the bytes."""
        return _CountingWriter(fileobj, self)


def _probe(probe: Callable[[], int]) -> int:
    try:
        return probe()
    except (OSError, ValueError):
        return 0


class _CountingWriter:
    def __init__(self, fileobj: IO[bytes], meter: Meter) -> None:
        self._fileobj = fileobj
        self._meter = meter

    def write(self, data: bytes) -> int:
        written = self._fileobj.write(data)
        self._meter.add(len(data))
        return written

    def flush(self) -> None:
        self._fileobj.flush()


class _IdleMeter(Meter):
    """The meter of a thread that no one reports on: counts nothing."""

    active = False

    def expect(self, total: int | None) -> None:
        pass

    def add(self, count: int) -> None:
        pass

    @contextlib.contextmanager
    def watching(self, probe: Callable[[], int]) -> Iterator[None]:
        yield

    def counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        return iter(chunks)

    def writer(self, fileobj: IO[bytes]) -> Any:
        return fileobj


IDLE = _IdleMeter()
_local = threading.local()


def meter() -> Meter:
    """The meter of the copy this thread is doing (:data:`IDLE` if none)."""
    return getattr(_local, 'meter', None) or IDLE


@contextlib.contextmanager
def metering(current: Meter) -> Iterator[Meter]:
    """Make ``current`` this thread's meter for the block."""
    previous = getattr(_local, 'meter', None)
    _local.meter = current
    try:
        yield current
    finally:
        _local.meter = previous
