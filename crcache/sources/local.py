"""The ``local`` source type: this machine.

An instance is a claim on the machine crcache runs on: commands run through
``/bin/sh -c`` in the caller's working directory and environment (signals
reach them as :mod:`crcache.transport.process` says), and files are copied
directly. There is one instance unless ``maximum`` says more.
"""

from __future__ import annotations

import os

from crcache.transport import cmdline
from crcache.transport import process
from crcache.sources import base


class LocalSource(base.BackendSource):
    """Runs commands on the machine crcache itself runs on."""

    opts: list = []
    default_maximum = 1
    shares_filesystem = True

    def provision(self, names: list[str]) -> dict[str, base.Ref]:
        # Nothing to create: the machine is already there.
        return {name: {} for name in names}

    def discard(self, refs: dict[str, base.Ref]) -> None:
        # Nothing to destroy; the caller's processes are theirs to manage.
        return None

    def run(self, ref: base.Ref, argv: list[str], stdin: int, stdout: int,
            stderr: int) -> int:
        if argv:
            args = ['/bin/sh', '-c', cmdline.join(argv)]
        else:
            args = [os.environ.get('SHELL') or '/bin/sh']
        return process.run(args, stdin, stdout, stderr)

    def is_alive(self, ref: base.Ref, timeout: float = 10.0) -> bool:
        # This very machine is running crcache: it answers.
        return True

    def concurrency(self, ref: base.Ref) -> int:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1

    def copy_in(self, ref: base.Ref, src: str, dst: str,
                recursive: bool) -> None:
        from crcache.transport import localcopy
        localcopy.copy(src, dst, recursive, instance_side='dst')

    def copy_out(self, ref: base.Ref, src: str, dst: str,
                 recursive: bool) -> None:
        from crcache.transport import localcopy
        localcopy.copy(src, dst, recursive, instance_side='src')


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point: local has no keys of its own."""
    return [(None, LocalSource.opts)]
