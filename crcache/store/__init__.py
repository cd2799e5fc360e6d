"""Persistent state: which instances exist and who holds them.

Store types are plugins (entry point group ``crcache.stores``): the
embedded :mod:`~crcache.store.sqlite` store, needing no setup, and the
shared :mod:`~crcache.store.postgresql` one. Which store keeps which
source's instances is configuration (:mod:`crcache.config`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from crcache.store.base import Store


def open_store(env: Mapping[str, str] | None = None) -> Store:
    """Open the user's embedded store, ``local`` (for tools and tests;
    crcache itself opens stores through its configuration)."""
    from crcache.store import sqlite
    return sqlite.SQLiteStore.from_conf('local', None,
                                        os.environ if env is None else env)
