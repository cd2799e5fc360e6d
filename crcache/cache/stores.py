"""The state stores a configuration uses, opened on first use.

Each source lives in one store (its ``store`` key); instances are found
by name in whichever store holds them. A store is opened (connected, for
a server) only when something needs it, so a command about sources of
the embedded store never pays for a shared one. A shared store gets a
:class:`~crcache.cache.heartbeat.Heartbeat` when opened.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from crcache import exceptions
from crcache.cache import kinds
from crcache.config import Config
from crcache.sources import base
from crcache.store.base import Instance, Store


class Stores:
    """Opens and hands out the stores ``config`` defines.

    ``opened`` are stores already open, by name (tests, and callers with
    a store of their own). ``on_wait`` is told when a store makes us
    wait noticeably.
    """

    def __init__(self, config: Config,
                 opened: dict[str, Store] | None = None,
                 on_wait: Any = None) -> None:
        self.config = config
        self.on_wait = on_wait
        self._open: dict[str, Store] = {}
        self._lock = threading.Lock()
        self._heartbeats: dict[str, Any] = {}
        for store in (opened or {}).values():
            self._adopt(store)

    def _adopt(self, store: Store) -> Store:
        store.on_wait = self.on_wait
        self._open[store.name] = store
        if store.shared:
            from crcache.cache import heartbeat
            self._heartbeats[store.name] = heartbeat.Heartbeat(store)
        return store

    def get(self, name: str) -> Store:
        """The store called ``name``, opened now if it was not yet."""
        with self._lock:
            store = self._open.get(name)
            if store is None:
                store = self._adopt(self.config.open_store(name))
            return store

    def of(self, source: str) -> Store:
        """The store that keeps ``source``'s instances."""
        return self.get(self.config.store_of(source))

    def of_instance(self, inst: Instance) -> Store:
        """The store ``inst`` was read from."""
        return self.get(inst.store or self.config.store_of(inst.source))

    def driver(self, source: str) -> base.BackendSource | None:
        """``source``'s driver if it makes resources, labelled with its
        store's id (backends label what they make with it)."""
        found = kinds.backend(self.config.source(source))
        if found is not None and not found.owner:
            found.owner = self.of(source).store_id
        return found

    def names(self) -> list[str]:
        """The stores worth looking in: every store defined without error
        (one whose sources were all removed still holds their
        instances)."""
        return [name for name in self.config.store_names()
                if name not in self.config.store_errors]

    def each(self, failures: dict[str, exceptions.CrcacheError]
             | None = None) -> Iterable[Store]:
        """Every store worth looking in, opened. A store that cannot be
        opened is left out if ``failures`` is given (and its error put
        there), and raises otherwise."""
        for name in self.names():
            try:
                store = self.get(name)
            except exceptions.CrcacheError as err:
                if failures is None:
                    raise
                failures[name] = err
                continue
            yield store

    def find(self, instance: str) -> Store:
        """The store that holds the instance called ``instance``.

        Stores whose sources could have named it are looked in first (a
        name is ``<source>-<n>``, and only the store's own rows say which
        source an instance really belongs to).
        """
        prefix = instance.rpartition('-')[0]
        likely = []
        if self.config.usable(prefix):
            likely.append(self.config.store_of(prefix))
        known: list[str] = []
        failures: dict[str, exceptions.CrcacheError] = {}
        order = likely + [n for n in self.names() if n not in likely]
        for name in order:
            try:
                store = self.get(name)
            except exceptions.CrcacheError as err:
                failures[name] = err
                continue
            with store.reading() as tx:
                if tx.get(instance) is not None:
                    return store
                if not known:
                    known = [i.name for i in tx.instances()]
        if failures:
            # It may well be in the store we could not reach.
            raise next(iter(failures.values()))
        raise exceptions.UnknownInstance(instance, known)

    def close(self, stores: bool = False) -> None:
        """Stop the heartbeats; with ``stores``, close the stores too
        (else they stay open for the process)."""
        for beat in self._heartbeats.values():
            beat.stop()
        if stores:
            with self._lock:
                opened, self._open = list(self._open.values()), {}
                self._heartbeats = {}
            for store in opened:
                store.close()
