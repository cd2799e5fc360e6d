"""``crcache fill``: provision instances ahead of demand."""

from __future__ import annotations

import argparse
from typing import Any

from crcache.cmd import base


class Fill(base.Lister):
    """Provision cached instances until sources hold their reserve.

    Instances are provisioned in parallel (provision.d included) and
    kept cached, so the next acquire hands them out at once. With no
    SOURCE, every source with a reserve is filled. Lists the instances
    made; a progress line on stderr reports each as it becomes ready.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'sources', nargs='*', metavar='SOURCE',
            help='Sources to fill (default: every source with reserve > 0).')
        return parser

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        made = self.client.fill(parsed_args.sources or None)
        return ('name', 'source', 'state', 'concurrency'), [
            (i.name, i.source, i.state, i.concurrency) for i in made]
