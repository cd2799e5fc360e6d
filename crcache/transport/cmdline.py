"""Turn a ``crcache run`` argv into the line an instance's shell runs.

Every source type hands one string to a POSIX shell on the instance, as
``ssh host cmd args`` does, so a command behaves the same wherever it
runs. Unlike ssh, crcache quotes the words of a multi-word argv so that
they arrive intact (``crcache run x -- sh -c 'echo $A'`` runs ``sh`` with
the two arguments it was given), while leading ``NAME=value`` words stay
shell assignments (``A=1 python -m ...``, which test runners rely on). A
single word is passed through untouched: it is a shell command line of its
own (``crcache run x 'make && make check'``).
"""

from __future__ import annotations

import re
import shlex

_ASSIGNMENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=')


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
