"""The state store interface the cache layer is written against.

The store remembers every live instance, the per-source counters that
name them, and the definition each source was first used with. All
changes happen inside :meth:`Store.transaction`, which gives the caller
exclusive write access for its (short) duration: the cache layer reads,
decides and writes there, and never holds it while a backend works. The
embedded SQLite store implements it, and so does the shared PostgreSQL
store; a store type is a plugin (entry point group ``crcache.stores``)
constructed from its ``store.conf`` by :meth:`Store.from_conf`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

PROVISIONING = 'provisioning'
IN_USE = 'in-use'
CACHED = 'cached'
DISCARDING = 'discarding'
#: Every state counts against a source's maximum.
LIVE_STATES = (PROVISIONING, IN_USE, CACHED, DISCARDING)
#: The states this crcache knows; a row in any other (edited by hand) is
#: still live, and crcache gc (run by hand) discards it. A new state
#: therefore always comes with a new schema version.
KNOWN_STATES = frozenset(LIVE_STATES)


@dataclasses.dataclass
class Instance:
    """One instance as the store knows it.

    ``child`` names the instance a layered (pool) instance wraps;
    ``parent`` names the pool instance that holds this one. ``ref`` is the
    backend's reference, recorded as soon as the backend returns it.
    ``holder`` describes the process that acquired it; ``op`` the
    process (and hook) working on it while it is provisioning or being
    discarded, so that work abandoned by a crash can be recognised.
    """

    name: str
    source: str
    seq: int
    state: str
    ref: dict[str, Any] | None = None
    concurrency: int | None = None
    child: str | None = None
    parent: str | None = None
    holder: dict[str, Any] | None = None
    lease_expires: float | None = None
    created: float = 0.0
    updated: float = 0.0
    op: dict[str, Any] | None = None
    #: What is wrong with the stored row (an unknown state, a column that
    #: cannot be read), if anything; such a row counts as live and is
    #: discarded by crcache gc.
    problem: str | None = dataclasses.field(default=None, compare=False)
    #: The name of the store it was read from (not stored).
    store: str | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass
class Definition:
    """How a source was defined where a store first saw it used.

    ``fingerprint`` covers its type and the keys that decide what its
    instances are; ``origin`` says where the definition came from (its
    file, the host and user that used it), for messages.
    """

    fingerprint: str
    origin: dict[str, Any]


#: A capture being made (by the process its ``op`` names).
CAPTURING = 'capturing'
#: A capture instances of its source start from.
READY = 'ready'


@dataclasses.dataclass
class Capture:
    """A source's provisioned state, captured by its backend (a snapshot).

    One row per source and ``fingerprint`` (what shaped the captured
    state: see :mod:`crcache.cache.snapshots`). ``state`` is
    :data:`CAPTURING` while one process provisions and captures (its
    ``op`` is that process's work record) and :data:`READY` once
    ``capture`` holds the backend's id for it. ``concurrency`` is what
    the captured instance was found to take: instances started from the
    capture take as many, unprobed.
    """

    source: str
    fingerprint: str
    state: str
    capture: str | None = None
    created: float = 0.0
    op: dict[str, Any] | None = None
    concurrency: int | None = None


@dataclasses.dataclass
class Waiter:
    """A process waiting for a source to have room (acquire --wait)."""

    id: int
    source: str
    count: int
    process: dict[str, Any]
    created: float


class Transaction(abc.ABC):
    """Reads and writes that commit together or not at all."""

    @abc.abstractmethod
    def get(self, name: str) -> Instance | None:
        """Return the named instance, or None."""

    @abc.abstractmethod
    def instances(self, source: str | None = None,
                  states: Iterable[str] | None = None) -> list[Instance]:
        """Return instances, oldest first, optionally filtered."""

    @abc.abstractmethod
    def count(self, source: str,
              states: Iterable[str] | None = None) -> int:
        """Count a source's instances in ``states`` (default: every row,
        whatever its state, since every row is a live instance)."""

    @abc.abstractmethod
    def next_seq(self, source: str) -> int:
        """Take the source's next instance number; numbers never repeat."""

    @abc.abstractmethod
    def definition(self, source: str) -> Definition | None:
        """How ``source`` was defined when first used here, if known."""

    @abc.abstractmethod
    def record_definition(self, source: str, fingerprint: str,
                          origin: dict[str, Any]) -> None:
        """Remember how ``source`` is defined now (see :class:`Definition`)."""

    @abc.abstractmethod
    def add(self, instance: Instance) -> None:
        """Insert a new instance."""

    @abc.abstractmethod
    def update(self, name: str, **fields: Any) -> None:
        """Change fields of an existing instance."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Forget an instance (it is gone)."""

    @abc.abstractmethod
    def add_waiter(self, source: str, count: int,
                   process: dict[str, Any]) -> int:
        """Queue a waiter; return its ticket (tickets only increase)."""

    @abc.abstractmethod
    def waiters(self, source: str) -> list[Waiter]:
        """A source's waiters, first come first."""

    @abc.abstractmethod
    def remove_waiter(self, ticket: int) -> None:
        """Take a waiter out of the queue."""

    @abc.abstractmethod
    def renew_waiter(self, ticket: int, process: dict[str, Any]) -> None:
        """Replace a waiter's process record (to renew its heartbeat)."""

    @abc.abstractmethod
    def captures(self, source: str | None = None) -> list[Capture]:
        """The captures recorded (of ``source``, or of every source)."""

    @abc.abstractmethod
    def add_capture(self, capture: Capture) -> bool:
        """Record a capture; False (and nothing written) if its source
        already has one with that fingerprint."""

    @abc.abstractmethod
    def update_capture(self, source: str, fingerprint: str,
                       **fields: Any) -> None:
        """Change fields (``state``, ``capture``, ``op``) of a capture."""

    @abc.abstractmethod
    def delete_capture(self, source: str, fingerprint: str) -> None:
        """Forget a capture (its backend resource is gone)."""


class Store(abc.ABC):
    """A place that keeps instances between crcache invocations."""

    #: Whether several machines may use it at once. Sources bound to this
    #: machine (``local``) cannot live in a shared store, and work in
    #: progress there is judged by heartbeats, not by process liveness.
    shared: ClassVar[bool] = False
    #: Modules it imports when first opened (its database driver): the
    #: crcache agent imports them once (see Source.warm_modules).
    warm_modules: ClassVar[tuple[str, ...]] = ()
    #: oslo.config options of its ``store.conf`` (besides ``type``).
    opts: ClassVar[list] = []
    #: The store's name (``local`` for the implicit embedded one).
    name: str = 'local'
    #: Where the store lives, for messages.
    location: str = ''
    #: A name unique to this store, for labelling backend resources.
    store_id: str = ''
    #: Told (one line) when a wait for the store becomes noticeable.
    on_wait: Any = None
    #: Seconds after which a worker's heartbeat (in a shared store) is
    #: taken as stopped; see :mod:`crcache.cache.heartbeat`.
    heartbeat_timeout: float = 30.0

    @classmethod
    def from_conf(cls, name: str, conf: Any,
                  env: Mapping[str, str]) -> 'Store':
        """Open the store ``name`` as its ``store.conf`` (``conf``, an
        oslo.config ``ConfigOpts``) describes it."""
        raise NotImplementedError

    @abc.abstractmethod
    def transaction(self, write: bool = True
                    ) -> contextlib.AbstractContextManager[Transaction]:
        """Open a transaction; ``write`` ones exclude other writers."""

    def close(self) -> None:
        """Release connections; the store may not be used afterwards."""

    @contextlib.contextmanager
    def reading(self) -> Iterator[Transaction]:
        """A consistent read-only snapshot."""
        with self.transaction(write=False) as tx:
            yield tx
