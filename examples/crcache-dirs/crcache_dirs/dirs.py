"""The ``dirs`` source type: each instance a fresh directory on this machine.

An instance is a directory made for it under ``dirs_root``; commands run
there (``/bin/sh -c LINE``, in the caller's environment), and files are
copied with crcache's default copy over ``run``, so a relative path in
``crcache cp`` lands in the instance's directory. Releasing an instance
that is not kept removes its directory with everything in it.

It is small, but it keeps the whole contract of
:class:`crcache.sources.base.BackendSource`:

* nothing is touched before a method needs it (``__init__`` is
  crcache's, and ``validate`` looks at the keys only);
* every directory is labelled by where it lives:
  ``DIRS_ROOT/STORE_ID/SOURCE/INSTANCE``, so ``list_owned`` finds this
  store's and this source's directories, and ``discard`` finds an
  instance's from its name alone when no reference was recorded;
* ``run`` gives the command a process group of its own and, when crcache
  is signalled, ends that whole group and returns 128+N.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from typing import Any

from oslo_config import cfg

from crcache.transport import cmdline
from crcache import exceptions
from crcache.sources import base

#: What crcache passes on to a command (see :meth:`DirsSource.run`).
FORWARDED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
#: Seconds a signalled command's group has to end before it is killed.
GRACE = 2.0
#: Instances of a source used outside crcache's cache (no store id).
NO_STORE = 'no-store'


class DirsSource(base.BackendSource):
    """Fresh directories on this machine, one per instance."""

    opts = [
        cfg.StrOpt(
            'dirs_root',
            help='For dirs: the directory under which instances\' '
                 'directories are made, one level per state store and '
                 'source (default: $XDG_CACHE_HOME/crcache-dirs, else '
                 '~/.cache/crcache-dirs). Made when first needed.'),
        cfg.StrOpt(
            'dirs_template',
            help='For dirs: a directory whose contents are copied into '
                 'every new instance (default: none; instances start '
                 'empty).'),
    ]
    # The directories are on this machine: commands see its files at the
    # same paths, so "run --files" has nothing to copy.
    shares_filesystem = True

    # -- where things are --------------------------------------------------

    def _root(self) -> str:
        root = self.conf.dirs_root
        if not root:
            cache = (os.environ.get('XDG_CACHE_HOME')
                     or os.path.expanduser('~/.cache'))
            root = os.path.join(cache, 'crcache-dirs')
        return os.path.abspath(os.path.expanduser(root))

    def _home(self, store_id: str) -> str:
        """Where this source's instances for one state store live."""
        return os.path.join(self._root(), store_id or NO_STORE, self.name)

    def _path(self, name: str, ref: base.Ref) -> str:
        """An instance's directory: from its reference, else its name."""
        path = ref.get('path') or os.path.join(self._home(self.owner), name)
        # A reference comes back from the state store: never act on a
        # path that is not an instance's directory.
        if os.path.basename(path) != name or not os.path.isabs(path):
            raise exceptions.SourceError(
                self.name, f'{path!r} is not the directory of {name}')
        return path

    def _error(self, action: str, path: str,
               err: OSError) -> exceptions.SourceError:
        return exceptions.SourceError(
            self.name, f'cannot {action} {path}: {err.strerror or err}')

    # -- making and destroying ---------------------------------------------

    def provision(self, names: list[str]) -> dict[str, base.Ref]:
        template = self.conf.dirs_template
        made: dict[str, base.Ref] = {}
        for name in names:
            path = os.path.join(self._home(self.owner), name)
            try:
                os.makedirs(os.path.dirname(path), mode=0o700,
                            exist_ok=True)
                os.mkdir(path, 0o700)
            except OSError as err:
                self._undo(made)
                raise self._error('make', path, err)
            made[name] = {'path': path}
            if template:
                try:
                    _copy_contents(os.path.expanduser(template), path)
                except OSError as err:
                    # Nothing can be returned while raising: what was
                    # made goes, so the failure leaves nothing behind.
                    self._undo(made)
                    raise self._error(
                        f'copy {err.filename or template} into', path, err)
        return made

    def _undo(self, made: dict[str, base.Ref]) -> None:
        for ref in made.values():
            with contextlib.suppress(OSError):
                _remove_tree(ref['path'])

    def discard(self, refs: dict[str, base.Ref]) -> None:
        failures: list[tuple[str, BaseException]] = []
        for name, ref in refs.items():
            try:
                path = self._path(name, ref)
                try:
                    _remove_tree(path)
                except OSError as err:
                    raise self._error('remove', path, err)
            except exceptions.SourceError as err:
                failures.append((name, err))
        if failures and len(refs) == 1:
            raise failures[0][1]
        if failures:
            raise exceptions.PartialFailure('discard', len(refs), failures)

    def is_alive(self, ref: base.Ref, timeout: float = 10.0) -> bool:
        # Answering is being there; nothing needs running.
        return os.path.isdir(ref.get('path', ''))

    # -- leaks -------------------------------------------------------------

    def list_owned(self, store_id: str) -> dict[str, str | None]:
        home = self._home(store_id)
        try:
            entries = sorted(os.listdir(home))
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise self._error('list', home, err)
        return {os.path.join(home, entry): entry for entry in entries}

    def destroy_owned(self, resource_id: str) -> None:
        if os.path.dirname(resource_id) != self._home(self.owner):
            raise exceptions.SourceError(
                self.name, f'{resource_id!r} is not one of its directories')
        try:
            _remove_tree(resource_id)
        except OSError as err:
            raise self._error('remove', resource_id, err)

    # -- running commands --------------------------------------------------

    def run(self, ref: base.Ref, argv: list[str], stdin: int, stdout: int,
            stderr: int) -> int:
        path = ref.get('path', '')
        if not os.path.isdir(path):
            raise exceptions.SourceError(
                self.name, f'the instance directory {path} is gone')
        # A terminal's job: in crcache's process group, so that the
        # terminal's Ctrl-C reaches it and an interactive shell can use
        # it; crcache passes on only what is aimed at crcache alone.
        # Anything else gets a process group of its own, every signal
        # crcache receives is passed on to the whole group.
        terminal = os.isatty(stdin)
        args = (['/bin/sh', '-c', cmdline.join(argv)] if argv
                else ['/bin/sh'])
        job = _Job(group=not terminal)
        with job.handling(FORWARDED if not terminal
                          else (signal.SIGTERM, signal.SIGHUP),
                          () if not terminal
                          else (signal.SIGINT, signal.SIGQUIT)):
            proc = subprocess.Popen(
                args, stdin=stdin, stdout=stdout, stderr=stderr, cwd=path,
                start_new_session=not terminal)
            return job.wait(proc)


class _Job:
    """One running command, and the signals crcache passes on to it.

    Handlers are installed before the command starts, so a signal that
    arrives meanwhile is delivered as soon as it has. Once a signal has
    been passed on, the command's group has :data:`GRACE` seconds to end
    before it is killed, and whatever is left of the group goes when its
    leader has ended: nothing of an interrupted command outlives it.
    """

    def __init__(self, group: bool) -> None:
        self.group = group
        self.proc: subprocess.Popen | None = None
        self.received: list[int] = []
        self.timer: threading.Timer | None = None

    @contextlib.contextmanager
    def handling(self, forwarded: tuple, swallowed: tuple) -> Any:
        saved = {}
        for signum in forwarded + swallowed:
            # Only the main thread can (crcache's probes run commands in
            # others): there, no signal is ours to handle.
            with contextlib.suppress(ValueError):
                saved[signum] = signal.signal(
                    signum, self._forward if signum in forwarded
                    else self._swallow)
        try:
            yield
        finally:
            for signum, handler in saved.items():
                signal.signal(signum, handler)

    def _swallow(self, signum: int, frame: object) -> None:
        pass  # the terminal sent it to the command as well

    def _forward(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if self.proc is not None:
            self._send(signum)
            self._arm()

    def _send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.group:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)

    def _arm(self) -> None:
        """Kill the command if it has not ended within the grace."""
        if self.timer is None:
            self.timer = threading.Timer(GRACE, self._send,
                                         (signal.SIGKILL,))
            self.timer.daemon = True
            self.timer.start()

    def wait(self, proc: subprocess.Popen) -> int:
        """Wait for ``proc``; its status, or 128+N if signal N ended it."""
        self.proc = proc
        for signum in self.received:
            self._send(signum)
            self._arm()
        try:
            code = proc.wait()
        finally:
            if self.timer is not None:
                self.timer.cancel()
        if not self.received:
            return 128 - code if code < 0 else code
        if self.group:
            # The leader is gone; the rest of its group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return 128 + self.received[0]


def _copy_contents(template: str, path: str) -> None:
    """Copy what is in ``template`` into the directory ``path``."""
    for entry in os.listdir(template):
        src = os.path.join(template, entry)
        dst = os.path.join(path, entry)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)


def _remove_tree(path: str) -> None:
    """Remove ``path`` and all below it; already gone is fine.

    Commands may have left directories without write or search
    permission in it: those are opened up first (never following a
    link).
    """
    if not os.path.lexists(path):
        return
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for top, dirs, _ in os.walk(path):
        for entry in dirs:
            full = os.path.join(top, entry)
            if not os.path.islink(full):
                with contextlib.suppress(OSError):
                    os.chmod(full, 0o700)
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point: the keys of type ``dirs``."""
    return [(None, DirsSource.opts)]
