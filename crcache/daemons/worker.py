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
import signal
import sys
import time
from collections.abc import Callable

from crcache.daemons import ipc as daemon


def run(request: tuple, fds: list[int],
        leave_agent: Callable[[], None]) -> None:
    """Become the command ``request`` asks for; never returns.

    ``request`` is the client's, as the agent checked it; ``fds`` are the
    client's stdin, stdout and stderr; ``leave_agent`` closes what the
    process holds of the agent's (its sockets, other clients'
    descriptors), once the agent's signal handling is undone.
    """
    status = 1
    try:
        (_, argv, env, cwd, umask, client_pid, client_ppid,
         argv0, warned, _, ignored) = request
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP,
                    signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in ignored:  # as the client inherited them (nohup)
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_IGN)
        gc.unfreeze()
        gc.disable()
        os.setpgid(0, 0)
        leave_agent()
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
        status = app.run(argv)
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
