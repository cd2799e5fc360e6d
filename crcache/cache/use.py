"""Using acquired instances: running commands and copying files.

A name is resolved once to the backend instance that does the work (a
pool instance is followed down to the instance it wraps), then the
driver runs or copies. Errors about a path on an instance name it as
the user wrote it: ``INSTANCE:PATH: reason``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

from crcache import exceptions
from crcache.cache import kinds
from crcache.cache import records
from crcache.cache.lifecycle import call, lookup
from crcache.cache.stores import Stores
from crcache.config import Config
from crcache.sources import base
from crcache.store.base import DISCARDING, IN_USE, PROVISIONING
from crcache.store.base import Instance


class User:
    """Runs commands and copies files on acquired instances."""

    def __init__(self, config: Config, stores: Stores,
                 progress: Any) -> None:
        self.config = config
        self.stores = stores
        self.progress = progress

    def resolve(self, name: str) -> tuple[Instance, base.BackendSource]:
        """Return the backend instance that does the work for ``name``.

        Only acquired (in-use) instances can be used, except by the hook
        scripts of the instance being provisioned or discarded.
        """
        records.check_instance_name(name)
        with self.stores.find(name).reading() as tx:
            inst = lookup(tx, name)
            hook_of_it = self.config.env.get('CRCACHE_INSTANCE') == name
            usable = (inst.state == IN_USE or hook_of_it
                      and inst.state in (PROVISIONING, DISCARDING))
            if not usable:
                raise exceptions.InstanceStateError(
                    f"instance '{name}' is not acquired (it is "
                    f"{inst.state}); acquire one with 'crcache acquire -s "
                    f"{inst.source}'")
            leaf = inst
            while leaf.child:
                nxt = tx.get(leaf.child)
                if nxt is None:
                    raise exceptions.StoreError(
                        f"instance '{leaf.name}' wraps '{leaf.child}', "
                        'which the state store no longer has')
                leaf = nxt
        source = kinds.require_backend(self.config.source(leaf.source),
                                       leaf.name)
        self.stores.driver(leaf.source)  # labelled with its store
        return leaf, source

    def run(self, name: str, argv: list[str], stdin: int = 0,
            stdout: int = 1, stderr: int = 2) -> int:
        """Run ``argv`` on an acquired instance; return its exit status."""
        leaf, source = self.resolve(name)
        from crcache.transport import process
        with process.naming(name, argv):
            return call(source, f'running on {name}', source.run,
                        leaf.ref or {}, argv, stdin, stdout, stderr)

    def copy(self, src: str, dst: str, recursive: bool = False) -> None:
        """Copy between ``[INSTANCE:]PATH`` arguments (``cp -p`` style)."""
        src_name, src_path = split_location(src)
        dst_name, dst_path = split_location(dst)
        if src_name is None and dst_name is None:
            raise exceptions.CopyError(
                f'neither {src!r} nor {dst!r} names an instance; write '
                'INSTANCE:PATH on at least one side')
        if src_name is not None and dst_name is not None:
            self._copy_between(src_name, src_path, dst_name, dst_path,
                               recursive)
            return
        if src_name is not None:
            self.copy_out(src_name, src_path, dst_path, recursive,
                          shown=(src, dst))
        else:
            assert dst_name is not None
            self.copy_in(dst_name, src_path, dst_path, recursive,
                         shown=(src, dst))

    def copy_in(self, name: str, local: str, remote: str,
                recursive: bool = False,
                shown: tuple[str, str] | None = None) -> None:
        """Copy ``local`` to ``remote`` on the instance ``name``.

        ``shown`` is how the two locations are reported (default:
        ``local`` and ``NAME:remote``).
        """
        leaf, source = self.resolve(name)
        src, dst = shown or (local, f'{name}:{remote}')
        with naming(name), self.progress.copying(src, dst):
            call(source, f'copying to {name}', source.copy_in,
                 leaf.ref or {}, local, remote, recursive)

    def copy_out(self, name: str, remote: str, local: str,
                 recursive: bool = False,
                 shown: tuple[str, str] | None = None) -> None:
        """Copy ``remote`` on the instance ``name`` to ``local``."""
        leaf, source = self.resolve(name)
        src, dst = shown or (f'{name}:{remote}', local)
        with naming(name), self.progress.copying(src, dst):
            call(source, f'copying from {name}', source.copy_out,
                 leaf.ref or {}, remote, local, recursive)

    def place_files(self, name: str, files: Iterable[str]) -> None:
        """Make local files exist at the same absolute paths on an instance.

        For test runners whose command names a local file (testr's
        ``$FILES``). Instances of this machine need nothing.
        """
        leaf, source = self.resolve(name)
        if source.shares_filesystem:
            return
        for path in files:
            path = os.path.abspath(path)
            if not os.path.isfile(path):
                raise exceptions.CopyError(f'--files {path}: not a file')
            parent = os.path.dirname(path)
            call(source, f'placing {path} on {name}', source.capture,
                 leaf.ref or {}, ['mkdir', '-p', '--', parent])
            call(source, f'placing {path} on {name}', source.copy_in,
                 leaf.ref or {}, path, path, False)

    def _copy_between(self, src_name: str, src_path: str, dst_name: str,
                      dst_path: str, recursive: bool) -> None:
        import shutil
        import tempfile
        src_leaf, src_source = self.resolve(src_name)
        dst_leaf, dst_source = self.resolve(dst_name)
        staging = tempfile.mkdtemp(prefix='crcache-cp.')
        try:
            os.chmod(staging, 0o700)
            src = f'{src_name}:{src_path}'
            with naming(src_name), self.progress.copying(src,
                                                         'this machine'):
                src_source.copy_out(src_leaf.ref or {}, src_path, staging,
                                    recursive)
            base_name = os.path.basename(src_path.rstrip('/')) or src_path
            with naming(dst_name), self.progress.copying(
                    src, f'{dst_name}:{dst_path}'):
                dst_source.copy_in(dst_leaf.ref or {},
                                   os.path.join(staging, base_name),
                                   dst_path, recursive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def naming(instance: str) -> Iterator[None]:
    """Name the instance in errors about paths on it (``INSTANCE:PATH``)."""
    try:
        yield
    except exceptions.InstancePathError as err:
        raise err.on(instance) from None


def split_location(arg: str) -> tuple[str | None, str]:
    """Split ``INSTANCE:PATH`` (as scp does: a colon before any slash).

    A local path containing a colon can be written ``./a:b``. An empty
    instance path means the instance's working directory.
    """
    head, sep, tail = arg.partition(':')
    if not sep or '/' in head or not head:
        return None, arg
    records.check_instance_name(head)
    return head, tail or '.'
