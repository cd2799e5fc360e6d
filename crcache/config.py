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
import stat
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
SOURCE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z')
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
    # Opening a FIFO would wait for a writer for ever: look first.
    try:
        st = os.stat(path)
    except OSError as err:
        raise exceptions.ConfigError(
            path, f'cannot read: {err.strerror or err}')
    if not stat.S_ISREG(st.st_mode):
        raise exceptions.ConfigError(
            path, f'not a regular file (it is {_kind(st.st_mode)})')
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


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return 'a directory'
    if stat.S_ISFIFO(mode):
        return 'a named pipe'
    if stat.S_ISSOCK(mode):
        return 'a socket'
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return 'a device'
    return 'not a file'


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
    """Every source the configuration roots define, loaded and checked.

    A source whose definition is wrong does not stop the others: its
    error is kept (:attr:`errors`) and raised by :meth:`source` when that
    source is used, so ``crcache status`` can show it beside the healthy
    ones and commands about other sources work. A pool drawing from a
    broken source is broken too.
    """

    def __init__(self, roots: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        explicit = roots is None and paths.CONFIG_PATH_ENV in env
        self.roots = (list(roots) if roots is not None
                      else paths.config_search_path(env))
        if explicit:
            for root in self.roots:
                if not os.path.isdir(root):
                    raise exceptions.ConfigError(
                        root, f'no such directory (named in '
                        f'{paths.CONFIG_PATH_ENV})')
        self.definitions: dict[str, Definition] = {}
        self.shadowed: list[Definition] = []
        #: The configuration error of each broken source.
        self.errors: dict[str, exceptions.ConfigError] = {}
        self._sources: dict[str, base.Source] = {}
        self._discover()
        for definition in self.definitions.values():
            if definition.name in self.errors:
                continue
            try:
                self._sources[definition.name] = self._load(definition)
            except exceptions.ConfigError as err:
                self.errors[definition.name] = err
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
                path = os.path.join(directory, SOURCE_CONF)
                definition = Definition(entry, root, path)
                if entry in self.definitions:
                    definition.active = False
                    self.shadowed.append(definition)
                    continue
                self.definitions[entry] = definition
                if not SOURCE_NAME.match(entry):
                    self.errors[entry] = exceptions.ConfigError(
                        directory, 'invalid source name: use letters, '
                        'digits, ".", "_" and "-" (not first), at most 64')
                elif not os.path.lexists(path):
                    self.errors[entry] = exceptions.ConfigError(
                        directory, f'this source directory has no '
                        f'{SOURCE_CONF}')
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
                    path, f"unknown key {key!r} (closest valid key: "
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
                                         _one_line(str(err)))
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
                path, f"invalid value for '{key}': {raw!r} "
                f'({_one_line(problem)})')
        source = cls(definition.name, conf, self.source)
        return source

    def _path(self, name: str) -> str:
        return self.definitions[name].path or name

    def _check_layering(self) -> None:
        # Children first: a pool over a broken source is broken, and the
        # checks that span keys may ask a child for its maximum.
        for name in list(self._sources):
            self._find_cycle(name, [])
        changed = True
        while changed:
            changed = False
            for name, source in list(self._sources.items()):
                problem = self._layering_problem(source)
                if problem is not None:
                    self.errors[name] = exceptions.ConfigError(
                        self._path(name), problem)
                    del self._sources[name]
                    changed = True
        for name, source in list(self._sources.items()):
            for key, problem in source.validate():
                self.errors[name] = exceptions.ConfigError(
                    self._path(name), f'{key}: {_one_line(problem)}')
                del self._sources[name]
                break

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

    # -- access ------------------------------------------------------------

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


def _one_line(text: str) -> str:
    """Fold a multi-line message (values may hold newlines) into one."""
    return ' '.join(part.strip() for part in text.splitlines()
                    if part.strip())
