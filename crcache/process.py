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
from typing import Any

_FORWARDED = (signal.SIGTERM, signal.SIGHUP)
_LEFT_TO_CHILD = (signal.SIGINT, signal.SIGQUIT)
#: A remote command sees no terminal: every one of these is passed on.
REMOTE = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)


def exit_status(returncode: int) -> int:
    """Map a Popen return code to a shell-style status (128+N on signal)."""
    return 128 - returncode if returncode < 0 else returncode


class Foreground:
    """Signal policy for the time crcache waits on one running command.

    Signals in ``forwarded`` go to the target's ``send_signal``; those in
    ``left_to_command`` are swallowed (the command got them from the
    terminal itself). A forwarded signal that arrives before the target
    is known (between fork and :meth:`started`) is held and delivered as
    soon as it is.
    """

    def __init__(self, forwarded: tuple = _FORWARDED,
                 left_to_command: tuple = _LEFT_TO_CHILD) -> None:
        self.forwarded = forwarded
        self.left_to_command = left_to_command
        self.target: Any = None
        self.pending: list[int] = []

    def forward(self, signum: int, frame: object) -> None:
        if self.target is None:
            self.pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            self.target.send_signal(signum)

    def started(self, target: Any) -> None:
        """Record what to signal and deliver what arrived before it."""
        self.target = target
        pending, self.pending = self.pending, []
        for signum in pending:
            self.forward(signum, None)


@contextlib.contextmanager
def foreground(forwarded: tuple = _FORWARDED,
               left_to_command: tuple = _LEFT_TO_CHILD
               ) -> Iterator[Foreground]:
    """Hold the policy above while the body starts and waits for a command.

    Handlers (never ``SIG_IGN``, which ``exec`` would pass on to a child)
    are installed first and restored afterwards.
    """
    job = Foreground(forwarded, left_to_command)

    def swallow(signum: int, frame: object) -> None:
        pass

    saved = {}
    for sig in forwarded + left_to_command:
        with contextlib.suppress(ValueError):  # not the main thread
            saved[sig] = signal.signal(
                sig, job.forward if sig in forwarded else swallow)
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
