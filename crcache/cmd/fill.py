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

    --replace discards a cached instance first (discard.d included) so
    that a fresh one takes its place: what a release does in the
    background for a source with reset = recreate, whose outcome it
    records in the reset log (crcache status reports a failure).
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'sources', nargs='*', metavar='SOURCE',
            help='Sources to fill (default: every source with reserve > 0, '
                 'or with --replace only the replaced instances\' '
                 'sources).')
        parser.add_argument(
            '--replace', action='append', default=[], metavar='INSTANCE',
            help='Discard this cached instance and make a fresh one in its '
                 'place (from the capture, with snapshot = provisioned). '
                 'Repeatable.')
        return parser

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        made = self.client.fill(parsed_args.sources or None,
                                replace=parsed_args.replace)
        return ('name', 'source', 'state', 'concurrency'), [
            (i.name, i.source, i.state, i.concurrency) for i in made]
