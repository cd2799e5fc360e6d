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
import os
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO

from crcache import exceptions
from crcache import progress
from crcache.transport.nofollow import Refusal
from crcache.transport.tarmembers import Writer


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


class RefusedMember(exceptions.InstancePathError):
    """An archive refused as hostile.

    Only a marker inside this module: :func:`copy_out` reports it even when
    the instance's side failed too (its tar is cut off mid-stream).
    """


def extract(stream: IO[bytes], dest: str, base: str, recursive: bool,
            label: str) -> None:
    """Extract a streamed archive whose members all live under ``base``.

    ``label`` names the archive's source in errors (the path as given on
    the instance). Each member is checked, then created by
    :class:`~crcache.transport.tarmembers.Writer`, which never writes
    through a symbolic link; every link the archive made must still lead
    inside the copy at the end.
    Set-id bits and the archive's owners are dropped, permission bits and
    times kept. A refused archive raises :class:`exceptions.
    InstancePathError` naming the member, and leaves no link out of the
    copy behind.
    """
    try:
        writer = Writer(dest, base, progress.meter())
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
            raise Refusal(f'it is a symbolic link to {target!r}, which '
                          'leads outside the copy')
        writer.finish_directories()
        done = True
    except Refusal as err:
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
