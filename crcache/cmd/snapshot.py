"""``crcache snapshot list`` and ``crcache snapshot drop``: captures."""

from __future__ import annotations

import argparse
import time
from typing import Any

from crcache.cmd import base

LIST_COLUMNS = ('source', 'state', 'fingerprint', 'capture', 'age',
                'current')


def age(created: float, now: float | None = None) -> str:
    """How long ago, as ``42s``, ``5m``, ``3h`` or ``2d``."""
    seconds = max(0, int((now or time.time()) - created))
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60)):
        if seconds >= size:
            return f'{seconds // size}{unit}'
    return f'{seconds}s'


def short(capture: str | None) -> str | None:
    """A capture id as its backend shows it (a docker image's 12 hex
    digits)."""
    return capture.split(':', 1)[-1][:12] if capture else capture


class SnapshotList(base.Lister):
    """List the captures of sources with snapshot = provisioned.

    A capture is a provisioned instance saved by its backend (a docker
    source commits it to a local image); new instances of the source
    start from it without running provision.d. Each row gives its state
    (ready, or capturing while it is made), the fingerprint of what
    shaped it (the base image, the source's keys, the content of
    provision.d), the backend's id for it, its age, and whether the
    source would start from it now (current: no means stale, removed by
    the next crcache gc); --no-check skips asking the backend that.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'sources', nargs='*', metavar='SOURCE',
            help='Only list the captures of these sources (default: '
                 'all).')
        parser.add_argument(
            '--no-check', action='store_false', dest='check',
            help='Do not ask the backends whether each capture is current '
                 '(the current column is then empty): only the state '
                 'store is read.')
        return parser

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        now = time.time()
        rows = []
        for info in self.client.captures(parsed_args.sources or None,
                                         check=parsed_args.check):
            current = (None if info.current is None
                       else 'yes' if info.current else 'no')
            rows.append((info.source, info.state, info.fingerprint,
                         info.capture, age(info.created, now), current))
        return LIST_COLUMNS, rows


class SnapshotDrop(base.Lister):
    """Remove the captures of a source; its next instance provisions afresh.

    Removes every capture of SOURCE, recorded or only labelled as this
    store's on the backend, so that its next instance runs provision.d
    again and is captured anew (with snapshot = provisioned). Instances
    already started from a capture are not touched; a docker image still
    used by a container is reported and left for a later crcache gc. A
    capture being made right now is left alone, and said. Lists what it
    did.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('source', metavar='SOURCE',
                            help='The source whose captures to remove.')
        return parser

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        actions = self.client.drop_snapshot(parsed_args.source)
        return ('source', 'action', 'reason'), [
            (a.source, a.action, a.reason) for a in actions]
