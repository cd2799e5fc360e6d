"""``crcache gc``: finish or undo interrupted work, reclaim the expired."""

from __future__ import annotations

import argparse
from typing import Any

from crcache.cmd import base


class CollectGarbage(base.Lister):
    """Clean up after interrupted commands and reclaim expired instances.

    Discards instances left provisioning or discarding by a process that
    has exited (or for longer than provision_timeout), in-use instances
    whose lease has expired and cached ones idle longer than max_idle,
    running discard.d for each. Reports in-use instances whose holder has
    exited, and backend resources labelled as this store's that it does
    not know (leaks), which --leaks destroys. Lists what it did.

    Each discard.d script is stopped after the source's discard_timeout.
    Instances of a source that is no longer configured, or whose
    definition is broken, cannot be discarded: they are listed as kept
    until the source is fixed, or until --forget forgets them.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--leaks', action='store_true',
            help='Destroy leaked backend resources instead of only '
                 'reporting them.')
        parser.add_argument(
            '--forget', action='append', default=[], metavar='SOURCE',
            help='Forget every instance of SOURCE, a source whose '
                 'definition was removed or is broken (so its instances '
                 'cannot be discarded), saying for each which backend '
                 'resource may be left behind. Repeatable.')
        return parser

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        actions = self.client.gc(leaks=parsed_args.leaks,
                                 forget=parsed_args.forget or None)
        return ('name', 'source', 'action', 'reason'), [
            (a.instance, a.source, a.action, a.reason) for a in actions]
