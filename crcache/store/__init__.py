"""Persistent state: which instances exist and who holds them."""

from __future__ import annotations

import os
from collections.abc import Mapping

from crcache import paths
from crcache.store.base import Store


def open_store(env: Mapping[str, str] | None = None) -> Store:
    """Open the user's state store (embedded SQLite by default)."""
    from crcache.store import sqlite
    return sqlite.SQLiteStore(
        os.path.join(paths.cache_dir(env), 'state.db'))
