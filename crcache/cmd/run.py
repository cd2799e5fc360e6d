"""``crcache run``: run a command on an acquired instance."""

from __future__ import annotations

import argparse
import logging

from crcache.transport import cmdline
from crcache import exceptions
from crcache.cmd import base

LOG = logging.getLogger(__name__)
#: Exit status for crcache's own failures, as ssh uses 255 for its own.
OWN_FAILURE = 255


def split_command(instance: str | None, words: list[str]
                  ) -> tuple[str, list[str]]:
    """Separate the instance name from the command words."""
    words = list(words)
    if words[:1] == ['--']:
        words.pop(0)
    if instance is None:
        if not words:
            raise exceptions.CrcacheError(
                'name the instance to run on: crcache run INSTANCE '
                '[--] [COMMAND...]')
        instance = words.pop(0)
        if words[:1] == ['--']:
            words.pop(0)
    return instance, words


class Run(base.Command):
    """Run a command on an acquired instance.

    The words of COMMAND are quoted and run by the instance's shell, with
    leading NAME=value words kept as variable assignments; a single word
    is run as a shell command line of its own, so
    ``crcache run pool-0 'make && make check'`` works. stdin, stdout and
    stderr are passed through untouched and the exit status is the
    command's (128+N when it dies of signal N). crcache's own failures
    exit 255. With no COMMAND, an interactive shell is started.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '-s', '--instance', metavar='INSTANCE', dest='instance',
            help='The instance to run on (instead of the first word).')
        parser.add_argument(
            '--files', action='append', default=[], metavar='PATH',
            help='First make this local file exist at the same absolute '
                 'path on the instance (for test runners whose command '
                 'names a local file, like testr\'s $FILES; write '
                 '--files=$FILES so an empty value is ignored). Repeatable.')
        parser.add_argument(
            '--cwd', metavar='DIR',
            help='Run the command in DIR on the instance (by default: the '
                 'caller\'s directory on local instances, the home '
                 'directory on remote ones). --cwd="$PWD" runs a project\'s '
                 'command in the same place everywhere.')
        parser.add_argument(
            'command', nargs=argparse.REMAINDER,
            metavar='INSTANCE [--] COMMAND',
            help='The instance (unless -s is given), then the command and '
                 'its arguments.')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        try:
            instance, argv = split_command(parsed_args.instance,
                                           parsed_args.command)
            if parsed_args.cwd and not argv:
                raise exceptions.CrcacheError(
                    '--cwd needs a command (an interactive shell starts in '
                    'its usual place)')
            target = self.client.instance(instance)
            files = [f for f in parsed_args.files if f.strip()]
            if files:
                target.place_files(files)
            # The words as testr and ssh users expect them (see
            # crcache.transport.cmdline), handed over as one command
            # line; none: the instance's shell.
            line: str | list[str] = cmdline.join(argv) if argv else []
            return target.run(line, cwd=parsed_args.cwd or None).returncode
        except exceptions.CrcacheError as err:
            if self.app.options.debug:
                LOG.exception(err)
            else:
                LOG.error(err)
            return OWN_FAILURE
