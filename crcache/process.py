"""Run a local child process the way a shell runs a foreground job.

While the child runs, crcache waits for it and reports its status: SIGINT
and SIGQUIT (which a terminal sends to the whole foreground process group,
the child included) are left to the child to act on, while SIGTERM and
SIGHUP (which are aimed at crcache alone) are passed on to the child so
that it is not orphaned.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator

_FORWARDED = (signal.SIGTERM, signal.SIGHUP)
_LEFT_TO_CHILD = (signal.SIGINT, signal.SIGQUIT)


def exit_status(returncode: int) -> int:
    """Map a Popen return code to a shell-style status (128+N on signal)."""
    return 128 - returncode if returncode < 0 else returncode


class Foreground:
    """Signal policy for the time crcache waits on one child.

    A signal to forward that arrives before the child is known (between
    fork and :meth:`started`) is held and delivered as soon as it is.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pending: list[int] = []

    def forward(self, signum: int, frame: object) -> None:
        if self.proc is None:
            self.pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def started(self, proc: subprocess.Popen) -> None:
        """Record the child and deliver what arrived before it."""
        self.proc = proc
        pending, self.pending = self.pending, []
        for signum in pending:
            self.forward(signum, None)


@contextlib.contextmanager
def foreground() -> Iterator[Foreground]:
    """Hold the policy above while the body starts and waits for a child.

    Handlers (never ``SIG_IGN``, which ``exec`` would pass on to the
    child) are installed first and restored afterwards.
    """
    job = Foreground()

    def swallow(signum: int, frame: object) -> None:
        pass

    saved = {}
    for sig in _FORWARDED + _LEFT_TO_CHILD:
        with contextlib.suppress(ValueError):  # not the main thread
            saved[sig] = signal.signal(
                sig, job.forward if sig in _FORWARDED else swallow)
    try:
        yield job
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run(args: list[str], stdin: int, stdout: int, stderr: int,
        cwd: str | None = None, env: dict[str, str] | None = None) -> int:
    """Run ``args`` with the given descriptors; return its exit status."""
    with foreground() as job:
        proc = subprocess.Popen(args, stdin=stdin, stdout=stdout,
                                stderr=stderr, cwd=cwd, env=env)
        job.started(proc)
        return exit_status(proc.wait())
