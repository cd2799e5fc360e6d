"""Find, load and check source definitions.

A configuration root holds ``sources/<name>/source.conf``. Roots are
searched in order and the first definition of a name wins whole; later
ones are *shadowed* (``crcache status -a`` shows them). Each file is read
into its own ``oslo_config.cfg.ConfigOpts`` holding the common keys plus
the keys its source type declares. Anything wrong is a
:class:`~crcache.exceptions.ConfigError` naming the file, the key and what
was expected: an unknown key is never ignored and a bad value never
replaced by a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping

from oslo_config import cfg
from oslo_config import types

from crcache import exceptions
from crcache import opts as common_opts
from crcache import paths
from crcache.sources import base

SOURCES_NAMESPACE = 'crcache.sources'
SOURCE_CONF = 'source.conf'
#: Source names become instance names, directory names and shell words.
SOURCE_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
IMPLICIT_LOCAL = 'local'


@dataclasses.dataclass
class Definition:
    """Where a source is defined; ``path`` is None for the implicit local."""

    name: str
    root: str | None
    path: str | None
    active: bool = True

    @property
    def directory(self) -> str | None:
        """The source's directory (holds provision.d and discard.d)."""
        return os.path.dirname(self.path) if self.path else None


def installed_types() -> list[str]:
    """Names of the installed source types."""
    from stevedore import extension
    manager = extension.ExtensionManager(
        SOURCES_NAMESPACE, on_load_failure_callback=lambda *a: None)
    return sorted(set(manager.entry_points_names()))


def driver_class(type_name: str, path: str) -> type[base.Source]:
    """Load the source type ``type_name`` named by the file ``path``."""
    from stevedore import driver
    from stevedore import exception as stevedore_exc

    failures: list[BaseException] = []

    def failed(manager: object, entry_point: object,
               err: BaseException) -> None:
        failures.append(err)

    try:
        manager = driver.DriverManager(
            SOURCES_NAMESPACE, type_name, on_load_failure_callback=failed,
            warn_on_missing_entrypoint=False)
    except stevedore_exc.NoMatches:
        if failures:
            raise exceptions.ConfigError(
                path, f"source type '{type_name}' is installed but failed "
                f"to load: {failures[0]}")
        raise exceptions.ConfigError(
            path, f"unknown type '{type_name}'"
            f"{exceptions.did_you_mean(type_name, installed_types())}; "
            f"installed types: {', '.join(installed_types())}")
    cls = manager.driver
    if not (isinstance(cls, type) and issubclass(cls, base.Source)):
        raise exceptions.ConfigError(
            path, f"source type '{type_name}' is not a crcache Source class")
    return cls


def _read_ini(path: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    parser = cfg.ConfigParser(path, sections)
    try:
        parser.parse()
    except UnicodeDecodeError:
        raise exceptions.ConfigError(path, 'not a text (ini) file')
    except cfg.ParseError as err:
        shown = f': {err.line.strip()!r}' if err.line.strip() else ''
        raise exceptions.ConfigError(
            path, f'not a valid ini file: line {err.lineno}: {err.msg}'
            + shown)
    except OSError as err:
        raise exceptions.ConfigError(
            path, f'cannot read: {err.strerror or err}')
    return sections


def _value_problem(opt: cfg.Opt, raw: str) -> str:
    if isinstance(opt.type, types.Integer):
        try:
            int(raw)
        except ValueError:
            return 'expected a whole number'
    try:
        opt.type(raw)
    except ValueError as err:
        return str(err)
    return 'not a valid value'


class Config:
    """Every source the configuration roots define, loaded and checked."""

    def __init__(self, roots: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.roots = (list(roots) if roots is not None
                      else paths.config_search_path(env))
        self.definitions: dict[str, Definition] = {}
        self.shadowed: list[Definition] = []
        self._sources: dict[str, base.Source] = {}
        self._discover()
        for definition in self.definitions.values():
            self._sources[definition.name] = self._load(definition)
        self._check_layering()

    # -- discovery ---------------------------------------------------------

    def _discover(self) -> None:
        for root in self.roots:
            sources_dir = os.path.join(root, 'sources')
            try:
                entries = sorted(os.listdir(sources_dir))
            except FileNotFoundError:
                continue
            except NotADirectoryError:
                raise exceptions.ConfigError(
                    sources_dir, 'not a directory (expected one directory '
                    'per source)')
            except OSError as err:
                raise exceptions.ConfigError(
                    sources_dir, f'cannot read: {err.strerror or err}')
            for entry in entries:
                directory = os.path.join(sources_dir, entry)
                if entry.startswith('.') or not os.path.isdir(directory):
                    continue
                if not SOURCE_NAME.match(entry):
                    raise exceptions.ConfigError(
                        directory, 'invalid source name: use letters, '
                        'digits, ".", "_" and "-" (not first), at most 64')
                path = os.path.join(directory, SOURCE_CONF)
                if not os.path.lexists(path):
                    raise exceptions.ConfigError(
                        directory, f'this source directory has no '
                        f'{SOURCE_CONF}')
                definition = Definition(entry, root, path)
                if entry in self.definitions:
                    definition.active = False
                    self.shadowed.append(definition)
                else:
                    self.definitions[entry] = definition
        if IMPLICIT_LOCAL not in self.definitions:
            self.definitions[IMPLICIT_LOCAL] = Definition(
                IMPLICIT_LOCAL, None, None)
        self.definitions = dict(sorted(self.definitions.items()))

    # -- loading -----------------------------------------------------------

    def _load(self, definition: Definition) -> base.Source:
        path = definition.path
        if path is None:
            from crcache.sources import local
            cls: type[base.Source] = local.LocalSource
            keys: dict[str, list[str]] = {}
        else:
            sections = _read_ini(path)
            for section in sections:
                if section != 'DEFAULT':
                    raise exceptions.ConfigError(
                        path, f'unknown section [{section}]: source keys '
                        'belong in [DEFAULT]')
            keys = sections.get('DEFAULT', {})
            type_name = (keys.get('type') or [''])[-1].strip()
            if 'type' not in keys:
                for key in keys:
                    if difflib.get_close_matches(key.lower(), ['type']):
                        raise exceptions.ConfigError(
                            path, f"unknown key '{key}' (closest valid "
                            "key: 'type')")
            if not type_name:
                raise exceptions.ConfigError(
                    path, "missing required key 'type' (installed types: "
                    f"{', '.join(installed_types())})")
            cls = driver_class(type_name, path)
        all_opts = common_opts.COMMON_OPTS + list(cls.opts)
        by_name = {opt.dest: opt for opt in all_opts}
        for key in keys:
            if key not in by_name:
                closest = difflib.get_close_matches(
                    key, list(by_name), n=1, cutoff=0)
                raise exceptions.ConfigError(
                    path, f"unknown key '{key}' (closest valid key: "
                    f"'{closest[0]}')")
        conf = cfg.ConfigOpts()
        conf.register_opts(all_opts)
        if path is None:
            conf.set_default('type', IMPLICIT_LOCAL)
        try:
            conf(args=[], project='crcache', prog='crcache',
                 default_config_files=[path] if path else [],
                 default_config_dirs=[], use_env=False)
        except cfg.Error as err:
            raise exceptions.ConfigError(path or '<implicit local>',
                                         str(err))
        for key, opt in by_name.items():
            try:
                value = getattr(conf, key)
            except (cfg.ConfigFileValueError, ValueError):
                value = None
            else:
                if value is not None or key not in keys:
                    continue
            # oslo.config reads an empty value as None: never a default.
            raw = keys[key][-1]
            problem = (_value_problem(opt, raw) if raw.strip()
                       else 'an empty value; remove the line for the '
                       'default')
            raise exceptions.ConfigError(
                path, f"invalid value for '{key}': {raw!r} ({problem})")
        source = cls(definition.name, conf, self.source)
        return source

    def _check_layering(self) -> None:
        for name, source in self._sources.items():
            if not isinstance(source, base.LayeredSource):
                continue
            path = self.definitions[name].path or name
            for key, problem in source.validate():
                raise exceptions.ConfigError(path, f'{key}: {problem}')
            for child in source.children:
                if child not in self._sources:
                    raise exceptions.ConfigError(
                        path, f"sources: unknown source '{child}'"
                        f"{exceptions.did_you_mean(child, self._sources)}; "
                        f"configured sources: {', '.join(self._sources)}")
        for name in self._sources:
            self._find_cycle(name, [])
        for name, source in self._sources.items():
            if isinstance(source, base.LayeredSource):
                continue
            for key, problem in source.validate():
                raise exceptions.ConfigError(
                    self.definitions[name].path or name, f'{key}: {problem}')

    def _find_cycle(self, name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = trail[trail.index(name):] + [name]
            raise exceptions.ConfigError(
                self.definitions[cycle[0]].path or name,
                f"sources: pool cycle {' -> '.join(cycle)}")
        source = self._sources[name]
        if isinstance(source, base.LayeredSource):
            for child in source.children:
                self._find_cycle(child, trail + [name])

    # -- access ------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the active sources, sorted."""
        return list(self.definitions)

    def source(self, name: str) -> base.Source:
        """Return the configured source called ``name``."""
        try:
            return self._sources[name]
        except KeyError:
            raise exceptions.UnknownSource(name, self._sources)
