"""One definition of each shared source, whichever machine uses it.

Machines sharing a store each read their own ``source.conf``. Were two of
them to define one source differently (another host list, another
image), both would manage the same fleet their own way. So a shared
store records each source's definition (a fingerprint of its type and
keys, see :meth:`crcache.config.Config.fingerprint`, and where it came
from) when it is first used, and every client compares its own inside
the same transaction as its claim or release. A different definition is
an error naming both origins, until no instance of the source is left:
then the new one is recorded.
"""

from __future__ import annotations

import socket
from typing import Any

from crcache import exceptions
from crcache import invocation
from crcache.cache import records
from crcache.config import Config
from crcache.store.base import Store, Transaction


def origin(config: Config, name: str) -> dict[str, Any]:
    """Where this machine's definition of ``name`` comes from."""
    definition = config.definitions.get(name)
    return {'path': definition.path if definition else None,
            'host': socket.gethostname(), 'machine': invocation.machine_id(),
            'user': records.user_name()}


def describe(found: dict[str, Any]) -> str:
    """An origin, as a message names it."""
    return (f"{found.get('path') or 'the implicit definition'} on "
            f"{found.get('host')} (user {found.get('user')})")


def check(tx: Transaction, store: Store, config: Config, name: str) -> None:
    """Make sure ``name`` and every source it draws from are defined here
    as the shared ``store`` knows them; record them where it does not."""
    if not store.shared:
        return
    todo = [name]
    seen = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(config.source(current).children)
        fingerprint = config.fingerprint(current)
        known = tx.definition(current)
        if known is not None and known.fingerprint == fingerprint:
            continue
        live = tx.count(current)
        if known is None or not live:
            tx.record_definition(current, fingerprint,
                                 origin(config, current))
            continue
        here = origin(config, current)
        raise exceptions.ConfigError(
            here['path'] or current,
            f"source '{current}' is defined differently here than in the "
            f"shared store '{store.name}' ({store.location}), which keeps "
            f'{records.plural(live, "live instance")} of it as defined in '
            f'{describe(known.origin)}: every machine sharing a store '
            'needs the same type and keys for a source (credentials and '
            'timeouts aside); release its instances everywhere to change '
            'its definition')
