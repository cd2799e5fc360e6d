"""Find, load and check the definitions of sources and stores.

Configuration roots hold ``sources/<name>/source.conf`` and
``stores/<name>/store.conf`` (see :mod:`crcache.config.files` for the
rules every file follows). A source named ``local`` and a store named
``local`` always exist implicitly: this machine, and the embedded SQLite
state store. Each source lives in one store (its ``store`` key), a pool
in the same store as every source it draws from, and a source bound to
this machine never in a shared store.

A definition that is wrong does not stop the others: its error is kept
(:attr:`Config.errors`) and raised when that source is used, so ``crcache
status`` can show it beside the healthy ones and commands about other
sources work. A pool drawing from a broken source is broken too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from crcache import exceptions
from crcache import opts as common_opts
from crcache import paths
from crcache.config import files
from crcache.config import plugins
from crcache.config.files import Definition
from crcache.sources import base

__all__ = ['Config', 'Definition']

SOURCE_CONF = 'source.conf'
STORE_CONF = 'store.conf'
IMPLICIT_LOCAL = 'local'
#: The common keys that decide what a source's instances are, and so are
#: part of its fingerprint (the rest say how this client behaves).
FINGERPRINTED = ('type', 'reserve', 'maximum', 'store')


class Config:
    """Every source and store the configuration roots define, checked."""

    def __init__(self, roots: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.env = env
        explicit = roots is None and paths.CONFIG_PATH_ENV in env
        self.roots = (list(roots) if roots is not None
                      else paths.config_search_path(env))
        if explicit:
            for root in self.roots:
                if not os.path.isdir(root):
                    raise exceptions.ConfigError(
                        root, f'no such directory (named in '
                        f'{paths.CONFIG_PATH_ENV})')
        found = files.discover(self.roots, 'sources', SOURCE_CONF)
        self.definitions = found.definitions
        self.shadowed = found.shadowed
        #: The configuration error of each broken source.
        self.errors = found.errors
        self.definitions.setdefault(
            IMPLICIT_LOCAL, Definition(IMPLICIT_LOCAL, None, None))
        self.definitions = dict(sorted(self.definitions.items()))
        stores = files.discover(self.roots, 'stores', STORE_CONF)
        self.store_definitions = stores.definitions
        self.shadowed_stores = stores.shadowed
        #: The configuration error of each broken store.
        self.store_errors = stores.errors
        self.store_definitions.setdefault(
            IMPLICIT_LOCAL, Definition(IMPLICIT_LOCAL, None, None))
        self.store_definitions = dict(sorted(
            self.store_definitions.items()))
        self._stores: dict[str, tuple[type, Any]] = {}
        for definition in self.store_definitions.values():
            if definition.name not in self.store_errors:
                try:
                    self._stores[definition.name] = self._load_store(
                        definition)
                except exceptions.ConfigError as err:
                    self.store_errors[definition.name] = err
        self._sources: dict[str, base.Source] = {}
        for definition in self.definitions.values():
            if definition.name in self.errors:
                continue
            try:
                self._sources[definition.name] = self._load(definition)
            except exceptions.ConfigError as err:
                self.errors[definition.name] = err
        self._check()

    # -- loading -----------------------------------------------------------

    def _load(self, definition: Definition) -> base.Source:
        path = definition.path
        if path is None:
            from crcache.sources import local
            cls: type[base.Source] = local.LocalSource
            keys: files.Keys = {}
            defaults = {'type': IMPLICIT_LOCAL}
        else:
            type_name, keys = files.read_keys(
                path, plugins.installed(plugins.SOURCES))
            cls = plugins.load_class(plugins.SOURCES, type_name, path,
                                     base.Source, 'source')
            defaults = None
        conf = files.load(path, keys,
                          common_opts.COMMON_OPTS + list(cls.opts), defaults)
        return cls(definition.name, conf, self.source)

    def _load_store(self, definition: Definition) -> tuple[type, Any]:
        from crcache.store import base as store_base
        path = definition.path
        if path is None:
            from crcache.store import sqlite
            return sqlite.SQLiteStore, None
        type_name, keys = files.read_keys(
            path, plugins.installed(plugins.STORES))
        cls = plugins.load_class(plugins.STORES, type_name, path,
                                 store_base.Store, 'store')
        conf = files.load(path, keys, common_opts.STORE_OPTS + list(cls.opts))
        for opt in cls.opts:
            if opt.dest == 'url' and not conf.url:
                raise exceptions.ConfigError(
                    path, f"missing required key 'url' for type={type_name}")
        return cls, conf

    def _path(self, name: str) -> str:
        return self.definitions[name].path or name

    # -- checks across definitions -----------------------------------------

    def _check(self) -> None:
        for name in list(self._sources):
            self._find_cycle(name, [])
        for name, source in list(self._sources.items()):
            for key, problem in source.validate():
                self._break(name, f'{key}: {files.one_line(problem)}')
                break
        changed = True
        while changed:  # until no pool is left over a broken source
            changed = False
            for name, source in list(self._sources.items()):
                problem = (self._layering_problem(source)
                           or self._store_problem(source))
                if problem is not None:
                    self._break(name, problem)
                    changed = True

    def _break(self, name: str, problem: str) -> None:
        self.errors[name] = exceptions.ConfigError(self._path(name),
                                                   problem)
        del self._sources[name]

    def _layering_problem(self, source: base.Source) -> str | None:
        for child in source.children:
            if child in self.errors:
                return (f"sources: source '{child}' cannot be used: "
                        f'{self.errors[child]}')
            if child not in self._sources:
                return (f"sources: unknown source '{child}'"
                        f"{exceptions.did_you_mean(child, self._sources)}; "
                        f"configured sources: {', '.join(self._sources)}")
        return None

    def _store_problem(self, source: base.Source) -> str | None:
        store = source.conf.store
        if store in self.store_errors:
            return (f"store: store '{store}' cannot be used: "
                    f'{self.store_errors[store]}')
        if store not in self._stores:
            return (f"store: unknown store '{store}'"
                    f"{exceptions.did_you_mean(store, self._stores)}; "
                    f"configured stores: {', '.join(self._stores)}")
        if self._stores[store][0].shared and source.shares_filesystem:
            return (f"store: a source of type '{source.conf.type}' is "
                    "bound to this machine, so it cannot live in the "
                    f"shared store '{store}'")
        for child in source.children:
            child_store = self._sources[child].conf.store
            if child_store != store:
                return (f"store: source '{child}', which this pool draws "
                        f"from, is in store '{child_store}', not "
                        f"'{store}': a pool and its sources share one "
                        'store')
        return None

    def _find_cycle(self, name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = trail[trail.index(name):] + [name]
            for member in cycle[:-1]:
                if member in self._sources:
                    self.errors[member] = exceptions.ConfigError(
                        self._path(cycle[0]),
                        f"sources: pool cycle {' -> '.join(cycle)}")
                    del self._sources[member]
            return
        source = self._sources.get(name)
        for child in source.children if source is not None else ():
            self._find_cycle(child, trail + [name])

    # -- sources -----------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the active sources (broken ones included), sorted."""
        return list(self.definitions)

    def usable(self, name: str) -> bool:
        """Whether ``name`` is defined and loaded without error."""
        return name in self._sources

    def usable_names(self) -> list[str]:
        """Names of the sources that loaded without error, sorted."""
        return [name for name in self.definitions if name in self._sources]

    def source(self, name: str) -> base.Source:
        """Return the configured source called ``name``.

        Raises its :class:`~crcache.exceptions.ConfigError` if its
        definition is broken, :class:`~crcache.exceptions.UnknownSource`
        if nothing defines it.
        """
        try:
            return self._sources[name]
        except KeyError:
            pass
        if name in self.errors:
            raise self.errors[name]
        raise exceptions.UnknownSource(name, self.definitions)

    def fingerprint(self, name: str) -> str:
        """What decides the instances of source ``name``, hashed: its
        type and keys, except those each client may set its own way
        (credentials, timeouts: the type's ``local_keys``)."""
        source = self.source(name)
        cls = type(source)
        keys = {}
        for opt in common_opts.COMMON_OPTS + list(cls.opts):
            if opt.dest in FINGERPRINTED or (
                    opt in cls.opts and opt.dest not in cls.local_keys):
                keys[opt.dest] = getattr(source.conf, opt.dest)
        text = json.dumps(keys, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- stores ------------------------------------------------------------

    def store_of(self, source: str) -> str:
        """The name of the store a usable source lives in."""
        return self.source(source).conf.store

    def store_names(self) -> list[str]:
        """Names of the active stores (broken ones included), sorted."""
        return list(self.store_definitions)

    def store_type(self, name: str) -> str | None:
        """The ``type`` of the store ``name`` (None if it is broken)."""
        entry = self._stores.get(name)
        if entry is None:
            return None
        return entry[1].type if entry[1] is not None else 'sqlite'

    def store_shared(self, name: str) -> bool:
        """Whether the store ``name`` is of a type machines share."""
        entry = self._stores.get(name)
        return bool(entry and entry[0].shared)

    def open_store(self, name: str) -> Any:
        """Open the store ``name`` (connecting, for a server)."""
        if name in self.store_errors:
            raise self.store_errors[name]
        if name not in self._stores:
            raise exceptions.ConfigError(
                name, f"unknown store '{name}'; configured stores: "
                f"{', '.join(self._stores)}")
        cls, conf = self._stores[name]
        return cls.from_conf(name, conf, self.env)
