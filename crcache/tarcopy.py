"""Copy files to and from any instance with commands over ``run``.

This is the copy every backend gets for free: all it needs is a POSIX
shell with ``cat``, ``stat`` and ``tar`` on the instance (GNU and busybox
tools both work). The destination is decided where it lives, with ``cp
-rp`` semantics: inside an existing directory, or under the given name
otherwise.

A regular file travels as itself: its own descriptor becomes the stdin
(or stdout) of ``cat`` on the instance, so a backend that moves bytes
between descriptors (the ssh connection holder, a subprocess) reads or
writes the file directly, with no archive and no pipe in between. It is
written to a temporary name beside the target and renamed into place
with its mode and time. Directories travel as a tar stream.

Archives read from an instance are untrusted: :func:`extract` refuses any
member that would land outside the destination (absolute names, ``..``,
links that point out, device files) before anything of it is written, and
never applies the instance's owners or set-id bits locally.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from crcache import exceptions
from crcache import localcopy

if TYPE_CHECKING:
    from crcache.sources.base import BackendSource, Ref

# Run on the instance with the archive on stdin. umask 0 lets both GNU and
# busybox tar apply the archived modes exactly; -o keeps owners local.
_EXTRACT = '''set -e
umask 0
d={dst}
if [ -d "$d" ]; then exec tar -x -o -f - -C "$d"; fi
p=$(dirname -- "$d")
if [ ! -d "$p" ]; then
  echo "$p: no such directory" >&2; exit 2
fi
t=$(mktemp -d "$p/.crcache-cp.XXXXXX")
trap 'rm -rf "$t"' EXIT
tar -x -o -f - -C "$t"
mv -f "$t"/{base} "$d"
'''

# Run on the instance; writes the archive of one path to stdout.
_CREATE = '''set -e
s={src}
if [ ! -e "$s" ] && [ ! -L "$s" ]; then
  echo "$s: no such file or directory" >&2; exit 2
fi
cd -- "$(dirname -- "$s")"
exec tar -c {follow}-f - -- "$(basename -- "$s")"
'''


# Run on the instance with the file's contents on stdin.
_PUT_FILE = '''set -e
d={dst}
if [ -d "$d" ]; then t="$d"/{base}; else t="$d"; fi
p=$(dirname -- "$t")
if [ ! -d "$p" ]; then
  echo "$p: no such directory" >&2; exit 2
fi
if [ -d "$t" ]; then
  echo "$t: is a directory; not replacing it with a file" >&2; exit 2
fi
f=$(mktemp "$p/.crcache-cp.XXXXXX")
trap 'rm -f "$f"' EXIT
cat > "$f"
chmod {mode:o} "$f"
touch -d @{mtime} "$f" 2>/dev/null || :
mv -f "$f" "$t"
trap - EXIT
'''

# Run on the instance: what is at a path (following a link), as
# "type|octal mode|mtime|link".
_STAT = '''s={src}
if [ -L "$s" ]; then l=link; else l=; fi
exec stat -L -c "%F|%a|%Y|$l" -- "$s"
'''


def _run_script(source: 'BackendSource', ref: 'Ref', script: str,
                stdin: int, stdout: int) -> tuple[int, str]:
    """Run a script on the instance; return (status, stderr text)."""
    with tempfile.TemporaryFile() as err:
        status = source.run(ref, [script], stdin, stdout, err.fileno())
        err.seek(0)
        text = err.read(64 * 1024).decode(errors='replace').strip()
    return status, text


def _put_file(source: 'BackendSource', ref: 'Ref', src: str, dst: str,
              st: os.stat_result) -> None:
    base = os.path.basename(os.path.normpath(src))
    script = _PUT_FILE.format(
        dst=shlex.quote(dst), base=shlex.quote(base),
        mode=stat.S_IMODE(st.st_mode), mtime=int(st.st_mtime))
    try:
        fd = os.open(src, os.O_RDONLY)
    except OSError as err:
        raise exceptions.CopyError(f'cannot read {src}: {err.strerror}')
    try:
        status, err_text = _run_script(source, ref, script, fd,
                                       _devnull(os.O_WRONLY))
    finally:
        os.close(fd)
    if status != 0:
        raise exceptions.CopyError(
            f'copy to {source.name} instance path {dst} failed '
            f'(exit {status}): {err_text or "no error output"}')


def _get_file(source: 'BackendSource', ref: 'Ref', src: str, dst: str,
              mode: int, mtime: int) -> None:
    base = os.path.basename(src.rstrip('/'))
    target = localcopy.target_path(base, dst, os.path.isdir(dst))
    if os.path.isdir(target):
        raise exceptions.CopyError(
            f'{target}: is a directory; not replacing it with a file')
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise exceptions.CopyError(f'{parent}: no such directory')
    fd, tmp = tempfile.mkstemp(prefix='.crcache-cp.', dir=parent)
    try:
        try:
            status, err_text = _run_script(
                source, ref, f'exec cat -- {shlex.quote(src)}',
                _devnull(os.O_RDONLY), fd)
        finally:
            os.close(fd)
        if status != 0:
            raise exceptions.CopyError(
                f'copy from {source.name} instance path {src} failed '
                f'(exit {status}): {err_text or "no error output"}')
        os.chmod(tmp, mode & ~(stat.S_ISUID | stat.S_ISGID))
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _devnull(flags: int) -> int:
    return os.open(os.devnull, flags)


class _Background:
    """Run a command on an instance in a thread, keeping its stderr."""

    def __init__(self, source: 'BackendSource', ref: 'Ref', script: str,
                 stdin: int, stdout: int) -> None:
        self.status: int | None = None
        self.error: BaseException | None = None
        self._err_r, err_w = os.pipe()
        self._stderr: list[bytes] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

        def target() -> None:
            try:
                self.status = source.run(ref, [script], stdin, stdout, err_w)
            except BaseException as err:  # reported by wait()
                self.error = err
            finally:
                os.close(err_w)
                for fd in (stdin, stdout):
                    os.close(fd)

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while data := os.read(self._err_r, 65536):
            self._stderr.append(data)

    def wait(self) -> tuple[int, str]:
        self._thread.join()
        self._reader.join()
        os.close(self._err_r)
        if self.error is not None:
            raise self.error
        text = b''.join(self._stderr).decode(errors='replace').strip()
        return self.status if self.status is not None else 255, text


def _owner_neutral(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Local owners mean nothing on the instance; its user will own them.
    info.uid = info.gid = 0
    info.uname = info.gname = ''
    return info


def archive_stream(src: str, name: str, follow: bool) -> Iterator[bytes]:
    """A tar archive of local ``src`` (its top member called ``name``),
    produced while it is read, in chunks (for APIs that take archives,
    such as Docker's). ``follow`` follows a link named as ``src``."""
    r, w = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(w, 'wb', buffering=1 << 20) as pipe:
                with tarfile.open(fileobj=pipe, mode='w|',
                                  format=tarfile.PAX_FORMAT) as tar:
                    tar.dereference = follow
                    tar.add(src, arcname=name, recursive=True,
                            filter=_owner_neutral)
        except BaseException as err:  # reported by the reader
            failure.append(err)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    with os.fdopen(r, 'rb') as pipe:
        while chunk := pipe.read(1 << 20):
            yield chunk
    producer.join()
    if failure:
        err = failure[0]
        raise exceptions.CopyError(
            f'cannot read {getattr(err, "filename", None) or src}: '
            f'{getattr(err, "strerror", None) or err}')


def copy_in(source: 'BackendSource', ref: 'Ref', src: str, dst: str,
            recursive: bool) -> None:
    """Copy local ``src`` to ``dst`` on the instance."""
    if not os.path.lexists(src):
        raise exceptions.CopyError(f'{src}: no such file or directory')
    localcopy.check_source(src, os.path.isdir(src), recursive)
    # With -r a link is copied as a link (in an archive), as cp -r does.
    st = os.stat(src) if not recursive else os.lstat(src)
    if stat.S_ISREG(st.st_mode):
        _put_file(source, ref, src, dst, st)
        return
    base = os.path.basename(os.path.normpath(src))
    script = _EXTRACT.format(dst=shlex.quote(dst), base=shlex.quote(base))
    r, w = os.pipe()
    job = _Background(source, ref, script, stdin=r, stdout=os.open(
        os.devnull, os.O_WRONLY))
    pack_error: BaseException | None = None
    try:
        with os.fdopen(w, 'wb', buffering=1 << 20) as pipe:
            with tarfile.open(fileobj=pipe, mode='w|',
                              format=tarfile.PAX_FORMAT) as tar:
                if not recursive:
                    # Follow a symbolic link named as SRC, as cp does.
                    tar.dereference = True
                tar.add(src, arcname=base, recursive=True,
                        filter=_owner_neutral)
    except BrokenPipeError:
        # The far side stopped reading; its stderr says why.
        pack_error = exceptions.CopyError(
            f'copy to {source.name} instance path {dst} failed: the '
            'instance stopped reading the archive')
    except OSError as err:
        pack_error = exceptions.CopyError(
            f'cannot read {err.filename or src}: {err.strerror or err}')
    status, err_text = job.wait()
    if status != 0:
        raise exceptions.CopyError(
            f'copy to {source.name} instance path {dst} failed '
            f'(exit {status}): {err_text or "no error output"}')
    if pack_error is not None:
        raise pack_error


def copy_out(source: 'BackendSource', ref: 'Ref', src: str, dst: str,
             recursive: bool) -> None:
    """Copy ``src`` on the instance to local ``dst``."""
    base = os.path.basename(src.rstrip('/')) or src
    if base in ('.', '..', '/'):
        raise exceptions.CopyError(f'{src}: name a file or directory')
    status, out, err = source.capture(
        ref, [_STAT.format(src=shlex.quote(src))])
    if status != 0:
        reason = err.decode(errors='replace').strip()
        if 'No such file' in reason or not reason:
            reason = f'{src}: no such file or directory'
        raise exceptions.CopyError(
            f'copy from {source.name} instance path {src} failed: {reason}')
    kind, mode, mtime, link = out.decode(errors='replace').strip().split(
        '|')
    if kind.startswith('regular') and not (recursive and link):
        _get_file(source, ref, src, dst, int(mode, 8), int(mtime))
        return
    if kind == 'directory' and not recursive:
        raise exceptions.CopyError(
            f'{src}: is a directory (use -r to copy directories)')
    r, w = os.pipe()
    # Without -r a symbolic link named as SRC is followed, as cp does.
    script = _CREATE.format(src=shlex.quote(src),
                            follow='' if recursive else '-h ')
    with landing(dst, base) as into:
        job = _Background(source, ref, script,
                          stdin=os.open(os.devnull, os.O_RDONLY), stdout=w)
        failure: BaseException | None = None
        with os.fdopen(r, 'rb', buffering=1 << 20) as pipe:
            try:
                extract(pipe, into, base, recursive, src)
            except BaseException as err:
                failure = err
            else:
                while pipe.read(1 << 20):  # let tar finish writing
                    pass
        status, err_text = job.wait()
        # When the instance's side failed, its reason beats ours (a
        # missing file shows up here as an empty archive).
        if status != 0 and (failure is None
                            or isinstance(failure, exceptions.CopyError)):
            failure = exceptions.CopyError(
                f'copy from {source.name} instance path {src} failed '
                f'(exit {status}): {err_text or "no error output"}')
        if failure is not None:
            raise failure


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


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _check_member(member: tarfile.TarInfo, dest: str, base: str) -> str:
    """Refuse a member that could write outside ``dest/base``.

    Returns the path the member will be written to. The member's own name
    is never followed (it may be a link being replaced); its directory is
    resolved, so links made by earlier members cannot be used as a
    passage out.
    """
    name = member.name
    parts = name.split('/')
    if (name.startswith('/') or parts[0] != base
            or any(p in ('', '.', '..') for p in parts)):
        raise exceptions.CopyError(
            f'refusing archive member {name!r}: it is not inside {base!r}')
    root = os.path.join(dest, base)
    parent = os.path.realpath(os.path.dirname(os.path.join(dest, name)))
    inside = parent == dest if name == base else _within(root, parent)
    if not inside:
        raise exceptions.CopyError(
            f'refusing archive member {name!r}: it would be written '
            f'outside {root}')
    if member.issym():
        pointee = os.path.realpath(os.path.join(parent, member.linkname))
        if os.path.isabs(member.linkname) or not _within(root, pointee):
            raise exceptions.CopyError(
                f'refusing symbolic link {name!r} -> {member.linkname!r}: '
                'it points outside the copy')
    elif member.islnk():
        link_parts = member.linkname.split('/')
        pointee = os.path.realpath(os.path.join(dest, member.linkname))
        if (link_parts[0] != base or '..' in link_parts
                or not _within(root, pointee)):
            raise exceptions.CopyError(
                f'refusing hard link {name!r} -> {member.linkname!r}: '
                'it points outside the copy')
    elif not (member.isfile() or member.isdir()):
        raise exceptions.CopyError(
            f'refusing archive member {name!r}: devices and pipes are '
            'not copied')
    return os.path.join(parent, parts[-1])


def extract(stream: IO[bytes], dest: str, base: str, recursive: bool,
            label: str) -> None:
    """Extract a streamed archive whose members all live under ``base``.

    Members are checked one by one before being written; set-id bits and
    the archive's owners are dropped, permission bits and times kept.
    """
    dest = os.path.realpath(dest)
    extra: dict[str, Any] = {}
    if hasattr(tarfile, 'fully_trusted_filter'):
        # Our own checks replace the stdlib filters, which would also
        # clear group/other write bits (cp -p keeps them).
        extra['filter'] = 'fully_trusted'
    uid, gid = os.getuid(), os.getgid()
    # A read-only directory must stay writable until its contents are in;
    # its real mode and time are applied last, deepest first.
    directories: list[tuple[str, int, float]] = []
    try:
        with tarfile.open(fileobj=stream, mode='r|') as tar:
            first = True
            for member in tar:
                if first and member.isdir() and not recursive:
                    raise exceptions.CopyError(
                        f'{label}: is a directory (use -r to copy '
                        'directories)')
                first = False
                target = _check_member(member, dest, base)
                if not member.isdir() and os.path.islink(target):
                    # Replace a link rather than write through it.
                    os.unlink(target)
                member.mode &= ~(stat.S_ISUID | stat.S_ISGID)
                member.uid, member.gid = uid, gid
                member.uname = member.gname = ''
                if member.isdir():
                    directories.append((os.path.join(dest, member.name),
                                        member.mode, member.mtime))
                    member.mode |= stat.S_IRWXU
                tar.extract(member, dest, set_attrs=True, **extra)
            if first:
                raise exceptions.CopyError(f'{label}: empty archive')
    except tarfile.TarError as err:
        raise exceptions.CopyError(f'{label}: bad archive: {err}')
    except OSError as err:
        raise exceptions.CopyError(
            f'cannot write {err.filename or dest}: {err.strerror or err}')
    for path, mode, mtime in reversed(directories):
        os.chmod(path, mode & 0o7777)
        os.utime(path, (mtime, mtime))
