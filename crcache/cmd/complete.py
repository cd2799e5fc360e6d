"""``crcache complete``: bash completion, names included.

cliff's own ``complete`` command completes command names and options.
This one writes a script that also completes what crcache knows: the
names of the configured sources wherever a SOURCE goes, those of the
acquired instances wherever an INSTANCE goes (``INSTANCE:`` for ``cp``),
an option's choices (``-f json``), files and directories where paths
go. The script is made from the commands' own argument parsers, so a
new command or option (a plugin's too) is completed without more work;
what an argument completes to is read from its metavar (:data:`KINDS`).

The names come from crcache itself, as the user types: the script runs
``crcache complete --list sources`` (the configuration only) or
``--list instances`` (the state stores), which print one name a line
and never fail noisily.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from collections.abc import Iterable
from typing import Any

from crcache.cmd import base

LOG = logging.getLogger(__name__)

#: What an argument completes to, by its metavar (or, without one, its
#: destination): ``sources`` and ``instances`` are names crcache lists,
#: ``locations`` either ``INSTANCE:`` or a local path, ``files`` and
#: ``dirs`` local paths, ``commands`` crcache's command names. A list
#: gives one kind per position, the last repeating.
KINDS: dict[str, list[str]] = {
    'SOURCE': ['sources'],
    'INSTANCE': ['instances'],
    'INSTANCE [--] COMMAND': ['instances', 'files'],
    '[INSTANCE] [--] COMMAND': ['instances', 'files'],
    'SRC': ['locations'],
    'DST': ['locations'],
    'PATH': ['files'],
    'FILE': ['files'],
    'DIR': ['dirs'],
    'cmd': ['commands'],
}
#: What ``--list`` can list.
LISTS = ('sources', 'instances')


def _kinds(action: argparse.Action) -> list[str]:
    if action.choices:
        return ['words:' + ','.join(str(c) for c in action.choices)]
    key = action.metavar if isinstance(action.metavar, str) else \
        action.dest
    return KINDS.get(key, ['any'])


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


class Complete(base.Command):
    """Print a bash completion script for crcache.

    Enable it in the current shell with ``source <(crcache complete)``,
    and in every new one by adding that line to ~/.bashrc (or by saving
    the output as ~/.local/share/bash-completion/completions/crcache,
    where the bash-completion package finds it). It completes commands,
    options and their choices, and the names of sources (from the
    configuration) and acquired instances (from the state store) where
    a command takes them, asking crcache for them as you type.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--name', metavar='NAME', default=None,
            help='The command name to complete (default: crcache).')
        parser.add_argument(
            '--shell', default='bash', choices=('bash', 'none'),
            help='The shell the script is for; none prints the data '
                 'only, as cliff does (default: bash).')
        # What the script runs to complete names; not for people.
        parser.add_argument('--list', choices=LISTS,
                            help=argparse.SUPPRESS)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        if parsed_args.list:
            for name in self._listed(parsed_args.list):
                self.app.stdout.write(name + '\n')
            return 0
        name = parsed_args.name or self.app.NAME
        if parsed_args.shell == 'none':
            self._data_only(name)
        else:
            self.app.stdout.write(bash_script(name, self._commands(),
                                              self.app.parser))
        return 0

    def _listed(self, what: str) -> list[str]:
        """The names of ``what``; whatever could be read, quietly."""
        from crcache import exceptions
        client = self.client
        try:
            if what == 'sources':
                return client.sources()
            # The instances a user may run on, copy to and release: not
            # those a pool instance holds for it.
            return [i.name for i in client.instances(states=['in-use'])
                    if not i.parent]
        except exceptions.CrcacheError as err:
            LOG.debug('cannot list %s: %s', what, err)
            return []

    def _commands(self) -> list[tuple[str, argparse.ArgumentParser]]:
        """Every command and its parser, by name."""
        found = []
        for name, _ in sorted(self.app.command_manager):
            factory, _, _ = self.app.command_manager.find_command(
                name.split())
            command = factory(self.app, None)
            found.append((name, command.get_parser(
                f'{self.app.NAME} {name}')))
        return found

    def _data_only(self, name: str) -> None:
        from cliff import complete
        dictionary = complete.CompleteDictionary()
        for command, parser in self._commands():
            dictionary.add_command(command.split(),
                                   parser._get_optional_actions())
        complete.CompleteNoCode(name, self.app.stdout).write(
            dictionary.get_commands(), dictionary.get_data())


def bash_script(name: str, commands: list[tuple[str, Any]],
                global_parser: argparse.ArgumentParser) -> str:
    """The bash completion script for ``name`` and these commands."""
    function = '_' + ''.join(c if c.isalnum() else '_' for c in name)
    names = ' '.join(command for command, _ in commands)
    values = _value_cases('', global_parser._actions)
    options = [f"    '') words={_q(_options(global_parser._actions))};;"]
    positionals = []
    for command, parser in commands:
        word = _q(command)
        values += _value_cases(command, parser._actions)
        options.append(f'    {word}) words={_q(_options(parser._actions))};;')
        kinds = [kind for action in parser._actions
                 if not action.option_strings for kind in _kinds(action)]
        if kinds:
            positionals.append(
                f'    {word}) kinds={_q(" ".join(kinds))};;')
    return _TEMPLATE.format(
        name=name, function=function, commands=_q(names),
        values='\n'.join(values), options='\n'.join(options),
        positionals='\n'.join(positionals), lists_pattern='|'.join(LISTS))


def _q(text: str) -> str:
    return shlex.quote(text)


def _options(actions: Iterable[argparse.Action]) -> str:
    return ' '.join(option for action in actions
                    if action.help != argparse.SUPPRESS
                    for option in action.option_strings)


def _value_cases(command: str, actions: Iterable[argparse.Action]
                 ) -> list[str]:
    """``case`` branches: ``"COMMAND OPTION"`` -> what its value is."""
    cases = []
    for action in actions:
        if not action.option_strings or not _takes_value(action):
            continue
        patterns = '|'.join(_q(f'{command} {option}')
                            for option in action.option_strings)
        cases.append(f'    {patterns}) kind={_q(_kinds(action)[0])};;')
    return cases


_TEMPLATE = '''\
# bash completion for {name}, written by `{name} complete`.
# Enable it with:  source <({name} complete)
{function}_words()
{{
  # The candidates for the word being completed, one a line: $1 is a
  # kind (see crcache/cmd/complete.py), $2 the word so far.
  local IFS=$' \\t\\n' kind="$1" cur="$2" name
  local prog="${{COMP_WORDS[0]/#\\~/$HOME}}"
  case "$kind" in
    {lists_pattern})
      "$prog" complete --list "$kind" 2>/dev/null </dev/null \\
        | while IFS= read -r name; do
            [[ "$name" == "$cur"* ]] && printf '%s\\n' "$name"
          done;;
    locations)
      "$prog" complete --list instances 2>/dev/null </dev/null \\
        | while IFS= read -r name; do
            [[ "$name:" == "$cur"* ]] && printf '%s:\\n' "$name"
          done
      compgen -f -- "$cur";;
    commands) compgen -W {commands} -- "$cur";;
    words:*) kind="${{kind#words:}}"; compgen -W "${{kind//,/ }}" -- "$cur";;
    files) compgen -f -- "$cur";;
    dirs) compgen -d -- "$cur";;
  esac
}}

{function}()
{{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev='' cmd='' n=0 i=1 word
  local kind='' kinds='' words=''
  [ "$COMP_CWORD" -gt 0 ] && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  COMPREPLY=()
  # bash splits --opt=value and INSTANCE:PATH at the = and the :.
  if [ "$cur" = '=' ]; then
    cur=''
  elif [ "$cur" = ':' ] || [ "$prev" = ':' ]; then
    return 0  # a path on an instance: nothing to offer
  elif [ "$prev" = '=' ] && [ "$COMP_CWORD" -gt 1 ]; then
    prev="${{COMP_WORDS[COMP_CWORD-2]}}"
  fi
  # The command name (after the global options), and how many of its
  # arguments come before the word being completed.
  while [ "$i" -lt "$COMP_CWORD" ]; do
    word="${{COMP_WORDS[i]}}"
    i=$((i + 1))
    case "$word" in
      -*)
        kind=''
        {function}_value "$cmd" "$word"
        if [ -n "$kind" ]; then
          [ "${{COMP_WORDS[i]}}" = '=' ] && i=$((i + 1))
          i=$((i + 1))
        fi
        continue;;
      :) [ "$i" -lt "$COMP_CWORD" ] && i=$((i + 1)); continue;;
    esac
    if [ -z "$cmd" ]; then cmd="$word"; else n=$((n + 1)); fi
  done
  kind=''
  case "$prev" in -*) {function}_value "$cmd" "$prev";; esac
  if [ -z "$kind" ]; then
    if [[ "$cur" == -* ]]; then
      {function}_options "$cmd"
      COMPREPLY=( $(compgen -W "$words" -- "$cur") )
      return 0
    elif [ -z "$cmd" ]; then
      kind=commands
    else
      {function}_positional "$cmd"
      set -f
      kinds=( $kinds )
      set +f
      if [ "${{#kinds[@]}}" -eq 0 ]; then
        return 0
      elif [ "$n" -lt "${{#kinds[@]}}" ]; then
        kind="${{kinds[n]}}"
      else
        kind="${{kinds[${{#kinds[@]}}-1]}}"
      fi
    fi
  fi
  local IFS=$'\\n'
  COMPREPLY=( $({function}_words "$kind" "$cur") )
  case "$kind" in
    files|dirs|locations) compopt -o filenames 2>/dev/null;;
  esac
  if [ "$kind" = locations ]; then
    for word in "${{COMPREPLY[@]}}"; do
      [[ "$word" == *: ]] && {{ compopt -o nospace 2>/dev/null; break; }}
    done
  fi
  return 0
}}

{function}_value()
{{
  # Sets kind to what the value of option $2 of command $1 is (left
  # alone for an option that takes none).
  case "$1 $2" in
{values}
  esac
}}

{function}_options()
{{
  case "$1" in
{options}
  esac
}}

{function}_positional()
{{
  case "$1" in
{positionals}
  esac
}}

complete -F {function} {name}
'''
