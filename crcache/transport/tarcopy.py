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

Archives read from an instance are untrusted: they are extracted by
:mod:`crcache.transport.untar`, which never writes outside the
destination.

Paths on the instance reach the scripts below through :func:`_arg`, so a
path that starts with ``-`` is never read as an option.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from crcache import exceptions
from crcache import progress
from crcache.transport import localcopy
from crcache.transport.untar import RefusedMember, extract, landing

if TYPE_CHECKING:
    from crcache.transport.runner import Ref, Runner

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
# "type|octal mode|mtime|size|link".
_STAT = '''s={src}
if [ -L "$s" ]; then l=link; else l=; fi
exec stat -L -c "%F|%a|%Y|%s|$l" -- "$s"
'''


def _arg(path: str) -> str:
    """``path`` as one shell word that no tool takes for an option.

    ``--`` is not enough: ``mktemp``, ``mv`` and ``tar -C`` get paths that
    the scripts build from it, and busybox tools differ in what they take.
    """
    if path.startswith('-'):
        path = './' + path
    return shlex.quote(path)


#: What the scripts above say, exiting 2, about a path on the instance.
_PATH_FAULT = re.compile(
    r'(.+): (no such directory|no such file or directory'
    r'|is a directory; not replacing it with a file)\Z')


def _script_failure(source: 'Runner', verb: str, path: str,
                    status: int, err_text: str) -> exceptions.CopyError:
    """The error for a script that failed on the instance: the path at
    fault, in the user's words, when the script named it."""
    match = _PATH_FAULT.match(err_text) if status == 2 else None
    if match is None:
        return exceptions.CopyError(
            f'copy {verb} {source.name} instance path {path} failed '
            f'(exit {status}): {err_text or "no error output"}')
    where = match[1]
    if where.startswith('./-') and not path.startswith('./'):
        where = where[2:]  # as _arg wrote it, not as the user did
    return exceptions.InstancePathError(where, match[2])


def _run_script(source: 'Runner', ref: 'Ref', script: str,
                stdin: int, stdout: int) -> tuple[int, str]:
    """Run a script on the instance; return (status, stderr text)."""
    with tempfile.TemporaryFile() as err:
        status = source.run(ref, [script], stdin, stdout, err.fileno())
        err.seek(0)
        text = err.read(64 * 1024).decode(errors='replace').strip()
    return status, text


def _put_file(source: 'Runner', ref: 'Ref', src: str, dst: str,
              st: os.stat_result) -> None:
    base = os.path.basename(os.path.normpath(src))
    script = _PUT_FILE.format(
        dst=_arg(dst), base=shlex.quote(base),
        mode=stat.S_IMODE(st.st_mode), mtime=int(st.st_mtime))
    try:
        fd = os.open(src, os.O_RDONLY)
    except OSError as err:
        raise exceptions.CopyError(f'cannot read {src}: {err.strerror}')
    meter = progress.meter()
    meter.expect(st.st_size)
    try:
        # The instance's side reads the file itself, through the open
        # file description we share: its offset is how far it got.
        with meter.watching(lambda: os.lseek(fd, 0, os.SEEK_CUR)):
            status, err_text = _run_script(source, ref, script, fd,
                                           _devnull(os.O_WRONLY))
    finally:
        os.close(fd)
    if status != 0:
        raise _script_failure(source, 'to', dst, status, err_text)


def _get_file(source: 'Runner', ref: 'Ref', src: str, dst: str,
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
            # Written by the instance's side through our descriptor.
            with progress.meter().watching(
                    lambda: os.lseek(fd, 0, os.SEEK_CUR)):
                status, err_text = _run_script(
                    source, ref, f'exec cat -- {_arg(src)}',
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

    def __init__(self, source: 'Runner', ref: 'Ref', script: str,
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
    such as Docker's). ``follow`` follows a link named as ``src``. The
    chunks count on the meter of the thread that calls this."""
    return progress.meter().counted(_archive_chunks(src, name, follow))


def _archive_chunks(src: str, name: str, follow: bool) -> Iterator[bytes]:
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


def copy_in(source: 'Runner', ref: 'Ref', src: str, dst: str,
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
    script = _EXTRACT.format(dst=_arg(dst), base=shlex.quote(base))
    r, w = os.pipe()
    job = _Background(source, ref, script, stdin=r, stdout=os.open(
        os.devnull, os.O_WRONLY))
    pack_error: BaseException | None = None
    try:
        with os.fdopen(w, 'wb', buffering=1 << 20) as pipe:
            with tarfile.open(fileobj=progress.meter().writer(pipe),
                              mode='w|',
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
        raise _script_failure(source, 'to', dst, status, err_text)
    if pack_error is not None:
        raise pack_error


def copy_out(source: 'Runner', ref: 'Ref', src: str, dst: str,
             recursive: bool) -> None:
    """Copy ``src`` on the instance to local ``dst``."""
    base = os.path.basename(src.rstrip('/')) or src
    if base in ('.', '..', '/'):
        raise exceptions.InstancePathError(src, 'name a file or directory')
    status, out, err = source.capture(
        ref, [_STAT.format(src=_arg(src))])
    if status != 0:
        reason = err.decode(errors='replace').strip()
        if 'No such file' in reason or not reason:
            raise exceptions.InstancePathError(src,
                                               'no such file or directory')
        raise exceptions.CopyError(
            f'copy from {source.name} instance path {src} failed: {reason}')
    kind, mode, mtime, size, link = out.decode(
        errors='replace').strip().split('|')
    if kind.startswith('regular') and not (recursive and link):
        progress.meter().expect(int(size) if size.isdigit() else None)
        _get_file(source, ref, src, dst, int(mode, 8), int(mtime))
        return
    if kind == 'directory' and not recursive:
        raise exceptions.InstancePathError(
            src, 'is a directory (use -r to copy directories)')
    r, w = os.pipe()
    # Without -r a symbolic link named as SRC is followed, as cp does.
    script = _CREATE.format(src=_arg(src),
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
        # missing file shows up here as an empty archive), unless we
        # refused what it sent: then its tar was merely cut off.
        if status != 0 and (failure is None
                            or isinstance(failure, exceptions.CopyError)
                            and not isinstance(failure, RefusedMember)):
            failure = _script_failure(source, 'from', src, status,
                                      err_text)
        if failure is not None:
            raise failure
