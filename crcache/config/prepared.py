"""Configurations the agent loads ahead of time, for its next workers.

Reading the configuration (every ``source.conf`` and ``store.conf``,
each into its own ``oslo_config`` object, every value checked) is a
good part of what a command costs. The agent (:mod:`crcache.daemons`)
can pay it ahead: after a worker that loaded a configuration itself has
finished, the agent loads the same one, for the same environment and
working directory (:func:`prepare`), and every worker it forks later
inherits it. A worker takes it (:func:`take`) only when its environment
and working directory are the same and no file or directory the
configuration was read from has changed since (its type, inode, size,
modification and change times: :func:`stamps`; nothing changed in the
last seconds before it was read, see :func:`_recent`); otherwise it loads its
own, as every command without the agent does, and says so
(:func:`loaded`), so that the agent prepares that one next.

A configuration whose loading logged anything (a deprecated key's
warning, say) is never prepared: the worker loads it itself, so that
the user sees the message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

#: What decides which configuration a process loads: its working
#: directory (``./.crcache``) and its whole environment.
Key = tuple

#: Configurations kept by the agent (the most recent last).
MOST = 4
#: Seconds a configuration's files must have been left alone before the
#: agent prepares it (see :func:`_recent`).
SETTLE = 2.0

_KINDS = (('sources', 'source.conf'), ('stores', 'store.conf'))

#: key -> (configuration, its stamps), in the agent and its workers.
_prepared: dict[Key, tuple[Any, tuple]] = {}
#: key -> stamps of a configuration that cannot be prepared (it warns,
#: or does not load): not loaded again by the agent until they change.
_refused: dict[Key, tuple] = {}
#: The configuration :func:`prepare` last loaded, kept or not (what its
#: types need is worth loading into the agent either way).
last_loaded: Any = None
#: What this worker loaded itself, to report.
_loaded: list[tuple[dict[str, str], str]] = []


def key(env: Mapping[str, str], cwd: str) -> Key:
    return (cwd, tuple(sorted(env.items())))


def stamps(roots: list[str]) -> tuple:
    """What the configuration under ``roots`` was read from, as it is
    now: every root, kind directory, definition directory and file."""
    found: list[Any] = []
    for root in roots:
        found.append(_stamp(root))
        for kind, conf_name in _KINDS:
            directory = os.path.join(root, kind)
            found.append(_stamp(directory))
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                path = os.path.join(directory, name)
                found.append((name, _stamp(path),
                              _stamp(os.path.join(path, conf_name))))
    return tuple(found)


def _recent(stamped: tuple) -> bool:
    """Whether anything in ``stamped`` changed within :data:`SETTLE`
    seconds: a file changed twice within the file system's clock tick,
    keeping its size, would look unchanged; such a configuration is
    loaded by each worker until it has settled (git's "racy" rule)."""
    since = time.time_ns() - int(SETTLE * 1e9)

    def walk(item: Any) -> bool:
        if isinstance(item, tuple) and len(item) == 5 and all(
                isinstance(n, int) for n in item):
            return item[3] > since or item[4] > since
        if isinstance(item, tuple):
            return any(walk(part) for part in item)
        return False
    return walk(stamped)


def _stamp(path: str) -> tuple | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def take(env: Mapping[str, str]) -> Any | None:
    """The configuration the agent prepared for ``env`` here, if it is
    still what the files say; None otherwise."""
    if not _prepared:
        return None
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    entry = _prepared.get(key(env, cwd))
    if entry is None:
        return None
    config, stamped = entry
    if stamps(config.roots) != stamped:
        return None
    config.env = env
    return config


def loaded(env: Mapping[str, str]) -> None:
    """This process loaded the configuration for ``env`` itself: if it
    is an agent's worker, the agent hears of it as the worker ends."""
    from crcache.daemons import lending
    if lending.active():
        with contextlib.suppress(OSError):
            _loaded.append((dict(env), os.getcwd()))


def wanted() -> list[tuple[dict[str, str], str]]:
    """What this worker loaded itself (for its report to the agent)."""
    return list(_loaded)


def prepare(env: dict[str, str], cwd: str) -> Any | None:
    """In the agent: load the configuration a worker with ``env`` in
    ``cwd`` would and keep it for the next workers; return it, or None
    if it was not kept (it could not be loaded, it logged something, or
    its files changed too recently)."""
    global last_loaded
    from crcache import paths
    from crcache.config import Config
    from crcache.config import files
    wanted_key = key(env, cwd)
    entry = _prepared.get(wanted_key)
    if entry is not None and stamps(entry[0].roots) == entry[1]:
        return entry[0]
    before = config = None
    saved_env = dict(os.environ)
    saved_warned = set(files._WARNED)
    catcher = _Catcher()
    root_logger = logging.getLogger()
    root_logger.addHandler(catcher)
    try:
        saved_cwd = os.getcwd()
        os.chdir(cwd)
        try:
            os.environ.clear()
            os.environ.update(env)
            before = stamps(paths.config_search_path(env))
            # Not worth loading: too fresh to trust, or known not to do.
            if _recent(before) or _refused.get(wanted_key) == before:
                return None
            config = None
            config = Config(env=dict(env))
            last_loaded = config
            stamped = stamps(config.roots)
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
    except Exception:
        if config is None and before is not None:  # until files change
            _refused[wanted_key] = before
        return None
    finally:
        root_logger.removeHandler(catcher)
        files._WARNED.clear()
        files._WARNED.update(saved_warned)
    if catcher.caught:  # every command must warn: until its files change
        _refused[wanted_key] = before
        return None
    if stamped != before or _recent(stamped):
        return None
    _prepared.pop(wanted_key, None)
    _prepared[wanted_key] = (config, stamped)
    while len(_prepared) > MOST:
        del _prepared[next(iter(_prepared))]
    return config


class _Catcher(logging.Handler):
    """Notices whether anything was logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.caught = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:
            self.caught = True
