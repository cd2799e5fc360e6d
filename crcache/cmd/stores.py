"""``crcache stores``: the state stores, and whether each answers."""

from __future__ import annotations

import argparse
from typing import Any

from crcache.cmd import base

COLUMNS = ('store', 'type', 'shared', 'location', 'path', 'shadowed',
           'reachable', 'error')


class Stores(base.Lister):
    """List the state stores: the embedded one and those configured.

    A store is defined in <root>/stores/<name>/store.conf (the first
    root defining a name wins; later definitions are listed as
    shadowed). Each active store is opened, to say whether it can be
    reached. crcache status -a shows the same list below the sources.
    """

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        return COLUMNS, [store_row(s) for s in self.cache.store_report()]


def store_row(store: Any) -> tuple[Any, ...]:
    """One store as ``crcache stores`` shows it (see COLUMNS)."""
    return (store.name, store.type, store.shared, store.location,
            store.path, store.shadowed, store.reachable, store.error)
