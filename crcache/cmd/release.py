"""``crcache release``: return instances to their sources."""

from __future__ import annotations

import argparse

from crcache.cmd import base


class Release(base.Command):
    """Return acquired instances to their sources.

    Each instance is kept cached if its source's reserve wants it, and
    discarded otherwise. Every name is tried: a name that is unknown or
    not acquired is reported at the end and the exit status is non-zero,
    but the other instances are still released. No names at all is a
    successful no-op. In a store shared by several machines, an instance
    acquired by another user or on another machine is refused (the
    message names its holder) unless --force.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('instances', nargs='*', metavar='INSTANCE',
                            help='Instances to release.')
        parser.add_argument(
            '--force', action='store_true',
            help='Release instances of a shared store even if another '
                 'user or machine acquired them (it may still be using '
                 'them).')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        self.client.release(parsed_args.instances, force=parsed_args.force)
