"""provision.d and discard.d: a source's own scripts around each instance.

Beside ``source.conf``, ``provision.d/`` holds executables run (in
lexical order, with run-parts' naming rules) after an instance is made
and before anyone gets it; ``discard.d/`` ones run just before an
instance is destroyed. Each gets the instance name as ``$1`` and in
``$CRCACHE_INSTANCE``, its source in ``$CRCACHE_SOURCE``, and an
environment in which a nested ``crcache`` sees the same configuration and
state, so ``crcache run "$1" ...`` and ``crcache cp ... "$1":...`` work on
the instance being provisioned.

A hook's stdout and stderr both go to crcache's stderr (stdout belongs to
the command's own output, such as ``acquire``'s names). A hook runs in a
session of its own, so it can be stopped as a whole, and dies with the
crcache process that started it where the system allows (``setpriv
--pdeathsig``), so a killed crcache leaves no hook running on its own.

Nothing a hook does can hang crcache: the scripts of one run share a
deadline (``provision_timeout`` / ``discard_timeout``), after which the
running script's whole process group is stopped; and once a script has
exited, crcache reads what is left of its output for a moment only, so a
background child that keeps the output open is not waited for.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping

from crcache import exceptions

PROVISION = 'provision.d'
DISCARD = 'discard.d'
#: run-parts' default naming rule: no dots, so editor backups and
#: package-manager leftovers (foo.dpkg-old) are never run.
NAME = re.compile(r'[A-Za-z0-9_-]+\Z')
TAIL_BYTES = 2000
#: How long to go on reading a script's output once it has exited (a
#: background child of it may hold the output open for ever).
OUTPUT_GRACE = 1.0
#: Between asking a timed-out script's process group to stop (SIGTERM)
#: and killing it.
KILL_GRACE = 2.0
_reported: set[str] = set()


class HookError(exceptions.CrcacheError):
    """A hook script failed; the message names it, its status and output."""

    def __init__(self, source: str, instance: str, script: str,
                 status: int, tail: str) -> None:
        self.script = script
        self.status = status
        detail = f': {tail}' if tail else ''
        super().__init__(
            f"source '{source}': {script} failed for {instance} "
            f'(exit {status}){detail}')


class HookTimeout(HookError):
    """A hook script ran past its source's time limit and was stopped."""

    def __init__(self, source: str, instance: str, script: str,
                 limit: float, key: str) -> None:
        super().__init__(source, instance, script, 124, '')
        self.limit = limit
        self.args = (f"source '{source}': {script} did not finish within "
                     f'{key} ({limit:g}s) for {instance}; stopped it',)


def scripts(directory: str | None, kind: str,
            report: Callable[[str], None] | None = None) -> list[str]:
    """The hook executables of ``kind`` in a source directory, in order.

    Entries run-parts would not run are passed over; ``report`` is told
    about each, once per process, so a user who meant it to run learns
    why it did not.
    """
    if not directory:
        return []
    hook_dir = os.path.join(directory, kind)
    try:
        names = sorted(os.listdir(hook_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        path = os.path.join(hook_dir, name)
        if os.path.isdir(path):
            continue
        why = None
        if not NAME.match(name):
            if name.startswith('.') or name.endswith('~'):
                continue  # hidden files and editor backups: expected
            why = ("names with '.' are ignored, as run-parts does"
                   if '.' in name else 'names other than letters, '
                   "digits, '_' and '-' are ignored, as run-parts does")
        elif not os.path.isfile(path):
            why = 'not a regular file'
        elif not os.access(path, os.X_OK):
            why = 'not executable'
        if why is None:
            found.append(path)
        elif report is not None and path not in _reported:
            _reported.add(path)
            report(f'skipping {kind}/{name}: {why}')
    return found


def _pdeathsig_prefix() -> list[str]:
    setpriv = shutil.which('setpriv')
    return [setpriv, '--pdeathsig', 'KILL', '--'] if setpriv else []


def run(paths: list[str], *, instance: str, source: str,
        env: Mapping[str, str], stderr: int = 2,
        started: Callable[[int], None] | None = None,
        timeout: float = 0, timeout_key: str = 'timeout',
        output: Callable[[bytes], None] | None = None) -> None:
    """Run hook scripts one after another; raise HookError on failure.

    The scripts' output goes to ``output`` if given (which writes it
    above a live progress line), else to the descriptor ``stderr``.
    ``started`` is told each script's pid (its session id too) so that
    whoever finds it orphaned can stop it. ``timeout`` (seconds, 0 for
    none) bounds the whole run; a script still running then is stopped
    with its process group and :class:`HookTimeout` (naming
    ``timeout_key``) is raised.
    """
    directory = os.path.dirname(os.path.dirname(paths[0])) if paths else ''
    prefix = _pdeathsig_prefix()
    full_env = dict(env, CRCACHE_INSTANCE=instance, CRCACHE_SOURCE=source)
    deadline = time.monotonic() + timeout if timeout else None
    for path in paths:
        label = os.path.relpath(path, directory)
        relay = _Output(stderr, output)
        try:
            proc = subprocess.Popen(
                prefix + [path, instance], stdin=subprocess.DEVNULL,
                stdout=relay.write_end, stderr=relay.write_end,
                env=full_env, start_new_session=True)
        except OSError as err:
            relay.close()
            raise HookError(source, instance, label, 126, err.strerror)
        relay.started()
        if started is not None:
            started(proc.pid)
        try:
            status = _wait(proc, deadline)
        except BaseException:
            # Interrupted (Ctrl-C): the hook's session goes with us.
            _kill_session(proc.pid)
            proc.wait()
            relay.close()
            raise
        relay.close()
        if status is None:
            raise HookTimeout(source, instance, label, timeout, timeout_key)
        if status != 0:
            status = 128 - status if status < 0 else status
            text = relay.tail().strip()
            lines = text.splitlines()[-5:]
            raise HookError(source, instance, label, status,
                            ' / '.join(line.strip() for line in lines))


def _wait(proc: subprocess.Popen, deadline: float | None) -> int | None:
    """The script's exit status, or None once stopped at the deadline."""
    if deadline is None:
        return proc.wait()
    try:
        return proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    _signal_session(proc.pid, signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _kill_session(proc.pid)
    proc.wait()
    return None


class _Output:
    """Passes a script's output on to crcache's stderr as it comes.

    Keeps its last bytes for error messages, and stops reading a moment
    after the script exits even if a child of it holds the pipe open.
    """

    def __init__(self, stderr: int,
                 output: Callable[[bytes], None] | None = None) -> None:
        self.stderr = stderr
        self.output = output
        self.read_end, self.write_end = os.pipe()
        self._tail = bytearray()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._copy, daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        while True:
            ready, _, _ = select.select([self.read_end, self._stop_r], [],
                                        [])
            if self.read_end not in ready:
                return
            data = os.read(self.read_end, 65536)
            if not data:
                return
            if self.output is not None:
                self.output(data)
            else:
                try:
                    os.write(self.stderr, data)
                except OSError:
                    pass
            self._tail.extend(data)
            del self._tail[:-TAIL_BYTES]

    def started(self) -> None:
        """The script has its copy of the write end: close ours."""
        os.close(self.write_end)
        self.write_end = -1

    def close(self) -> None:
        """Stop reading (after a grace period) and release the pipes."""
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1
        self._thread.join(OUTPUT_GRACE)
        if self._thread.is_alive():
            os.write(self._stop_w, b'x')
            self._thread.join()
        for fd in (self.read_end, self._stop_r, self._stop_w):
            os.close(fd)

    def tail(self) -> str:
        return bytes(self._tail).decode(errors='replace')


def _signal_session(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except OSError:
        pass


def _kill_session(pid: int) -> None:
    _signal_session(pid, signal.SIGKILL)


def kill(pid: int) -> None:
    """Stop an orphaned hook and everything it started."""
    _kill_session(pid)
