"""Run a local child process the way a shell runs a foreground job.

While the child runs, crcache waits for it and reports its status: SIGINT
and SIGQUIT (which a terminal sends to the whole foreground process group,
the child included) are left to the child to act on, while SIGTERM and
SIGHUP (which are aimed at crcache alone) are passed on to the child so
that it is not orphaned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

_FORWARDED = (signal.SIGTERM, signal.SIGHUP)
_LEFT_TO_CHILD = (signal.SIGINT, signal.SIGQUIT)


def exit_status(returncode: int) -> int:
    """Map a Popen return code to a shell-style status (128+N on signal)."""
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def foreground(proc: subprocess.Popen | None = None) -> Iterator[list]:
    """Hold the signal policy above while the body waits for a child.

    Yields a list; put the Popen in it once started so that forwarded
    signals reach it. Handlers (never ``SIG_IGN``, which ``exec`` would
    pass on to the child) are installed first and restored afterwards.
    """
    target: list[subprocess.Popen] = [proc] if proc else []

    def forward(signum: int, frame: object) -> None:
        for p in target:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)

    def swallow(signum: int, frame: object) -> None:
        pass

    saved = {}
    for sig in _FORWARDED + _LEFT_TO_CHILD:
        with contextlib.suppress(ValueError):  # not the main thread
            saved[sig] = signal.signal(
                sig, forward if sig in _FORWARDED else swallow)
    try:
        yield target
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run(args: list[str], stdin: int, stdout: int, stderr: int,
        cwd: str | None = None, env: dict[str, str] | None = None) -> int:
    """Run ``args`` with the given descriptors; return its exit status."""
    with foreground() as target:
        proc = subprocess.Popen(args, stdin=stdin, stdout=stdout,
                                stderr=stderr, cwd=cwd, env=env)
        target.append(proc)
        return exit_status(proc.wait())
