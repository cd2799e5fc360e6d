"""How signals sent to crcache reach the command it runs, and its status.

While a command runs, crcache waits for it and reports its status, the
way a shell waits for a foreground job. Signals are handled in one of two
ways:

* A local command whose stdin is a terminal shares crcache's process
  group, as a shell's foreground job does: SIGINT and SIGQUIT come from
  the terminal to the whole group, the command included, and are left to
  it; SIGTERM and SIGHUP (aimed at crcache alone) are passed on.
* Otherwise (a local command without a terminal, every remote command)
  the command runs in a process group of its own, which nothing but
  crcache signals: SIGINT, SIGQUIT, SIGTERM and SIGHUP are passed on to
  that whole group (a ``trap`` in the command runs), and crcache keeps
  waiting for the command's own exit status, as a shell would. A second
  SIGINT ends crcache at once (exit 130): the command is killed, or on a
  remote instance hung up on, and one line on stderr says which command
  on which instance was given up on.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

_FORWARDED = (signal.SIGTERM, signal.SIGHUP)
_LEFT_TO_CHILD = (signal.SIGINT, signal.SIGQUIT)
#: For a command in a group of its own: every one of these is passed on.
REMOTE = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)

#: What :func:`abandon_message` names: the instance a command runs on
#: and the command (set around ``Cache.run`` by :func:`naming`).
_running: list[tuple[str, list[str]]] = []


@contextlib.contextmanager
def naming(instance: str, argv: list[str]) -> Iterator[None]:
    """Name ``instance`` and ``argv`` in what a second SIGINT reports.

    Several threads may run commands at once (the Python API): each
    takes its own entry out again, and the latest one is reported.
    """
    entry = (instance, argv)
    _running.append(entry)
    try:
        yield
    finally:
        # By identity: two threads may run the same command line.
        for i in range(len(_running) - 1, -1, -1):
            if _running[i] is entry:
                del _running[i]
                break


def exit_status(returncode: int) -> int:
    """Map a Popen return code to a shell-style status (128+N on signal)."""
    return 128 - returncode if returncode < 0 else returncode


def abandon_message(fate: str) -> str:
    """The line said when a second SIGINT gives up on the command."""
    what = 'the command'
    where = ''
    if _running:
        instance, argv = _running[-1]
        line = ' '.join(argv) if argv else 'the shell'
        if len(line) > 60:
            line = line[:57] + '...'
        what = shlex.quote(line) if argv else line
        where = f'{instance}: '
    return (f'crcache: {where}interrupted again: gave up waiting for '
            f'{what}, which {fate}\n')


class Foreground:
    """Signal policy for the time crcache waits on one running command.

    Signals in ``forwarded`` go to the target's ``send_signal``; those in
    ``left_to_command`` are swallowed (the command got them from the
    terminal itself). A forwarded signal that arrives before the target
    is known (between fork and :meth:`started`) is held and delivered as
    soon as it is. When SIGINT is forwarded, one that comes after a
    signal was passed on already gives up on the command: the target's
    ``abandon`` is called if it has one (it says what became of the
    command), a line on stderr says so, and KeyboardInterrupt ends
    crcache with status 130.
    """

    def __init__(self, forwarded: tuple = _FORWARDED,
                 left_to_command: tuple = _LEFT_TO_CHILD) -> None:
        self.forwarded = forwarded
        self.left_to_command = left_to_command
        self.target: Any = None
        self.pending: list[int] = []
        self.passed_on = False

    def forward(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self.passed_on:
            self._abandon()
        self.passed_on = True
        if self.target is None:
            self.pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            self.target.send_signal(signum)

    def _abandon(self) -> None:
        fate = 'may still be running'
        if self.target is None:
            fate = 'may have started'
        elif hasattr(self.target, 'abandon'):
            with contextlib.suppress(Exception):
                fate = self.target.abandon()
        with contextlib.suppress(OSError):
            # Not sys.stderr: the main thread may be writing to it.
            os.write(2, abandon_message(fate).encode(errors='replace'))
        raise KeyboardInterrupt

    def started(self, target: Any) -> None:
        """Record what to signal and deliver what arrived before it."""
        self.target = target
        pending, self.pending = self.pending, []
        for signum in pending:
            with contextlib.suppress(ProcessLookupError):
                target.send_signal(signum)


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


class _Group:
    """A local command in a process group of its own, signalled whole."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(OSError):  # it ended meanwhile
            os.killpg(self.proc.pid, signum)

    def abandon(self) -> str:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return 'was killed'


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def run(args: list[str], stdin: int, stdout: int, stderr: int,
        cwd: str | None = None, env: dict[str, str] | None = None) -> int:
    """Run ``args`` with the given descriptors; return its exit status."""
    if _is_terminal(stdin):
        # A foreground job of the terminal: job control and Ctrl-C work
        # as in the shell crcache was started from.
        with foreground() as job:
            proc = subprocess.Popen(args, stdin=stdin, stdout=stdout,
                                    stderr=stderr, cwd=cwd, env=env)
            job.started(proc)
            return exit_status(proc.wait())
    with foreground(REMOTE, ()) as job:
        # A session of its own, hence a group of its own, and no
        # controlling terminal: as through the agent (a daemon), so the
        # command behaves the same either way; one that opens /dev/tty
        # fails rather than being stopped (SIGTTIN) in the background.
        # Popen returns once the child has exec'd, so a signal held
        # meanwhile finds the group there.
        proc = subprocess.Popen(args, stdin=stdin, stdout=stdout,
                                stderr=stderr, cwd=cwd, env=env,
                                start_new_session=True)
        job.started(_Group(proc))
        try:
            return exit_status(proc.wait())
        finally:
            if proc.returncode is None:  # interrupted before it ended
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
