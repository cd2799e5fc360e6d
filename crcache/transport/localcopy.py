"""``cp -p``/``cp -rp`` semantics between two paths on this machine."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from crcache import exceptions
from crcache import progress


def check_source(src: str, is_dir: bool, recursive: bool) -> None:
    """Refuse to copy a directory without ``-r``, as cp does."""
    if is_dir and not recursive:
        raise exceptions.CopyError(
            f'{src}: is a directory (use -r to copy directories)')


def target_path(src: str, dst: str, dst_is_dir: bool) -> str:
    """Where ``src`` lands: inside ``dst`` if it is a directory."""
    if dst_is_dir:
        return os.path.join(dst, os.path.basename(src.rstrip('/')) or '.')
    return dst


def copy(src: str, dst: str, recursive: bool,
         instance_side: str | None = None) -> None:
    """Copy ``src`` to ``dst`` keeping modes and times, like ``cp -p``.

    Directories need ``recursive`` and merge into an existing target as
    ``cp -r`` does; symbolic links inside them are copied as links.
    ``instance_side`` (``'src'`` or ``'dst'``) says which path is an
    instance's (the local source's instances are this machine): problems
    with that path are :class:`~crcache.exceptions.InstancePathError`, so
    the user reads the instance's name before it.
    """
    def fault(path: str, reason: str, side: str) -> exceptions.CopyError:
        if side == instance_side:
            return exceptions.InstancePathError(path, reason)
        return exceptions.CopyError(f'{path}: {reason}')

    if not os.path.lexists(src):
        raise fault(src, 'no such file or directory', 'src')
    is_dir = os.path.isdir(src)
    if is_dir and not recursive:
        raise fault(src, 'is a directory (use -r to copy directories)',
                    'src')
    target = target_path(src, dst, os.path.isdir(dst))
    parent = os.path.dirname(target)
    if parent and not os.path.isdir(parent):
        raise fault(parent, 'no such directory', 'dst')
    meter = progress.meter()
    try:
        if is_dir:
            real_src = os.path.realpath(src)
            real_target = os.path.realpath(target)
            if (real_target == real_src
                    or real_target.startswith(real_src + os.sep)):
                raise exceptions.CopyError(
                    f'cannot copy directory {src} into itself ({target})')
            if os.path.lexists(target) and not os.path.isdir(target):
                raise fault(target, 'cannot overwrite non-directory with '
                            f'directory {src}', 'dst')
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True,
                            copy_function=_counting_copy(meter))
        else:
            meter.expect(os.path.getsize(src))
            with meter.watching(lambda: os.path.getsize(target)):
                shutil.copy2(src, target)
    except shutil.SameFileError:
        raise exceptions.CopyError(f'{src} and {target} are the same file')
    except shutil.Error as err:
        # copytree gathers per-file failures into one list.
        first = err.args[0][0] if err.args and err.args[0] else err
        raise exceptions.CopyError(f'cannot copy {src} to {target}: {first}')
    except OSError as err:
        where = err.filename or target
        reason = err.strerror or str(err)
        for side, path in (('src', src), ('dst', target)):
            if side == instance_side and _within(path, where):
                raise exceptions.InstancePathError(
                    where, reason[:1].lower() + reason[1:])
        raise exceptions.CopyError(
            f'cannot copy {src} to {target}: {where}: {reason}')


def _within(root: str, path: str) -> bool:
    """Whether ``path`` is ``root`` or under it (as written, not resolved)."""
    root = root.rstrip(os.sep) or os.sep
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _counting_copy(meter: progress.Meter) -> Callable[[str, str], str]:
    """shutil.copy2, counting each file copied on ``meter``."""
    if not meter.active:
        return shutil.copy2

    def copy(src: str, dst: str) -> str:
        done = shutil.copy2(src, dst)
        meter.add(os.path.getsize(done))
        return done
    return copy
