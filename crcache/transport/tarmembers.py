"""Creating the members of an untrusted archive below a destination.

:class:`Writer` creates each member itself (files, directories, symbolic
and hard links) through the no-follow walk of
:mod:`crcache.transport.nofollow`, refusing what would lead out of the
copy, and at the end checks every link it made again and applies the
directories' modes and times. The archive as a whole (its stream, its
first member, the errors the user sees) is
:mod:`crcache.transport.untar`'s.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile

from crcache import progress
from crcache.transport.nofollow import DIR_FLAGS, Refusal, Walker, kind

_NEW_FILE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                   | os.O_CLOEXEC)
_SET_ID = stat.S_ISUID | stat.S_ISGID


def _within(root: str, path: str, sep: str = os.sep) -> bool:
    return path == root or path.startswith(root + sep)


class Writer(Walker):
    """Writes the members of one archive below a destination directory.

    Every path is reached from the destination one component at a time,
    each opened relative to the last with ``O_NOFOLLOW | O_DIRECTORY``,
    and every entry is created, replaced, linked or changed relative to
    the descriptor of its own directory. So nothing is ever written, and
    no mode or time applied, through a symbolic link, whether the archive
    made it (and re-pointed it since) or it was in the destination before.
    Owners are never applied.
    """

    def __init__(self, dest: str, base: str,
                 meter: progress.Meter = progress.IDLE) -> None:
        super().__init__(dest, base)
        self.meter = meter
        # Regular files written, by member name, as (st_dev, st_ino): the
        # only things a hard link member may join.
        self.files: dict[str, tuple[int, int]] = {}
        # Symbolic links made, checked again once the archive is in.
        self.links: dict[str, tuple[int, int]] = {}
        # Directories' real modes and times, applied last.
        self.directories: dict[str, tuple[int, float]] = {}
        # The directory the last member went into, as tar lists a
        # directory's entries together. A directory reached by the walk
        # stays the one at that path: nothing here removes or replaces
        # a directory.
        self._last: tuple[list[str], int] | None = None

    def close(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
        super().close()

    def clear(self, fd: int, leaf: str, name: str) -> None:
        """Remove what is at ``name`` (never a directory) to replace it.

        Replacing, rather than writing into what is there, is what keeps a
        link or a hard link there from leading the write elsewhere.
        """
        st = self.lstat(fd, leaf)
        self.files.pop(name, None)
        self.links.pop(name, None)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            raise Refusal('a directory of that name is already there')
        os.unlink(leaf, dir_fd=fd)

    # -- members -------------------------------------------------------------

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Create ``member`` below the destination, or refuse it."""
        parts = self.parts(member.name)
        if not (member.isfile() or member.isdir() or member.issym()
                or member.islnk()):
            raise Refusal('devices and pipes are not copied')
        if self._last is None or self._last[0] != parts[:-1]:
            fd = self.open_parent(parts, create=True)
            if self._last is not None:
                os.close(self._last[1])
            self._last = (parts[:-1], fd)
        fd = os.dup(self._last[1])
        try:
            if member.isdir():
                self.directory(fd, parts, member)
            elif member.issym():
                self.symlink(fd, parts, member)
            elif member.islnk():
                self.hard_link(fd, parts, member)
            else:
                self.file(fd, parts, member, tar)
        finally:
            os.close(fd)

    def file(self, fd: int, parts: list[str], member: tarfile.TarInfo,
             tar: tarfile.TarFile) -> None:
        self.clear(fd, parts[-1], member.name)
        out = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=fd)
        try:
            data = tar.extractfile(member)
            while data is not None and (chunk := data.read(1 << 20)):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
                self.meter.add(len(chunk))
            os.fchmod(out, member.mode & 0o7777 & ~_SET_ID)
            os.utime(out, (member.mtime, member.mtime))
            st = os.fstat(out)
        finally:
            os.close(out)
        self.files[member.name] = (st.st_dev, st.st_ino)

    def directory(self, fd: int, parts: list[str],
                  member: tarfile.TarInfo) -> None:
        leaf = parts[-1]
        st = self.lstat(fd, leaf)
        if st is None:
            # Writable until its contents are in; its mode comes last.
            os.mkdir(leaf, 0o700, dir_fd=fd)
        elif not stat.S_ISDIR(st.st_mode):
            raise Refusal(f'{kind(st)} of that name is already there')
        elif st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
            sub = os.open(leaf, DIR_FLAGS, dir_fd=fd)
            try:
                os.fchmod(sub, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
            finally:
                os.close(sub)
        self.directories[member.name] = (
            member.mode & 0o7777 & ~_SET_ID, member.mtime)

    def symlink(self, fd: int, parts: list[str],
                member: tarfile.TarInfo) -> None:
        target = member.linkname
        parent = '/'.join(parts[:-1])
        lexical = os.path.normpath(os.path.join(parent, target))
        # Where it leads now; links made later can change that, so every
        # link is checked again once the whole archive is in.
        real = os.path.realpath(os.path.join(self.dest, parent, target))
        if (not target or target.startswith('/')
                or not _within(self.base, lexical, '/')
                or not _within(self.root, real)):
            raise Refusal(f'it is a symbolic link to {target!r}, outside '
                          'the copy')
        self.clear(fd, parts[-1], member.name)
        os.symlink(target, parts[-1], dir_fd=fd)
        os.utime(parts[-1], (member.mtime, member.mtime), dir_fd=fd,
                 follow_symlinks=False)
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        self.links[member.name] = (st.st_dev, st.st_ino)

    def hard_link(self, fd: int, parts: list[str],
                  member: tarfile.TarInfo) -> None:
        target = member.linkname
        written = self.files.get(target)
        if written is None or target == member.name:
            raise Refusal(f'it is a hard link to {target!r}, which is not '
                          'a file written earlier in the copy')
        target_parts = target.split('/')
        target_fd = self.open_parent(target_parts)
        try:
            st = self.lstat(target_fd, target_parts[-1])
            if st is None or (st.st_dev, st.st_ino) != written:
                raise Refusal(f'it is a hard link to {target!r}, which is '
                              'no longer the file the copy wrote')
            self.clear(fd, parts[-1], member.name)
            # linkat() without AT_SYMLINK_FOLLOW: the entry itself.
            os.link(target_parts[-1], parts[-1], src_dir_fd=target_fd,
                    dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(target_fd)
        self.files[member.name] = written

    # -- the end -------------------------------------------------------------

    def _made_link(self, name: str) -> tuple[int, str] | None:
        """(parent descriptor, leaf) of a link the archive made, if it is
        still there; the caller closes the descriptor."""
        parts = name.split('/')
        try:
            fd = self.open_parent(parts)
        except (Refusal, OSError):
            return None
        st = self.lstat(fd, parts[-1])
        if st is None or (st.st_dev, st.st_ino) != self.links[name]:
            os.close(fd)
            return None
        return fd, parts[-1]

    def escaping_links(self) -> list[tuple[str, str]]:
        """(name, target) of the links made that lead out of the copy.

        Nothing is written any more, so where a link leads now is where
        it will lead: re-pointing a link that another one goes through can
        no longer defeat the check each link had when it was made.
        """
        found = []
        for name in list(self.links):
            made = self._made_link(name)
            if made is None:
                continue
            fd, leaf = made
            try:
                target = os.readlink(leaf, dir_fd=fd)
            finally:
                os.close(fd)
            real = os.path.realpath(os.path.join(self.dest, name))
            if not _within(self.root, real):
                found.append((name, target))
        return found

    def remove_escaping_links(self) -> None:
        """Leave no link out of the copy behind (best effort)."""
        for name, _ in self.escaping_links():
            made = self._made_link(name)
            if made is None:
                continue
            fd, leaf = made
            try:
                os.unlink(leaf, dir_fd=fd)
            finally:
                os.close(fd)

    def finish_directories(self) -> None:
        """Apply the directories' modes and times, deepest first."""
        for name, (mode, mtime) in sorted(
                self.directories.items(), key=lambda item: item[0].count('/'),
                reverse=True):
            parts = name.split('/')
            try:
                parent = self.open_parent(parts)
            except Refusal:
                continue
            try:
                fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    continue  # no longer a directory: never followed
                raise
            finally:
                os.close(parent)
            try:
                os.fchmod(fd, mode)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
