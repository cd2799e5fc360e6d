"""Turn a ``crcache run`` argv into the line an instance's shell runs.

Every source type hands one string to a POSIX shell on the instance, as
``ssh host cmd args`` does, so a command behaves the same wherever it
runs. Unlike ssh, crcache quotes the words of a multi-word argv so that
they arrive intact (``crcache run x -- sh -c 'echo $A'`` runs ``sh`` with
the two arguments it was given), while leading ``NAME=value`` words stay
shell assignments (``A=1 python -m ...``, which test runners rely on). A
single word is passed through untouched: it is a shell command line of its
own (``crcache run x 'make && make check'``).

:func:`in_directory` and :func:`with_environment` wrap such a line so
that it runs in a given directory, or with given variables exported;
they refuse what no shell could be handed safely.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from crcache import exceptions

_ASSIGNMENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=')
_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


def join(argv: list[str]) -> str:
    """Return the shell command line for ``argv``; see the module doc."""
    if len(argv) == 1:
        return argv[0]
    words = []
    assigning = True
    for word in argv:
        match = _ASSIGNMENT.match(word) if assigning else None
        if match:
            name = match.group(0)
            words.append(name + shlex.quote(word[len(name):]))
        else:
            assigning = False
            words.append(shlex.quote(word))
    return ' '.join(words)


def in_directory(directory: str, line: str) -> str:
    """The command line that runs ``line`` in ``directory``.

    When the directory cannot be entered, the shell exits with ``cd``'s
    (non-zero) status and ``line`` does not run, whatever it holds
    (``||`` included).

    :raises ~crcache.exceptions.InvalidName: for an empty directory, one
        holding a NUL byte, or an empty ``line``.
    """
    if not line:
        raise exceptions.InvalidName(
            'a command is needed to run in a directory')
    if not directory or '\0' in directory:
        raise exceptions.InvalidName(
            f'refusing directory {directory!r}: '
            + ('empty' if not directory else 'it holds a NUL byte'))
    return f'cd -- {shlex.quote(directory)} || exit; {line}'


def with_environment(env: Mapping[str, str], line: str) -> str:
    """The command line that runs ``line`` with ``env`` exported.

    The variables are added to (or replace those of) the environment the
    instance's shell starts with; the others are kept.

    :raises ~crcache.exceptions.InvalidName: for a name that is not a
        shell variable name (letters, digits and ``_``, not starting with
        a digit), a value that is not a string or holds a NUL byte, or an
        empty ``line``.
    """
    if not line:
        raise exceptions.InvalidName(
            'a command is needed to run with an environment')
    if not env:
        return line
    words = []
    for name, value in env.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise exceptions.InvalidName(
                f'refusing environment variable name {name!r}: not a '
                'shell variable name')
        if not isinstance(value, str) or '\0' in value:
            raise exceptions.InvalidName(
                f'refusing the value of environment variable {name}: '
                + ('not a string' if not isinstance(value, str)
                   else 'it holds a NUL byte'))
        words.append(f'{name}={shlex.quote(value)}')
    return f"export {' '.join(words)} || exit; {line}"
