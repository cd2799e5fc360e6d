"""``crcache cp``: copy files to or from an instance."""

from __future__ import annotations

import argparse

from crcache.cmd import base


class Copy(base.Command):
    """Copy files and directories to or from an acquired instance.

    Write INSTANCE:PATH for a path on an instance, as with scp (a colon
    before any slash); a relative instance path starts in the instance's
    working directory. Modes and times are kept. Copying into an existing
    directory puts SRC inside it, as cp does. Archives read from an
    instance may not write outside DST.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '-r', '--recursive', action='store_true',
            help='Copy directories and everything in them.')
        parser.add_argument('src', metavar='SRC',
                            help='[INSTANCE:]PATH to copy from.')
        parser.add_argument('dst', metavar='DST',
                            help='[INSTANCE:]PATH to copy to.')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        self.client.copy(parsed_args.src, parsed_args.dst,
                         parsed_args.recursive)
