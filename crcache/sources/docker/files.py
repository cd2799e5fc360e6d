"""Files in and out of a docker instance, through the archive API.

``copy_in`` sends a tar stream made here; ``copy_out`` takes the engine's
tar stream of the container path and extracts it with
:mod:`crcache.transport.untar`, which refuses every member that would
land outside the destination: a container is not trusted.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
from typing import Any, Protocol

from crcache import exceptions
from crcache.sources import base


class DockerSource(Protocol):
    """What copies need of the docker source (typed here, so that this
    module does not import the one that uses it)."""

    conf: Any
    api: Any

    def call(self, what: str, func: Any, *args: Any,
             **kwargs: Any) -> Any: ...

    def error(self, message: str) -> exceptions.SourceError: ...

    def check_running(self, ref: base.Ref) -> dict: ...

#: Go's os.ModeDir, as the engine reports modes.
_GO_DIR = 1 << 31


def container_path(source: DockerSource, ref: base.Ref, path: str) -> str:
    """``path`` in the container, relative ones from the working
    directory commands run in."""
    if posixpath.isabs(path):
        return path
    workdir = source.conf.docker_workdir
    if not workdir:
        info = source.check_running(ref)
        workdir = info.get('Config', {}).get('WorkingDir') or '/'
    return posixpath.normpath(posixpath.join(workdir, path))


def path_stat(source: DockerSource, ref: base.Ref, path: str) -> dict | None:
    """The engine's stat of a container path, or None if absent."""
    api = source.api
    response = source.call(
        f'looking at {path}', api.head,
        api._url('/containers/{0}/archive', ref['id']),
        params={'path': path})
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise source.error(f'cannot look at {path} in container '
                           f"{ref.get('name')}: HTTP "
                           f'{response.status_code}')
    header = response.headers.get('X-Docker-Container-Path-Stat', '')
    return json.loads(base64.b64decode(header))


def copy_in(source: DockerSource, ref: base.Ref, src: str, dst: str,
            recursive: bool) -> None:
    """Copy the local ``src`` to ``dst`` in the container."""
    from crcache.transport import localcopy
    from crcache import progress
    from crcache.transport import tarcopy
    if not os.path.lexists(src):
        raise exceptions.CopyError(f'{src}: no such file or directory')
    localcopy.check_source(src, os.path.isdir(src), recursive)
    if os.path.isfile(src):
        # The archive's own headers come on top: a little more.
        progress.meter().expect(os.path.getsize(src))
    target = container_path(source, ref, dst)
    found = path_stat(source, ref, target)
    if found is not None and found['mode'] & _GO_DIR:
        into, name = target, os.path.basename(os.path.normpath(src))
    else:
        into, name = posixpath.split(target)
        parent = path_stat(source, ref, into)
        if parent is None or not parent['mode'] & _GO_DIR:
            # Named as the user wrote it, not as resolved here.
            raise exceptions.InstancePathError(
                posixpath.dirname(dst.rstrip('/')) or into,
                'no such directory' if parent is None
                else 'not a directory')
    stream = tarcopy.archive_stream(src, name, follow=not recursive)
    source.call(f'copying to {into}', source.api.put_archive, ref['id'],
                into, stream)


def copy_out(source: DockerSource, ref: base.Ref, src: str, dst: str,
             recursive: bool) -> None:
    """Copy ``src`` in the container to the local ``dst``; the
    container's archive is refused where it would write elsewhere."""
    import docker.errors

    from crcache import progress
    from crcache.transport import untar
    path = container_path(source, ref, src)
    name = posixpath.basename(path.rstrip('/')) or path
    try:
        found = path_stat(source, ref, path)
        if found is None:
            raise docker.errors.NotFound('absent')
        if found.get('linkTarget') and not recursive:
            # Without -r a link named as SRC is followed, as cp does.
            path = found['linkTarget']
            found = path_stat(source, ref, path)
        if found is not None and found['mode'] & _GO_DIR \
                and not recursive:
            raise exceptions.InstancePathError(
                src, 'is a directory (use -r to copy directories)')
        if found is not None and not found['mode'] & _GO_DIR:
            progress.meter().expect(found.get('size'))
        chunks, _ = source.call(f'copying from {src}',
                                source.api.get_archive, ref['id'], path)
    except docker.errors.NotFound:
        raise exceptions.InstancePathError(src,
                                           'no such file or directory')
    base_name = posixpath.basename(path.rstrip('/')) or path
    with untar.landing(dst, base_name, name) as into:
        untar.extract(ChunkReader(chunks), into, base_name, recursive,
                      src)


class ChunkReader:
    """A file-like view of an iterator of byte chunks, for tarfile."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._buffer = b''

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            data, self._buffer = self._buffer, b''
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data
