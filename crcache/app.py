"""The cliff application: global options and the per-invocation cache.

Global options come before the command name and parsing stops at the
command: ``crcache -s pool acquire`` sets the global source, while in
``crcache run -s pool-0 echo`` the ``-s`` belongs to ``run``. (cliff's
default parser would take option words from anywhere on the line.)
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from cliff import _argparse
from cliff import app
from cliff import commandmanager
from cliff import help

from crcache import version

LOG = logging.getLogger(__name__)


#: Libraries whose logging says only warnings unless asked for (-vv).
QUIET_LIBRARIES = ('paramiko', 'stevedore', 'docker', 'urllib3')


def quiet_libraries() -> None:
    """Warnings only from :data:`QUIET_LIBRARIES`.

    Each ``setLevel`` clears every logger's cache, so a level already
    set (by the agent, for its workers) is left alone.
    """
    for name in QUIET_LIBRARIES:
        logger = logging.getLogger(name)
        if logger.level != logging.WARNING:
            logger.setLevel(logging.WARNING)


class GlobalParser(_argparse.ArgumentParser):
    """Parses the options before the command name and nothing after."""

    def split(self, args: Sequence[str]) -> tuple[list[str], list[str]]:
        """Split ``args`` into global options and the command line."""
        args = list(args)
        i = 0
        while i < len(args):
            word = args[i]
            if word == '--':
                return args[:i], args[i + 1:]
            if not word.startswith('-') or word == '-':
                break
            if word.startswith('--'):
                action = self._option_string_actions.get(
                    word.split('=', 1)[0])
                takes_value = '=' not in word
            else:
                action = self._option_string_actions.get(word[:2])
                takes_value = len(word) == 2
            if action is not None and action.nargs != 0 and takes_value:
                i += 1
            i += 1
        return args[:i], args[i:]

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        head, command = self.split(sys.argv[1:] if args is None else args)
        options, unknown = super().parse_known_args(head, namespace)
        if unknown:
            self.error(f"unrecognized global option: {' '.join(unknown)}")
        return options, command


def unknown_command(word: str, commands: Sequence[str]) -> str:
    """The error for a command name that is not one, with a suggestion
    only when one is close: the commands it abbreviates (cliff takes an
    unambiguous abbreviation), else the single closest name."""
    import difflib
    candidates = sorted(c for c in commands if c.startswith(word))
    if len(candidates) < 2:
        candidates = difflib.get_close_matches(word, sorted(commands), n=1)
    message = f'unknown command {word!r}'
    if candidates:
        names = ' or '.join(repr(c) for c in candidates)
        message += f' (did you mean {names}?)'
    return message


class Help(help.HelpCommand):
    """Show the help of a command, or list the commands."""

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        if parsed_args.cmd:
            try:
                self.app.command_manager.find_command(parsed_args.cmd)
            except ValueError:
                self.app.LOG.error(unknown_command(
                    parsed_args.cmd[0], self.app.command_names()))
                return 2
        return super().take_action(parsed_args)


class CrcacheApp(app.App):
    """crcache's command line application."""

    # cliff derives NAME from sys.argv[0] at import time, which in the
    # agent is crcache/agent.py.
    NAME = 'crcache'
    CONSOLE_MESSAGE_FORMAT = 'crcache: %(message)s'
    # Warnings, errors and progress by default; -q without progress, -v
    # for more detail, -vv debug.
    DEFAULT_VERBOSE_LEVEL = 0

    def __init__(self) -> None:
        commands = commandmanager.CommandManager('crcache.cmd')
        # cliff's App puts its own complete command in place of the
        # crcache.cmd entry point's (crcache.cmd.complete): put it back.
        complete = commands.commands.get('complete')
        super().__init__(
            description='Obtain, use, cache and discard compute resources.',
            version=version.version_string(),
            command_manager=commands,
            deferred_help=True,
        )
        self.command_manager.add_command('help', Help)
        if complete is not None:
            self.command_manager.commands['complete'] = complete
        self._cache: Any = None
        self._console: logging.Handler | None = None

    def command_names(self) -> list[str]:
        """Every command's name."""
        return [name for name, _ in self.command_manager]

    def run_subcommand(self, argv: list[str]) -> int:
        # cliff prints an unknown command's message and its suggestions
        # on stdout (which belongs to results), suggesting whatever is
        # least far off however far that is.
        try:
            self.command_manager.find_command(argv)
        except ValueError:
            word = argv[0] if argv else ''
            self.LOG.error(unknown_command(word, self.command_names()))
            return 2
        return super().run_subcommand(argv)

    def build_option_parser(self, description: str | None,
                            version: str | None,
                            argparse_kwargs: dict[str, Any] | None = None
                            ) -> argparse.ArgumentParser:
        parser = GlobalParser(description=description, add_help=False,
                              allow_abbrev=False,
                              **(argparse_kwargs or {}))
        parser.add_argument('--version', action='version',
                            version=f'crcache {version}')
        verbosity = parser.add_mutually_exclusive_group()
        verbosity.add_argument(
            '-v', '--verbose', action='count', dest='verbose_level',
            default=self.DEFAULT_VERBOSE_LEVEL,
            help='Report more of what is happening on stderr; repeat for '
                 'debug detail.')
        verbosity.add_argument(
            '-q', '--quiet', action='store_true',
            help='Report only warnings and errors: no progress of slow '
                 'work (provisioning, waiting, copying) on stderr.')
        parser.add_argument(
            '--log-file', metavar='FILE',
            help='Also write a detailed log to FILE.')
        parser.add_argument(
            '-h', '--help', dest='deferred_help', action='store_true',
            help='Show this help, or a command\'s with COMMAND --help.')
        parser.add_argument(
            '--debug', action='store_true', default=False,
            help='Show tracebacks on errors.')
        parser.add_argument(
            '-s', '--source', metavar='SOURCE',
            help='The source for commands that take one, such as acquire '
                 '(default: local).')
        return parser

    def configure_logging(self) -> None:
        super().configure_logging()
        # cliff's console handler, added last: a live progress line
        # takes over its stream (see crcache.progress).
        self._console = logging.getLogger('').handlers[-1]
        # Library chatter (paramiko, stevedore) only when asked for.
        if self.options.verbose_level < 2:
            quiet_libraries()
        else:
            for name in QUIET_LIBRARIES:
                logging.getLogger(name).setLevel(logging.NOTSET)
            logging.getLogger('paramiko').propagate = True

    def interact(self) -> None:
        # crcache has no interactive mode: with no command, show the help.
        self.options.deferred_help = True
        self.print_help_if_requested()

    @property
    def cache(self) -> Any:
        """The configuration and state store, opened on first use."""
        if self._cache is None:
            from crcache import cache
            self._cache = cache.Cache.open(
                progress=_Deferred(self._reporter))
        return self._cache

    def _reporter(self) -> Any:
        """Where slow work is reported: stderr, live on a terminal.

        Made when something slow first happens (see _Deferred), so fast
        commands never import crcache.progress nor start its thread.
        """
        from crcache import progress
        return progress.reporter(self.stderr, quiet=self.options.quiet,
                                 console=self._console)

    def clean_up(self, cmd: Any, result: int,
                 err: BaseException | None) -> None:
        # The store is deliberately not closed: the process ends right
        # after this, and the last connection to close an SQLite database
        # in WAL mode checkpoints it (with an fsync) and deletes the WAL,
        # which the next command then recreates. Left open, the WAL is
        # checkpointed as it grows instead: the same safety, without a
        # millisecond or more on every command that wrote.
        self._cache = None


class _Deferred:
    """Stands in for an object made by ``make`` when first used."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            if self._made is None:
                self._made = self._make()
        return getattr(self._made, name)


def _terminated(signum: int, frame: object) -> None:
    # Unwind like Ctrl-C does, so half-done work is undone on the way out.
    raise SystemExit(128 + signum)


def run(argv: list[str], prebuilt: CrcacheApp | None = None) -> int:
    """Run one crcache command line in this process; return the status.

    ``prebuilt`` is an application built ahead (by the agent's spare
    worker, before it knew its client): used if it was built for the
    program name this process now has, after taking on the process's
    current locale and standard streams.
    """
    import os
    import signal
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminated)
    if (prebuilt is not None
            and prebuilt.parser.prog == os.path.basename(sys.argv[0])):
        prebuilt._set_streams(None, None, None)
        return prebuilt.run(argv)
    return CrcacheApp().run(argv)
