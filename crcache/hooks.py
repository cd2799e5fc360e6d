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
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping

from crcache import exceptions

PROVISION = 'provision.d'
DISCARD = 'discard.d'
#: run-parts' default naming rule: no dots, so editor backups and
#: package-manager leftovers (foo.dpkg-old) are never run.
NAME = re.compile(r'^[A-Za-z0-9_-]+$')
TAIL_BYTES = 2000


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


def scripts(directory: str | None, kind: str) -> list[str]:
    """The hook executables of ``kind`` in a source directory, in order."""
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
        if (NAME.match(name) and os.path.isfile(path)
                and os.access(path, os.X_OK)):
            found.append(path)
    return found


def _pdeathsig_prefix() -> list[str]:
    setpriv = shutil.which('setpriv')
    return [setpriv, '--pdeathsig', 'KILL', '--'] if setpriv else []


def run(paths: list[str], *, instance: str, source: str,
        env: Mapping[str, str], stderr: int = 2,
        started: Callable[[int], None] | None = None) -> None:
    """Run hook scripts one after another; raise HookError on failure.

    ``started`` is told each script's pid (its session id too) so that
    whoever finds it orphaned can stop it.
    """
    directory = os.path.dirname(os.path.dirname(paths[0])) if paths else ''
    prefix = _pdeathsig_prefix()
    full_env = dict(env, CRCACHE_INSTANCE=instance, CRCACHE_SOURCE=source)
    for path in paths:
        label = os.path.relpath(path, directory)
        read_end, write_end = os.pipe()
        tail = bytearray()

        def copy() -> None:
            # Pass the output on as it comes, keeping its end for errors.
            while data := os.read(read_end, 65536):
                try:
                    os.write(stderr, data)
                except OSError:
                    pass
                tail.extend(data)
                del tail[:-TAIL_BYTES]

        copier = threading.Thread(target=copy, daemon=True)
        copier.start()
        try:
            proc = subprocess.Popen(
                prefix + [path, instance], stdin=subprocess.DEVNULL,
                stdout=write_end, stderr=write_end, env=full_env,
                start_new_session=True)
        except OSError as err:
            os.close(write_end)
            copier.join()
            os.close(read_end)
            raise HookError(source, instance, label, 126, err.strerror)
        os.close(write_end)
        if started is not None:
            started(proc.pid)
        try:
            status = proc.wait()
        except BaseException:
            # Interrupted (Ctrl-C): the hook's session goes with us.
            _kill_session(proc.pid)
            proc.wait()
            raise
        finally:
            copier.join()
            os.close(read_end)
        if status != 0:
            status = 128 - status if status < 0 else status
            text = bytes(tail).decode(errors='replace').strip()
            lines = text.splitlines()[-5:]
            raise HookError(source, instance, label, status,
                            ' / '.join(line.strip() for line in lines))


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except OSError:
        pass


def kill(pid: int) -> None:
    """Stop an orphaned hook and everything it started."""
    _kill_session(pid)
