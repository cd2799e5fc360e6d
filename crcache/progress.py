"""Progress of slow work on stderr: a live line on a terminal, log lines
elsewhere.

Most crcache commands finish in milliseconds and say nothing. The few
things that can take a while (provisioning, filling a reserve, waiting
for room or for another process, copying large files) are reported
here, so that a user at a terminal sees what is going on and a CI log
shows what crcache was doing and what it waited for:

* on a terminal, one status line at the bottom of stderr, redrawn in
  place a few times a second (what, how far, how fast, for how long) and
  cleared, or replaced by a summary, when the work is done. Anything else
  written to stderr meanwhile (warnings, hook output) is written above it;
* anywhere else, one plain line per event, stamped with the UTC time;
* with ``-q``, nothing: :class:`Reporter`, which is also what the library
  reports to when nobody asked for progress.

Copies count their bytes on a :class:`Meter` that the cache installs for
the calling thread (:func:`metering`) and copy code finds with
:func:`meter`, so the drivers' ``copy_in``/``copy_out`` need no extra
parameter, and copies in several threads keep their counts apart.

Nothing here starts a thread until a task is started, and commands that
do nothing slow never import this module.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

#: Redraws of the live line per second.
TICK = 0.25
#: A copy is shown on a terminal once it has taken this long...
COPY_AFTER = 1.0
#: ... and logged once it has taken this long.
COPY_LOG_AFTER = 3.0
#: The span the rate of a copy in progress is measured over.
RATE_WINDOW = 3.0
_CLEAR = '\r\x1b[K'


def size(count: float) -> str:
    """``count`` bytes for people: 512 B, 1.5 KiB, 200.0 MiB."""
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(count) < 1024 or unit == 'GiB':
            break
        count /= 1024
    if unit == 'B':
        return f'{count:.0f} B'
    return f'{count:.1f} {unit}'


def duration(seconds: float) -> str:
    """An elapsed time for people: 0.4s, 12s, 3m05s, 1h02m."""
    if seconds < 10:
        return f'{seconds:.1f}s'
    seconds = int(seconds)
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def stamp(when: float | None = None) -> str:
    """ISO 8601 UTC time, to the second: 2026-12-02T06:30:01Z."""
    from crcache import stamps
    return stamps.utc(time.time() if when is None else when, millis=False)


# -- byte meters ---------------------------------------------------------


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


# -- reporting -----------------------------------------------------------


class Task:
    """One piece of slow work being reported; use it with ``with``.

    ``count`` parts (instances, say) are done one :meth:`step` at a time;
    ``counting`` is what the live line calls a done part ("ready"). A
    task is shown on a terminal once it has taken ``after`` seconds, and
    logged once it has taken ``log_after`` (default: the same).
    """

    def __init__(self, owner: Progress | None, message: str,
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
        _write_all(2, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass


class Progress(Reporter):
    """Reports slow work to ``stream`` (stderr), live if it is a terminal.

    ``console`` is the logging handler that writes to the same stream:
    on a terminal it is given a stream that writes above the live line.
    """

    def __init__(self, stream: IO[str], live: bool,
                 console: Any = None) -> None:
        self._stream = stream
        self._live = live
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._tasks: list[Task] = []
        self._ticker: threading.Thread | None = None
        #: What the live line shows now ('' when it is not drawn).
        self._line = ''
        #: Something else left a line unfinished: no drawing until it ends.
        self._midline = False
        try:
            self._fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = 2
        if live and console is not None:
            console.setStream(_Above(self))

    # -- events and tasks --------------------------------------------------

    def event(self, message: str) -> None:
        with self._lock:
            if self._live:
                self._above(f'crcache: {message}\n')
            else:
                self._log(message)

    def task(self, message: str, *, count: int | None = None,
             counting: str = 'done', after: float = 0.0,
             log_after: float | None = None,
             bytes_meter: Meter | None = None) -> Task:
        task = Task(self, message, count, counting, after, log_after,
                    bytes_meter)
        with self._lock:
            self._tasks.append(task)
            if self._delay(task) <= 0:
                self._show(task, task.started)
            if self._ticker is None and (self._live or not task.shown):
                self._ticker = threading.Thread(
                    target=self._tick, name='crcache-progress', daemon=True)
                self._ticker.start()
            else:
                self._wake.notify()
        return task

    @contextlib.contextmanager
    def copying(self, src: str, dst: str) -> Iterator[None]:
        current = Meter()
        with self.task(f'copying {src} to {dst}', after=COPY_AFTER,
                       log_after=COPY_LOG_AFTER,
                       bytes_meter=current) as task, metering(current):
            yield
            done, elapsed = current.done, task.elapsed
            task.finish(f'copied {src} to {dst}: {size(done)} in '
                        f'{duration(elapsed)} '
                        f'({size(done / max(elapsed, 1e-3))}/s)')

    def output(self, data: bytes) -> None:
        with self._lock:
            if not self._live:
                _write_all(self._fd, data)
                return
            self._clear()
            _write_all(self._fd, data)
            self._midline = not data.endswith(b'\n')
            self._draw()

    # -- called by tasks ---------------------------------------------------

    def _update(self, task: Task, message: str) -> None:
        with self._lock:
            changed = message != task.message
            task.message = message
            if changed and task.shown:
                if self._live:
                    self._draw()
                else:
                    self._log(message)

    def _step(self, task: Task, message: str) -> None:
        with self._lock:
            task.done += 1
            if not task.shown:
                return
            if self._live:
                self._draw()
            else:
                count = f' ({task.done}/{task.count})' if task.count else ''
                self._log(message + count)

    def _close(self, task: Task) -> None:
        with self._lock:
            if task in self._tasks:
                self._tasks.remove(task)
            if task.shown and task.summary:
                if self._live:
                    self._above(f'crcache: {task.summary}\n')
                else:
                    self._log(task.summary)
            elif self._live:
                self._draw()
            self._wake.notify()

    # -- drawing and logging (under the lock) ------------------------------

    def _delay(self, task: Task) -> float:
        return task.after if self._live else task.log_after

    def _show(self, task: Task, now: float) -> None:
        task.shown = True
        if self._live:
            self._draw()
            return
        progress = task.detail(now, elapsed=False) if (
            task.done or task.meter is not None) else ''
        self._log(task.message + (f' ({progress})' if progress else ''))

    def _tick(self) -> None:
        with self._lock:
            while self._tasks:
                now = time.monotonic()
                wake = None
                for task in list(self._tasks):
                    due = task.started + self._delay(task)
                    if task.shown:
                        continue
                    if due <= now:
                        self._show(task, now)
                    else:
                        wake = due if wake is None else min(wake, due)
                if self._live and any(t.shown for t in self._tasks):
                    self._draw()
                    wake = now + TICK if wake is None else min(wake,
                                                               now + TICK)
                self._wake.wait(None if wake is None
                                else max(0.01, wake - now))
            self._ticker = None
            if self._live:
                self._draw()

    def _render(self) -> str:
        shown = [t for t in self._tasks if t.shown]
        if not shown:
            return ''
        task = shown[-1]
        others = f' [+{len(shown) - 1} more]' if len(shown) > 1 else ''
        tail = f' ({task.detail(time.monotonic())}){others}'
        width = self._width() - 1
        room = width - len('crcache: ') - len(tail)
        message = task.message
        if len(message) > room:
            message = message[:max(0, room - 3)] + '...'
        return f'crcache: {message}{tail}'[:width]

    def _width(self) -> int:
        # $COLUMNS first, as shutil.get_terminal_size() does.
        try:
            return int(os.environ['COLUMNS'])
        except (KeyError, ValueError):
            pass
        try:
            return os.get_terminal_size(self._fd).columns or 80
        except OSError:
            return 80

    def _draw(self) -> None:
        if self._midline:
            return
        text = self._render()
        if text == self._line:
            return
        self._write((_CLEAR + text) if text else _CLEAR)
        self._line = text

    def _clear(self) -> None:
        if self._line:
            self._write(_CLEAR)
            self._line = ''

    def _above(self, text: str) -> None:
        """Write ``text`` where the live line is, and the line below it."""
        with self._lock:
            self._clear()
            self._write(text)
            self._midline = bool(text) and not text.endswith('\n')
            self._draw()

    def _log(self, message: str) -> None:
        self._write(f'crcache: {stamp()} {message}\n')

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass


class _Above:
    """The stream a logging handler writes to while a live line is up."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def write(self, text: str) -> None:
        self._progress._above(text)

    def flush(self) -> None:
        pass


def reporter(stream: IO[str], quiet: bool = False,
             console: Any = None) -> Reporter:
    """The reporter for a command whose stderr is ``stream``."""
    if quiet:
        return Reporter()
    try:
        live = stream.isatty() and os.environ.get('TERM') != 'dumb'
    except (AttributeError, OSError, ValueError):
        live = False
    return Progress(stream, live, console)
