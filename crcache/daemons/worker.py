"""A worker of the crcache agent: the client's command, in a forked copy.

The agent (:mod:`crcache.daemons.agent`) forks once per request; in the
child, :func:`run` drops what is the agent's (its signal handlers, its
sockets, other clients' descriptors), takes on the client's process
state (stdin, stdout and stderr, working directory, environment, umask,
arguments, the signals it ignores) and runs the command exactly as a
direct invocation would, then ends the process with the command's
status. It never returns.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from crcache.daemons import ipc as daemon


def run(request: tuple, fds: list[int],
        leave_agent: Callable[[], None], prebuilt: Any = None) -> None:
    """Become the command ``request`` asks for; never returns.

    ``request`` is the client's, as the agent checked it; ``fds`` are the
    client's stdin, stdout and stderr; ``leave_agent`` closes what the
    process holds of the agent's (its sockets, other clients'
    descriptors), once the agent's signal handling is undone;
    ``prebuilt`` is the application a spare built ahead (see
    :func:`spare`).
    """
    status = 1
    try:
        (_, argv, env, cwd, umask, client_pid, client_ppid,
         argv0, warned, _, ignored) = request
        _undo_agent(leave_agent)
        for sig in ignored:  # as the client inherited them (nohup)
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_IGN)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        _follow_environment()
        os.umask(umask)
        sys.argv = [argv0, *argv]
        _reopen_std_streams()
        daemon.set_warned(warned)  # the client said these already
        from crcache import invocation
        invocation.set_client(client_pid, client_ppid, sys.argv)
        from crcache import app
        status = app.run(argv, prebuilt)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        status = 130
    except BaseException as err:  # never let a worker return
        with contextlib.suppress(Exception):
            sys.stderr.write(f'crcache: agent worker failed: {err}\n')
        status = 1
    finally:
        from crcache import finish
        finish.finish(status)


def spare(ctl: Any, leave_agent: Callable[[], None]) -> None:
    """Wait, ready, for the agent to hand over a request; never returns.

    What a worker does before it knows its client is done ahead: the
    agent's signal handling undone, its sockets left, the garbage
    collector as a worker has it, the command-line application built
    (see :mod:`crcache.daemons.spare`). Then the agent's ``('run',
    request)`` and the client's three descriptors arrive on ``ctl``, and
    the rest is :func:`run`. If the agent closes ``ctl`` instead, the
    spare ends, handing back what it was lent.
    """
    message, fds = None, []
    prebuilt = None
    name = _rename(SPARE_NAME)
    try:
        _undo_agent(leave_agent)
        with contextlib.suppress(Exception):
            from crcache import app
            prebuilt = app.CrcacheApp()
        _own_pages(ctl)
        from crcache.daemons import messages
        message, fds = messages.receive_message(ctl, with_fds=3)
    except BaseException:  # the agent went away, or never ours to fix
        message = None
    with contextlib.suppress(OSError):
        ctl.close()
    if not (isinstance(message, tuple) and len(message) == 2
            and message[0] == 'run' and len(fds) == 3):
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        from crcache import finish
        finish.finish(0)
    _rename(name)
    run(message[1], fds, lambda: None, prebuilt)


def _undo_agent(leave_agent: Callable[[], None]) -> None:
    """Be a process of one's own: the agent's signal handling undone,
    the garbage collector as a command has it (on its own, not frozen),
    a process group of one's own, the agent's descriptors closed."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP,
                signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    gc.unfreeze()
    gc.disable()
    os.setpgid(0, 0)
    leave_agent()


#: The process name (``/proc/PID/comm``, what ``ps -o comm`` shows) of a
#: spare until it has its request.
SPARE_NAME = 'crcache-spare'


def _rename(name: str | None) -> str | None:
    """Set this process's name to ``name``; return the one it had."""
    try:
        with open('/proc/self/comm') as f:
            old = f.read().rstrip('\n')
        if name is not None:
            with open('/proc/self/comm', 'w') as f:
                f.write(name)
        return old
    except OSError:
        return None


#: ``madvise(2)``'s MADV_POPULATE_WRITE (Linux 5.14 and later).
_MADV_POPULATE_WRITE = 23
#: Bytes copied between two looks for a request.
_PAGES_AT_ONCE = 1 << 20


def _own_pages(ctl: Any) -> None:
    """Take a private copy of the agent's writable memory now, unless
    (and until) a request arrives on ``ctl``.

    A forked worker shares the agent's pages until it writes to one,
    and the first write to each costs a page fault and a copy; Python
    writes to nearly every object it touches (reference counts), so a
    command takes some 750 of these, about 4 ms of a ``crcache
    status``'s worker on a 2-core machine. A spare has the time to take
    them ahead: the kernel breaks the sharing of every private writable
    mapping in one call each (about 15 ms for 19 MiB, while the agent
    is idle), a MiB at a time: a request that comes meanwhile is served
    at once, with what is done so far. Where the kernel does not know
    the call, nothing happens.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open('/proc/self/maps') as f:
            lines = f.read().splitlines()
    except (OSError, AttributeError):
        return
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or fields[1][:2] != 'rw' or fields[1][3] != 'p':
            continue
        if len(fields) > 5 and fields[5].startswith('[') \
                and fields[5] != '[heap]':
            continue  # the stack, vvar and the like: not the agent's
        start, end = (int(n, 16) for n in fields[0].split('-'))
        for at in range(start, end, _PAGES_AT_ONCE):
            if select.select([ctl], [], [], 0)[0]:
                return  # the request is here: serve it now
            if madvise(at, min(_PAGES_AT_ONCE, end - at),
                       _MADV_POPULATE_WRITE) != 0:
                return  # an older kernel: EINVAL for every one


def _follow_environment() -> None:
    """Redo what a fresh interpreter derives from its environment once.

    The time zone (``TZ``) and the temporary directory (``TMPDIR``) are
    read at first use and kept; the locale is set up with the streams
    (:func:`_reopen_std_streams`).
    """
    time.tzset()
    import tempfile
    tempfile.tempdir = None


def _reopen_std_streams() -> None:
    """Point sys.std* at descriptors 0-2, as a fresh interpreter would."""
    import io
    import locale
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_CTYPE, '')
    encoding = (os.environ.get('PYTHONIOENCODING', '').split(':')[0]
                or locale.getpreferredencoding(False))
    streams = []
    for fd, mode in ((0, 'r'), (1, 'w'), (2, 'w')):
        raw = io.FileIO(fd, mode, closefd=False)
        interactive = raw.isatty()
        buffered = (io.BufferedReader(raw) if mode == 'r'
                    else io.BufferedWriter(raw))
        streams.append(io.TextIOWrapper(
            buffered, encoding=encoding,
            errors='strict' if fd != 2 else 'backslashreplace',
            line_buffering=interactive or fd == 2))
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
