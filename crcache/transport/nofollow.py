"""Reaching paths below a directory without ever following a link.

The walk that :mod:`crcache.transport.untar` writes an untrusted archive
through: every path is reached from the destination one component at a
time, each opened relative to the last with ``O_NOFOLLOW |
O_DIRECTORY``, so no step of it (not just its end) goes through a
symbolic link, whether the archive made it or it was there before. A
name outside the copy, or a component that is a link or not a
directory, is a :class:`Refusal`.
"""

from __future__ import annotations

import os
import stat

# Each path component is opened on its own, relative to the last one, so
# O_NOFOLLOW applies to every step of a walk, not just to its end.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refusal(Exception):
    """Why the archive member at hand is refused (``str()`` says it)."""


def kind(st: os.stat_result) -> str:
    """What ``st`` is, for a refusal: 'a symbolic link', 'a file'..."""
    if stat.S_ISLNK(st.st_mode):
        return 'a symbolic link'
    if stat.S_ISDIR(st.st_mode):
        return 'a directory'
    if stat.S_ISREG(st.st_mode):
        return 'a file'
    return 'a special file'


class Walker:
    """The directories below ``dest``, for members named ``base/...``.

    Holds a descriptor of ``dest`` until :meth:`close`; every path it
    opens is reached from there, one component at a time.
    """

    def __init__(self, dest: str, base: str) -> None:
        self.dest = os.path.realpath(dest)
        self.base = base
        #: The copy's local path: every link the archive makes must lead
        #: to it or below it.
        self.root = os.path.join(self.dest, base)
        self.root_fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY
                               | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root_fd)

    def parts(self, name: str) -> list[str]:
        """``name``'s components, refusing a name outside the copy."""
        parts = name.split('/')
        if parts[0] != self.base or any(p in ('', '.', '..')
                                        for p in parts):
            raise Refusal(f'it is not inside {self.base!r}')
        return parts

    def open_parent(self, parts: list[str], create: bool = False) -> int:
        """A descriptor of the directory holding ``parts[-1]``.

        With ``create``, missing directories on the way are made, as tar
        does; an existing component that is a link or not a directory
        refuses the member.
        """
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parts[:-1], 1):
                try:
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise Refusal(
                            f'{"/".join(parts[:depth])!r} is gone')
                    os.mkdir(part, 0o777, dir_fd=fd)
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    st = self.lstat(fd, part)
                    if st is None or stat.S_ISDIR(st.st_mode):
                        raise
                    raise Refusal(
                        f'{"/".join(parts[:depth])!r} is {kind(st)}, '
                        'not a directory') from err
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def lstat(fd: int, leaf: str) -> os.stat_result | None:
        """What is at ``leaf`` in directory ``fd`` (never followed)."""
        try:
            return os.stat(leaf, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
