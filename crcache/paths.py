"""Where crcache looks for configuration and keeps its state.

Everything is derived from the environment each time it is asked for, so a
test (or a nested ``crcache`` started by a hook) sees exactly the
directories its environment names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

CONFIG_PATH_ENV = 'CRCACHE_CONFIG_PATH'


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> str:
    value = env.get(var)
    if value and os.path.isabs(value):
        return value
    home = env.get('HOME') or os.path.expanduser('~')
    return os.path.join(home, fallback)


def config_search_path(env: Mapping[str, str] | None = None) -> list[str]:
    """Return the configuration roots, first (highest priority) first.

    ``$CRCACHE_CONFIG_PATH`` (colon-separated) replaces the default of
    ``$XDG_CONFIG_HOME/crcache`` then ``./.crcache``.
    """
    env = os.environ if env is None else env
    override = env.get(CONFIG_PATH_ENV)
    if override is not None:
        return [os.path.abspath(p) for p in override.split(':') if p]
    return [
        os.path.join(_xdg(env, 'XDG_CONFIG_HOME', '.config'), 'crcache'),
        os.path.abspath('.crcache'),
    ]


def cache_dir(env: Mapping[str, str] | None = None) -> str:
    """Return crcache's private state directory (not created)."""
    env = os.environ if env is None else env
    return os.path.join(_xdg(env, 'XDG_CACHE_HOME', '.cache'), 'crcache')


def ensure_private_dir(path: str) -> str:
    """Create ``path`` (and parents) and make sure only its owner can use it.

    An existing directory with a wider mode is tightened to 0700: the state
    it holds names hosts and instances, and sockets inside it accept
    commands.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path
