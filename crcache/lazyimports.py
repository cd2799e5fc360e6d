"""Libraries loaded when first used, not when imported.

oslo.config's ``types`` module imports ``rfc3986`` and ``netaddr`` for
option types crcache never declares (URIs, IP addresses and networks).
Importing them compiles large regular expressions: about 60 ms of every
command that does not go through the agent, and of every agent's start,
for nothing. paramiko's ``config`` module imports ``invoke``, whose
only use is running the command of a ``Match exec`` block in an
``ssh_config`` file: about 75 ms of a cold ``crcache run`` over ssh (a
quarter of it), and several MiB of every agent that serves ssh sources.
:func:`defer` puts a module in ``sys.modules`` that loads the real one
at its first attribute access, so a plugin that does use such an option,
or an ``ssh_config`` that does use ``Match exec``, still gets the
library, whole.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

#: What oslo.config imports and crcache's own options never use.
UNUSED_BY_CRCACHE = ('rfc3986', 'netaddr')
#: What paramiko imports that crcache's ssh source uses only when an
#: ``ssh_config`` file asks for it (``Match exec``).
UNUSED_BY_PARAMIKO = ('invoke',)


class _Deferred(types.ModuleType):
    """Stands in for a module until one of its attributes is wanted.

    (importlib's ``LazyLoader`` does not do here: the ``import``
    statement itself reads ``__spec__``, which loads such a module at
    once. This one has ``__spec__`` of its own.)
    """

    def __getattr__(self, attr: str) -> Any:
        # Called only for attributes this stand-in lacks: all but
        # __name__, __spec__ and the like. Load the real module now and
        # become a view of it (whoever imported the stand-in keeps it).
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def defer(*names: str) -> None:
    """Make each of ``names`` (not imported yet) load on first use."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue  # not installed: the import will say so, if made
        stand_in = _Deferred(name)
        stand_in.__spec__ = spec
        sys.modules[name] = stand_in
