"""Extracting archives an instance sent, which are not to be trusted.

An instance may send any tar stream. :func:`extract` creates each member
itself, walking to it one directory at a time without ever following a
symbolic link, so no member is written and no mode or time applied
outside the destination, whatever links the archive makes or re-points.
It refuses names outside the copy (absolute, ``..``), links that lead
out of it, hard links to anything but a file the archive wrote, and
device files, and never applies the instance's owners or set-id bits
locally. :func:`landing` decides where a copy lands, and makes a copy to
a new name appear only once whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO

from crcache import exceptions
from crcache import progress


@contextlib.contextmanager
def landing(dst: str, base: str, name: str | None = None
            ) -> Iterator[str]:
    """Where to extract an archive whose top member is ``base``.

    The copy ends up inside ``dst`` if that is a directory, as ``dst``
    otherwise, named ``name`` (default ``base``) inside a directory. A
    copy that is renamed is extracted beside its target first and moved
    into place only once complete; a failed one leaves nothing.
    """
    name = name or base
    if os.path.isdir(dst) and name == base:
        yield dst  # merges into an existing tree, as cp -r does
        return
    target = os.path.join(dst, name) if os.path.isdir(dst) else dst
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise exceptions.CopyError(f'{parent}: no such directory')
    workdir = tempfile.mkdtemp(prefix='.crcache-cp.', dir=parent)
    try:
        yield workdir
        _move_into_place(os.path.join(workdir, base), target)
    finally:
        _remove_tree(workdir)


def _move_into_place(path: str, dst: str) -> None:
    if os.path.isdir(path) and os.path.lexists(dst) \
            and not os.path.isdir(dst):
        raise exceptions.CopyError(
            f'cannot overwrite non-directory {dst} with a directory')
    try:
        os.replace(path, dst)
    except OSError as err:
        raise exceptions.CopyError(f'cannot write {dst}: {err.strerror}')


def _remove_tree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def _within(root: str, path: str, sep: str = os.sep) -> bool:
    return path == root or path.startswith(root + sep)


# Each path component is opened on its own, relative to the last one, so
# O_NOFOLLOW applies to every step of a walk, not just to its end.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                   | os.O_CLOEXEC)
_SET_ID = stat.S_ISUID | stat.S_ISGID


class _Refusal(Exception):
    """Why the archive member at hand is refused (``str()`` says it)."""


class RefusedMember(exceptions.InstancePathError):
    """An archive refused as hostile.

    Only a marker inside this module: :func:`copy_out` reports it even when
    the instance's side failed too (its tar is cut off mid-stream).
    """


def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return 'a symbolic link'
    if stat.S_ISDIR(st.st_mode):
        return 'a directory'
    if stat.S_ISREG(st.st_mode):
        return 'a file'
    return 'a special file'


class _Writer:
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
        self.dest = os.path.realpath(dest)
        self.base = base
        self.meter = meter
        #: The copy's local path: every link the archive makes must lead
        #: to it or below it.
        self.root = os.path.join(self.dest, base)
        self.root_fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY
                               | os.O_CLOEXEC)
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
        os.close(self.root_fd)

    # -- walking -------------------------------------------------------------

    def parts(self, name: str) -> list[str]:
        """``name``'s components, refusing a name outside the copy."""
        parts = name.split('/')
        if parts[0] != self.base or any(p in ('', '.', '..')
                                        for p in parts):
            raise _Refusal(f'it is not inside {self.base!r}')
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
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Refusal(
                            f'{"/".join(parts[:depth])!r} is gone')
                    os.mkdir(part, 0o777, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    st = self.lstat(fd, part)
                    if st is None or stat.S_ISDIR(st.st_mode):
                        raise
                    raise _Refusal(
                        f'{"/".join(parts[:depth])!r} is {_kind(st)}, '
                        'not a directory') from err
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def lstat(fd: int, leaf: str) -> os.stat_result | None:
        try:
            return os.stat(leaf, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

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
            raise _Refusal('a directory of that name is already there')
        os.unlink(leaf, dir_fd=fd)

    # -- members -------------------------------------------------------------

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Create ``member`` below the destination, or refuse it."""
        parts = self.parts(member.name)
        if not (member.isfile() or member.isdir() or member.issym()
                or member.islnk()):
            raise _Refusal('devices and pipes are not copied')
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
            raise _Refusal(f'{_kind(st)} of that name is already there')
        elif st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
            sub = os.open(leaf, _DIR_FLAGS, dir_fd=fd)
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
            raise _Refusal(f'it is a symbolic link to {target!r}, outside '
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
            raise _Refusal(f'it is a hard link to {target!r}, which is not '
                           'a file written earlier in the copy')
        target_parts = target.split('/')
        target_fd = self.open_parent(target_parts)
        try:
            st = self.lstat(target_fd, target_parts[-1])
            if st is None or (st.st_dev, st.st_ino) != written:
                raise _Refusal(f'it is a hard link to {target!r}, which is '
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
        except (_Refusal, OSError):
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
            except _Refusal:
                continue
            try:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
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


def extract(stream: IO[bytes], dest: str, base: str, recursive: bool,
            label: str) -> None:
    """Extract a streamed archive whose members all live under ``base``.

    ``label`` names the archive's source in errors (the path as given on
    the instance). Each member is checked, then created by
    :class:`_Writer`, which never writes through a symbolic link; every
    link the archive made must still lead inside the copy at the end.
    Set-id bits and the archive's owners are dropped, permission bits and
    times kept. A refused archive raises :class:`exceptions.
    InstancePathError` naming the member, and leaves no link out of the
    copy behind.
    """
    try:
        writer = _Writer(dest, base, progress.meter())
    except OSError as err:
        raise exceptions.CopyError(f'cannot write {dest}: {err.strerror}')
    name = None
    done = False
    try:
        with tarfile.open(fileobj=stream, mode='r|') as tar:
            first = True
            for member in tar:
                name = member.name
                if first and member.isdir() and not recursive:
                    raise exceptions.InstancePathError(
                        label, 'is a directory (use -r to copy '
                        'directories)')
                first = False
                writer.write(tar, member)
            if first:
                raise exceptions.InstancePathError(label, 'empty archive')
        escaping = writer.escaping_links()
        if escaping:
            name, target = escaping[0]
            raise _Refusal(f'it is a symbolic link to {target!r}, which '
                           'leads outside the copy')
        writer.finish_directories()
        done = True
    except _Refusal as err:
        raise RefusedMember(
            label, f'refused archive member {name!r}: {err}') from None
    except tarfile.TarError as err:
        raise exceptions.InstancePathError(
            label, f'bad archive: {err}') from None
    except OSError as err:
        where = os.path.join(dest, name) if name else dest
        raise exceptions.CopyError(
            f'cannot write {where}: {err.strerror or err}') from None
    finally:
        if not done:
            with contextlib.suppress(OSError):
                writer.remove_escaping_links()
        writer.close()
