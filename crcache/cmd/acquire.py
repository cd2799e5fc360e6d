"""``crcache acquire``: check instances out of a source."""

from __future__ import annotations

import argparse
import math
from typing import Any

from crcache.cmd import base


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number')
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value} is less than 1')
    return value


def duration(text: str) -> float:
    """argparse type: a duration (90, 90s, 15m, 2h, 1d) in seconds."""
    from crcache import stamps
    try:
        return stamps.parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


class Acquire(base.Lister):
    """Check instances out of a source and print their names.

    Names are printed one per line and nothing else is written to stdout,
    so ``$(crcache acquire)`` works; ``-f json`` adds each instance's
    source and concurrency. Cached instances are handed out before new
    ones are made. Either every instance asked for is acquired or none is:
    when the source cannot supply them all, the error names its maximum
    and how many instances it already has (or use --wait). Before it
    starts, acquire collects garbage left by interrupted commands (see
    crcache gc).
    """

    @property
    def formatter_default(self) -> str:
        return 'value'

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '-s', '--source', metavar='SOURCE',
            help='The source to acquire from (default: the global -s '
                 'option, else local).')
        parser.add_argument(
            '-n', '--count', type=positive, default=1, metavar='N',
            help='How many instances to acquire (default 1).')
        parser.add_argument(
            '--wait', nargs='?', const=0.0, default=None, type=duration,
            metavar='SECONDS',
            help='When the source has no room, wait for it (first come, '
                 'first served) instead of failing: for ever, or at most '
                 'SECONDS (a duration: 90, 90s, 15m, 2h).')
        parser.add_argument(
            '--lease', type=duration, default=None, metavar='DURATION',
            help='Let crcache gc reclaim the instances once DURATION (90, '
                 '90s, 15m, 2h, 1d) has passed without a release (default: '
                 'the source\'s lease key; 0 for never).')
        return parser

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        source = self.default_source(parsed_args.source)
        wait = parsed_args.wait
        if wait == 0:
            wait = math.inf  # --wait alone, or --wait 0: for ever
        instances = self.client.acquire(source, parsed_args.count,
                                        wait=wait, lease=parsed_args.lease)
        if parsed_args.formatter == 'value' and not parsed_args.columns:
            return ('name',), [(i.name,) for i in instances]
        return ('name', 'source', 'concurrency'), [
            (i.name, i.source, i.concurrency) for i in instances]
