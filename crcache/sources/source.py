"""What every source type has, backend or layered.

:class:`Source` is a configured, named provider of instances: its name,
its parsed ``source.conf``, the common keys every type reads the same way
(``reserve``, ``maximum``, ``concurrency``) and the class attributes a
type declares (its ``opts``, its ``local_keys``...). A type subclasses
one of its two kinds, :class:`~crcache.sources.backend.BackendSource` or
:class:`~crcache.sources.layered.LayeredSource`; plugins import all three
from :mod:`crcache.sources.base`, whose docstring is the contract.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar


class Source(abc.ABC):
    """A configured, named provider of instances.

    Subclass :class:`BackendSource` or :class:`LayeredSource`, never this
    class directly: the cache tells the two kinds apart by those classes.
    """

    #: oslo.config options this type adds to the common ``source.conf``
    #: keys. This list is what crcache registers and enforces; name each
    #: key with the type's name as prefix (``dirs_root``).
    opts: ClassVar[list] = []
    #: Keys of ``opts`` that each machine or user may set its own way
    #: (credentials, paths of this machine, timeouts): left out of the
    #: definition's fingerprint, which every client of a shared store
    #: must agree on.
    local_keys: ClassVar[frozenset[str]] = frozenset()
    #: Whether instances see this machine's files at the same paths (so
    #: ``run --files`` has nothing to copy). Declare True only if that is
    #: always so. Such a source is bound to this machine: it cannot live
    #: in a store other machines share.
    shares_filesystem: ClassVar[bool] = False
    #: The ``maximum`` used when ``source.conf`` leaves it unset: 1 for a
    #: type whose instances are one machine, 0 (no limit) otherwise.
    default_maximum: ClassVar[int] = 0
    #: Modules the type's commands import when they first need them (its
    #: library, its connection code): the crcache agent imports them once
    #: a configuration it loaded uses the type, so that commands through
    #: it find them loaded. Names only; nothing is imported at start-up
    #: for them.
    warm_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, conf: Any,
                 get_source: Callable[[str], 'Source']) -> None:
        """Keep the definition; reach nothing.

        Called for every configured source on every crcache invocation,
        including those that never use it: no connection, no backend
        call, no import of a heavy library here (see the module's
        *Lifecycle*). A subclass that overrides it calls this first.

        :param name: the source's name, its directory under ``sources/``
            (letters, digits, ``.``, ``_`` and ``-``; at most 64).
        :param conf: the source's own ``oslo_config.cfg.ConfigOpts``,
            holding the common keys and :attr:`opts`, already parsed and
            checked one by one: read keys as attributes
            (``conf.dirs_root``).
        :param get_source: returns another configured source by name (for
            layered sources, whose children are sources too).
        """
        self.name = name
        self.conf = conf
        self.get_source = get_source

    @property
    def reserve(self) -> int:
        """Instances to keep cached instead of discarding on release."""
        return self.conf.reserve

    @property
    def maximum(self) -> int:
        """The most live instances this source may have; 0 is no limit.

        ``maximum`` left unset takes the type's ``default_maximum``; set
        to 0 it means no limit, whatever the type.
        """
        configured = self.conf.maximum
        return self.default_maximum if configured is None else configured

    @property
    def reset_mode(self) -> str:
        """The ``reset`` key: what release does to an instance that stays
        cached (none, recreate or snapshot). Read it here: ``conf.reset``
        is oslo.config's own method, not the key."""
        return self.conf['reset']

    @property
    def configured_concurrency(self) -> int:
        """The ``concurrency`` key; 0 asks the instance."""
        return self.conf.concurrency

    @property
    def children(self) -> list[str]:
        """The sources this one draws its instances from, in order.

        Empty (the default) for a source that makes its own instances;
        a :class:`LayeredSource` names them.
        """
        return []

    def validate(self) -> list[tuple[str, str]]:
        """Check keys against each other; return ``(key, problem)`` pairs.

        Values were already checked one by one by oslo.config; this is
        for rules that span keys, or that oslo.config cannot express (a
        key required for this type). It runs on every invocation, like
        ``__init__``: look at the configuration only, never the backend.
        Subclasses extend the list their superclass returns.

        :returns: one ``(key, problem)`` pair per problem found; the first
            is reported as ``PATH: KEY: PROBLEM`` and the source cannot be
            used until it is fixed (others stay usable).
        """
        problems = []
        maximum = self.conf.maximum
        if maximum and self.reserve > maximum:
            problems.append((
                'reserve',
                f'reserve={self.reserve} is greater than '
                f'maximum={maximum}'))
        return problems
