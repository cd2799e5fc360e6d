"""What slow work is reported as, and the reporter that keeps quiet.

A :class:`Task` is one piece of slow work (how many parts, how many
bytes, for how long), rendered by whoever reports it; a
:class:`Reporter` is where work is reported. The base :class:`Reporter`
says nothing (``-q``, and the library when nobody asked for progress);
:class:`crcache.progress.stderr.Progress` shows it on stderr.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Protocol

from crcache.progress.meters import Meter
from crcache.progress.units import duration, size

#: The span the rate of a copy in progress is measured over.
RATE_WINDOW = 3.0


class _Owner(Protocol):
    """Who a task reports to (:class:`crcache.progress.stderr.Progress`)."""

    def _update(self, task: Task, message: str) -> None: ...

    def _step(self, task: Task, message: str) -> None: ...

    def _close(self, task: Task) -> None: ...


class Task:
    """One piece of slow work being reported; use it with ``with``.

    ``count`` parts (instances, say) are done one :meth:`step` at a time;
    ``counting`` is what the live line calls a done part ("ready"). A
    task is shown on a terminal once it has taken ``after`` seconds, and
    logged once it has taken ``log_after`` (default: the same).
    """

    def __init__(self, owner: _Owner | None, message: str,
                 count: int | None = None, counting: str = 'done',
                 after: float = 0.0, log_after: float | None = None,
                 bytes_meter: Meter | None = None) -> None:
        self._owner = owner
        self.message = message
        self.count = count
        self.counting = counting
        self.done = 0
        self.after = after
        self.log_after = after if log_after is None else log_after
        self.meter = bytes_meter
        self.started = time.monotonic()
        #: Whether the user has seen it (drawn, or logged).
        self.shown = False
        self.summary: str | None = None
        self._samples: collections.deque = collections.deque()
        self._closed = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, message: str) -> None:
        """Say what the work is now (logged when it changes)."""
        if self._owner is None:
            self.message = message
        else:
            self._owner._update(self, message)

    def step(self, message: str) -> None:
        """One more part is done; ``message`` says which ("box-0 ready")."""
        if self._owner is None:
            self.done += 1
        else:
            self._owner._step(self, message)

    def finish(self, summary: str) -> None:
        """End the task with a summary, shown if the task was."""
        self.summary = summary
        self.close()

    def close(self) -> None:
        """End the task (its live line goes)."""
        if self._closed:
            return
        self._closed = True
        if self._owner is not None:
            self._owner._close(self)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- rendering (under the owner's lock) --------------------------------

    def detail(self, now: float, elapsed: bool = True) -> str:
        """How far the work is, for the live line or a log line."""
        parts = []
        if self.count is not None:
            parts.append(f'{self.done}/{self.count} {self.counting}')
        if self.meter is not None:
            done = self.meter.done
            total = self.meter.total
            if total:
                parts.append(f'{size(min(done, total))} of {size(total)}')
            else:
                parts.append(size(done))
            rate = self._rate(now, done)
            if rate is not None:
                parts.append(f'{size(rate)}/s')
        if elapsed:
            parts.append(duration(now - self.started))
        return ', '.join(parts)

    def _rate(self, now: float, done: int) -> float | None:
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        then, before = samples[0]
        if now - then < 0.5:
            span = now - self.started
            return done / span if span >= 0.5 else None
        return (done - before) / (now - then)


class Reporter:
    """Where slow work is reported. This one keeps quiet (``-q``).

    Hook scripts' output still goes to stderr through :meth:`output`.
    """

    def event(self, message: str) -> None:
        """Something happened that a log of the command should show."""

    def task(self, message: str, *, count: int | None = None,
             counting: str = 'done', after: float = 0.0,
             log_after: float | None = None,
             bytes_meter: Meter | None = None) -> Task:
        """Start reporting slow work; see :class:`Task`."""
        return Task(None, message, count, counting, after, log_after,
                    bytes_meter)

    @contextlib.contextmanager
    def copying(self, src: str, dst: str) -> Iterator[None]:
        """Report the copy done in the block, from its thread's meter."""
        yield

    def output(self, data: bytes) -> None:
        """Pass on output of crcache's children (hooks) to stderr."""
        write_all(2, data)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; a failed write is dropped."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass
