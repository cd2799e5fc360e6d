"""Configuration files: finding definitions, reading and checking them.

A configuration root holds ``<kind>/<name>/<kind>.conf`` (``sources/pool/
source.conf``, ``stores/team/store.conf``). Roots are searched in order
and the first definition of a name wins whole; later ones are
*shadowed*. Each file is an ini file whose ``[DEFAULT]`` section holds
the keys, read into its own ``oslo_config.cfg.ConfigOpts`` against the
options its type declares. Anything wrong is a
:class:`~crcache.exceptions.ConfigError` naming the file, the key and
what was expected: an unknown key is never ignored and a bad value never
replaced by a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import stat
from typing import Any

from oslo_config import cfg
from oslo_config import types

from crcache import exceptions

LOG = logging.getLogger(__name__)

#: Names become instance names, directory names and shell words.
NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z')
Keys = dict[str, list[str]]


@dataclasses.dataclass
class Definition:
    """Where something is defined; ``path`` is None for an implicit one."""

    name: str
    root: str | None
    path: str | None
    active: bool = True

    @property
    def directory(self) -> str | None:
        """Its directory (a source's holds provision.d and discard.d)."""
        return os.path.dirname(self.path) if self.path else None


@dataclasses.dataclass
class Found:
    """What :func:`discover` found of one kind in the roots."""

    definitions: dict[str, Definition] = dataclasses.field(
        default_factory=dict)
    shadowed: list[Definition] = dataclasses.field(default_factory=list)
    errors: dict[str, exceptions.ConfigError] = dataclasses.field(
        default_factory=dict)


def discover(roots: list[str], kind: str, conf_name: str) -> Found:
    """The ``<root>/<kind>/<name>/<conf_name>`` definitions, first wins.

    A directory with an invalid name or without its file is an error of
    that name; an unreadable ``<kind>`` directory an error of the root.
    """
    found = Found()
    for root in roots:
        kind_dir = os.path.join(root, kind)
        try:
            entries = sorted(os.listdir(kind_dir))
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            raise exceptions.ConfigError(
                kind_dir, f'not a directory (expected one directory per '
                f'{kind[:-1]})')
        except OSError as err:
            raise exceptions.ConfigError(
                kind_dir, f'cannot read: {err.strerror or err}')
        for entry in entries:
            directory = os.path.join(kind_dir, entry)
            if entry.startswith('.') or not os.path.isdir(directory):
                continue
            definition = Definition(entry, root,
                                    os.path.join(directory, conf_name))
            if entry in found.definitions:
                definition.active = False
                found.shadowed.append(definition)
                continue
            found.definitions[entry] = definition
            if not NAME.match(entry):
                found.errors[entry] = exceptions.ConfigError(
                    directory, f'invalid {kind[:-1]} name: use letters, '
                    'digits, ".", "_" and "-" (not first), at most 64')
            elif not os.path.lexists(definition.path):
                found.errors[entry] = exceptions.ConfigError(
                    directory, f'this {kind[:-1]} directory has no '
                    f'{conf_name}')
    return found


def read_keys(path: str, type_hint: list[str]) -> tuple[str, Keys]:
    """The ``type`` and every key of the ini file ``path``.

    ``type_hint`` lists the installed types, for the error when ``type``
    is missing.
    """
    sections = _read_ini(path)
    for section in sections:
        if section != 'DEFAULT':
            raise exceptions.ConfigError(
                path, f'unknown section [{section}]: keys belong in '
                '[DEFAULT]')
    keys = sections.get('DEFAULT', {})
    type_name = (keys.get('type') or [''])[-1].strip()
    if 'type' not in keys:
        for key in keys:
            if difflib.get_close_matches(key.lower(), ['type']):
                raise exceptions.ConfigError(
                    path, f"unknown key '{key}' (closest valid key: 'type')")
    if not type_name:
        raise exceptions.ConfigError(
            path, "missing required key 'type' (installed types: "
            f"{', '.join(type_hint)})")
    return type_name, keys


def load(path: str | None, keys: Keys, opts: list[cfg.Opt],
         defaults: dict[str, Any] | None = None) -> cfg.ConfigOpts:
    """``keys`` (read from ``path``) as ``opts``, every value checked."""
    by_name = {opt.dest: opt for opt in opts}
    renamed = {old.name: opt.dest for opt in opts
               for old in opt.deprecated_opts
               if old.group in (None, 'DEFAULT') and old.name}
    for key in keys:
        if key in renamed and key not in by_name:
            _check_renamed(path, keys, key, renamed[key])
        elif key not in by_name:
            closest = difflib.get_close_matches(
                key, list(by_name), n=1, cutoff=0)
            raise exceptions.ConfigError(
                path, f"unknown key {key!r} (closest valid key: "
                f"'{closest[0]}')")
    conf = cfg.ConfigOpts()
    conf.register_opts(opts)
    for key, value in (defaults or {}).items():
        conf.set_default(key, value)
    try:
        conf(args=[], project='crcache', prog='crcache',
             default_config_files=[path] if path else [],
             default_config_dirs=[], use_env=False)
    except cfg.Error as err:
        raise exceptions.ConfigError(path or '<implicit>',
                                     one_line(str(err)))
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
                   else 'an empty value; remove the line for the default')
        raise exceptions.ConfigError(
            path, f"invalid value for '{key}': {raw!r} "
            f'({one_line(problem)})')
    return conf


def _check_renamed(path: str | None, keys: Keys, old: str,
                   new: str) -> None:
    """``old`` is a key's former name: refuse it beside ``new``, else
    warn (once per file and key) that it is deprecated."""
    _RENAMED.add((old, new))
    if new in keys:
        raise exceptions.ConfigError(
            path, f"both {old!r} and {new!r} are set: {old!r} is the "
            f"deprecated name of {new!r}; keep only {new!r}")
    if (path, old) not in _WARNED:
        _WARNED.add((path, old))
        LOG.warning('%s: key %r is deprecated: use %r', path, old, new)


class _NoOsloDeprecation(logging.Filter):
    """oslo.config's own message for a renamed crcache key names groups
    and options, which a source.conf does not have: crcache says it its
    own way (:func:`_check_renamed`). Other deprecations pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, dict)
                    and (args.get('dep_option'), args.get('option'))
                    in _RENAMED)


_WARNED: set[tuple[str | None, str]] = set()
#: (old name, new name) of every renamed key crcache has loaded.
_RENAMED: set[tuple[str, str]] = set()
logging.getLogger('oslo_config.cfg').addFilter(_NoOsloDeprecation())


def one_line(text: str) -> str:
    """Fold a multi-line message (values may hold newlines) into one."""
    return ' '.join(part.strip() for part in text.splitlines()
                    if part.strip())


def _read_ini(path: str) -> dict[str, Keys]:
    # Opening a FIFO would wait for a writer for ever: look first.
    try:
        st = os.stat(path)
    except OSError as err:
        raise exceptions.ConfigError(
            path, f'cannot read: {err.strerror or err}')
    if not stat.S_ISREG(st.st_mode):
        raise exceptions.ConfigError(
            path, f'not a regular file (it is {_kind(st.st_mode)})')
    sections: dict[str, Keys] = {}
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
