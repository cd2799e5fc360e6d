"""The cache: every instance state transition, behind one facade.

Commands (and the Python API) call :class:`Cache`; nothing above it
touches the store or a source driver. Inside, each job has a module:

* :mod:`~crcache.cache.claims`: what an acquisition takes, decided inside
  one store transaction (never calling a backend);
* :mod:`~crcache.cache.queue`: ``acquire --wait``'s first-come queue;
* :mod:`~crcache.cache.lifecycle`: hooks, release, discard and undo,
  between transactions;
* :mod:`~crcache.cache.provisioning`: making instances (acquire, checking
  cached ones, fill);
* :mod:`~crcache.cache.use`: running commands and copying files;
* :mod:`~crcache.cache.report`: status, listings and ``--query`` figures;
* :mod:`~crcache.cache.gc` and :mod:`~crcache.cache.autogc`: finishing or
  undoing interrupted work, and reclaiming the expired;
* :mod:`~crcache.cache.kinds`: the one place source kinds are told apart.

An acquisition claims everything it needs in a single transaction, so two
processes can never be handed the same instance and a request that
cannot be met changes nothing. Rows are written before a backend is asked
for anything and carry the identity of the process working on them, so a
crash at any point leaves a row that says what may exist and who was
responsible; gc finishes or undoes such work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crcache import exceptions
from crcache.cache import kinds
from crcache.cache import records
from crcache.cache.claims import Claimer
from crcache.cache.lifecycle import Lifecycle
from crcache.cache.provisioning import Provisioner
from crcache.cache.records import check_instance_name
from crcache.cache.report import SourceStatus
from crcache.cache.stores import Stores
from crcache.cache.use import User, split_location
from crcache.config import Config
from crcache.sources import base
from crcache.store.base import Instance, Store

if TYPE_CHECKING:
    from crcache.cache.gc import Action

__all__ = ['Cache', 'SourceStatus', 'check_instance_name', 'split_location']

LOG = logging.getLogger(__name__)


class Cache:
    """Acquire, release and use instances of configured sources.

    ``progress`` (a :class:`crcache.progress.Reporter`) is told about
    slow work: provisioning, waiting, copying. By default nothing is
    reported.
    """

    def __init__(self, config: Config, store: Store | None = None,
                 progress: Any = None) -> None:
        self.config = config
        if progress is None:
            from crcache.progress import Reporter
            progress = Reporter()
        self.progress = progress
        #: The stores, opened as they are needed. ``store``, if given, is
        #: one already open (for tests: the embedded store, ``local``).
        self.stores = Stores(config, {store.name: store} if store else None,
                             on_wait=progress.event)
        self._life = Lifecycle(config, self.stores, progress)
        self._claimer = Claimer(config)
        self._provisioner = Provisioner(self._life, self._claimer)
        self._user = User(config, self.stores, progress)

    @classmethod
    def open(cls, env: Any = None, progress: Any = None) -> 'Cache':
        """The cache of the configuration (and so the state stores) that
        ``env`` (default: this process's environment) names, as the
        command line finds them."""
        from crcache.config import prepared
        environ = os.environ if env is None else env
        config = prepared.take(environ)
        if config is None:
            config = Config(env=env)
            prepared.loaded(environ)
        return cls(config, progress=progress)

    def close(self) -> None:
        """Close the state stores (and stop their heartbeats); the cache
        may not be used afterwards."""
        self.stores.close(stores=True)

    # -- instances ---------------------------------------------------------

    def acquire(self, source_name: str, count: int = 1,
                holder: dict[str, Any] | None = None,
                wait: float | None = None,
                lease: float | None = None) -> list[Instance]:
        """Take ``count`` instances of a source, all or nothing.

        Cached instances are handed out first (after checking that they
        still answer); the rest are provisioned, in parallel. Without
        ``wait`` a source without room raises
        :class:`~crcache.exceptions.CapacityError` at once, having changed
        nothing; with it, the acquisition queues (first come, first
        served) for up to ``wait`` seconds (0: for ever). ``lease``
        (seconds; default: the source's ``lease``) lets ``crcache gc``
        reclaim the instances once it has passed. Garbage due in the
        sources it draws from is collected first (within a budget).
        """
        if count < 1:
            raise exceptions.CrcacheError(
                f'cannot acquire {count} instances: ask for 1 or more')
        source = self.config.source(source_name)
        if lease is None:
            lease = source.conf.lease
        self._collect_first(source)
        return self._provisioner.acquire(
            source, count, holder or records.current_holder(), wait, lease)

    def _collect_first(self, source: base.Source) -> None:
        from crcache.cache import autogc
        drawn: set[str] = set()
        todo = [source.name]
        while todo:
            name = todo.pop()
            if name in drawn or not self.config.usable(name):
                continue
            drawn.add(name)
            pool = kinds.layered(self.config.source(name))
            todo.extend(pool.children if pool is not None else ())
        try:
            autogc.collect_before_acquire(self._life, drawn)
        except exceptions.StoreError as err:
            # The acquire itself cannot do without the store: it says so.
            LOG.debug('garbage collection before acquiring: %s', err)
        except exceptions.CrcacheError as err:
            LOG.warning('garbage collection before acquiring: %s', err)

    def fill(self, names: Iterable[str] | None = None,
             replace: Iterable[str] = ()) -> list[Instance]:
        """Provision instances until each source has its ``reserve``.

        New instances are cached, ready for the next acquire. Sources
        already at their reserve (or their maximum) get nothing. Returns
        the instances made; failures are reported together at the end,
        after every other instance was tried. ``replace`` names cached
        instances to discard first, so that fresh ones take their place
        (what a release does with ``reset = recreate``, in the
        background; see :mod:`crcache.cache.resets`).
        """
        replace = list(replace)
        if replace:
            from crcache.cache import resets
            return resets.replace_and_fill(self._life, self._provisioner,
                                           replace, list(names or ()))
        return self._provisioner.fill(names)

    def release(self, names: Iterable[str], force: bool = False) -> None:
        """Release each named instance; report every failure at the end.

        Each is kept cached if its source's ``reserve`` wants it, and
        discarded otherwise. An instance held by another user or machine
        (in a shared store) is refused unless ``force``.
        """
        self._life.release(names, force=force)

    # -- use ---------------------------------------------------------------

    def resolve(self, name: str) -> tuple[Instance, base.BackendSource]:
        """The backend instance doing ``name``'s work, and its source."""
        return self._user.resolve(name)

    def run(self, name: str, argv: list[str], stdin: int = 0,
            stdout: int = 1, stderr: int = 2) -> int:
        """Run ``argv`` on an acquired instance; return its exit status."""
        return self._user.run(name, argv, stdin, stdout, stderr)

    def copy(self, src: str, dst: str, recursive: bool = False) -> None:
        """Copy between ``[INSTANCE:]PATH`` arguments (``cp -p`` style)."""
        self._user.copy(src, dst, recursive)

    def copy_in(self, name: str, local: str, remote: str,
                recursive: bool = False) -> None:
        """Copy local path ``local`` to ``remote`` on instance ``name``."""
        self._user.copy_in(name, local, remote, recursive)

    def copy_out(self, name: str, remote: str, local: str,
                 recursive: bool = False) -> None:
        """Copy ``remote`` on instance ``name`` to local path ``local``."""
        self._user.copy_out(name, remote, local, recursive)

    def place_files(self, name: str, files: Iterable[str]) -> None:
        """Make local files exist at the same absolute paths on an
        instance (for test runners' ``$FILES``)."""
        self._user.place_files(name, files)

    # -- reports -----------------------------------------------------------

    def status(self, names: Iterable[str] | None = None
               ) -> list[SourceStatus]:
        """Per-source counts; unknown names are an error."""
        from crcache.cache import report
        return report.status(self.config, self.stores, names)

    def instance(self, name: str) -> Instance:
        """The instance called ``name``, whatever its state.

        Raises :class:`~crcache.exceptions.UnknownInstance` when no
        store holds it.
        """
        check_instance_name(name)
        store = self.stores.find(name)
        with store.reading() as tx:
            found = tx.get(name)
        if found is None:  # gone between the two reads
            raise exceptions.UnknownInstance(name)
        return found

    def instances(self, sources: Iterable[str] | None = None
                  ) -> list[Instance]:
        """The instances of ``sources`` (all when None)."""
        from crcache.cache import report
        return report.instances(self.stores, sources)

    def query(self, what: str, names: list[str]) -> int | str:
        """One ``status --query`` figure over the named sources."""
        from crcache.cache import report
        return report.query(what, names, report.nodes(self.config, names),
                            self.instances())

    def slow(self, found: Iterable[Instance]) -> list[str]:
        """Lines about instances stuck provisioning or discarding."""
        from crcache.cache import report
        return report.slow(found)

    def store_report(self) -> list[Any]:
        """Every store: definition, and whether it can be reached."""
        from crcache.cache import report
        return report.stores(self.config, self.stores)

    def children(self, name: str) -> list[str]:
        """The sources ``name`` draws from (none unless it is a pool)."""
        from crcache.cache import report
        return report.children(self.config, name)

    def broken(self, name: str) -> bool:
        """Whether ``name``'s definition has an error."""
        return name in self.config.errors

    def definition_path(self, name: str) -> str | None:
        """The file defining ``name`` (None for the implicit local)."""
        definition = self.config.definitions.get(name)
        return definition.path if definition else None

    def shadowed(self) -> list[tuple[str, str | None]]:
        """(name, path) of definitions hidden by an earlier root."""
        return [(d.name, d.path) for d in self.config.shadowed]

    # -- garbage -----------------------------------------------------------

    def collect(self, leaks: bool = False) -> list['Action']:
        """One garbage collection pass (see :mod:`crcache.cache.gc`)."""
        from crcache.cache import gc
        return gc.collect(self._life, leaks=leaks)

    def forget(self, sources: list[str]) -> list['Action']:
        """Forget the instances of sources that cannot be loaded."""
        from crcache.cache import gc
        return gc.forget(self._life, sources)

    # -- snapshots ---------------------------------------------------------

    def captures(self, names: list[str] | None = None,
                 check: bool = False) -> list[tuple[Any, bool | None]]:
        """Every recorded capture (of ``names``), each with whether it is
        the one its source would start from now (asked of the backend
        with ``check``, else None)."""
        from crcache.cache import snapshots
        for name in names or ():
            self.config.source(name)  # an unknown name is an error
        found = snapshots.rows(self._life, names)
        fingerprints: dict[str, str | None] = {}
        result = []
        for row in found:
            is_current = None
            if check:
                if row.source not in fingerprints:
                    fingerprints[row.source] = snapshots.current(
                        self._life, row.source)
                is_current = row.fingerprint == fingerprints[row.source]
            result.append((row, is_current))
        return result

    def reset_failures(self, names: Iterable[str]) -> list[str]:
        """Messages about background resets of ``names`` that failed."""
        from crcache.cache import resets
        return resets.failures(self.config.env, list(names))

    def drop_snapshot(self, name: str) -> list['Action']:
        """Remove every capture of source ``name``."""
        from crcache.cache import snapshots
        return snapshots.drop(self._life, name)
