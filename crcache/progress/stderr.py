"""Reporting slow work on stderr: a live line on a terminal, log lines
elsewhere.

On a terminal, :class:`Progress` keeps one status line at the bottom of
stderr, redrawn in place a few times a second (what, how far, how fast,
for how long) and cleared, or replaced by a summary, when the work is
done; anything else written to stderr meanwhile (warnings, hook output)
is written above it. Anywhere else it writes one plain line per event,
stamped with the UTC time. :func:`reporter` picks the reporter for a
command: this one, or the quiet :class:`~crcache.progress.tasks.Reporter`
for ``-q``.

No thread starts until a task does.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from crcache.progress.meters import Meter, metering
from crcache.progress.tasks import Reporter, Task, write_all
from crcache.progress.units import duration, size, stamp

#: Redraws of the live line per second.
TICK = 0.25
#: A copy is shown on a terminal once it has taken this long...
COPY_AFTER = 1.0
#: ... and logged once it has taken this long.
COPY_LOG_AFTER = 3.0
_CLEAR = '\r\x1b[K'


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
                write_all(self._fd, data)
                return
            self._clear()
            write_all(self._fd, data)
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
