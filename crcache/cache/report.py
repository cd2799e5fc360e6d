"""Reports: what sources and instances there are, in which state.

Read-only views of the configuration and the store for ``crcache status``
and the Python API: per-source counts (:class:`SourceStatus`), the
instances themselves, what a ``--query`` figure comes to (a pool
instance and the instance it wraps counting once), and which instances
have been changing state for a while, and on what.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from crcache.cache import kinds
from crcache.cache.stores import Stores
from crcache.config import Config
from crcache.store.base import CACHED, DISCARDING, IN_USE, PROVISIONING
from crcache.store.base import Instance

LOG = logging.getLogger(__name__)
#: What --query available is when nothing limits it.
UNLIMITED = 'unlimited'
#: Instances provisioning or discarding longer than this are pointed out.
SLOW = 5.0


@dataclasses.dataclass
class SourceStatus:
    """How many instances a source has in each state."""

    name: str
    type: str | None
    maximum: int | None
    reserve: int | None
    children: list[str]
    #: Why the source cannot be used (its configuration error), if so.
    error: str | None = None
    #: The name of the store that keeps its instances (None if unknown).
    store: str | None = None
    cached: int = 0
    in_use: int = 0
    provisioning: int = 0
    discarding: int = 0

    @property
    def live(self) -> int:
        """Every instance of it, whatever its state."""
        return self.cached + self.in_use + self.provisioning + self.discarding

    @property
    def available(self) -> int | None:
        """Instances an acquire could get now; None when unbounded."""
        if not self.maximum:
            return None
        return self.cached + max(0, self.maximum - self.live)


@dataclasses.dataclass
class StoreStatus:
    """A state store: where it is defined and whether it can be reached."""

    name: str
    type: str | None
    shared: bool
    #: Where its data is (a file, or a database URL without password).
    location: str | None
    #: Its store.conf; None for the implicit embedded store.
    path: str | None
    shadowed: bool = False
    #: Whether it answered (None for a shadowed definition).
    reachable: bool | None = None
    #: Why it cannot be used, if so.
    error: str | None = None


def stores(config: Config, opened: Stores) -> list[StoreStatus]:
    """Every store definition, and whether each active one answers."""
    found = []
    for name, definition in config.store_definitions.items():
        shared = config.store_shared(name)
        if name in config.store_errors:
            found.append(StoreStatus(name, None, False, None,
                                     definition.path, reachable=False,
                                     error=str(config.store_errors[name])))
            continue
        kind = config.store_type(name)
        try:
            store = opened.get(name)
        except Exception as err:  # reported, as the row says
            found.append(StoreStatus(name, kind, shared, None,
                                     definition.path, reachable=False,
                                     error=str(err)))
            continue
        found.append(StoreStatus(name, kind, shared, store.location,
                                 definition.path, reachable=True))
    for definition in config.shadowed_stores:
        found.append(StoreStatus(definition.name, None, False, None,
                                 definition.path, shadowed=True))
    return found


def children(config: Config, name: str) -> list[str]:
    """The sources ``name`` draws from (none for a backend or a broken
    source)."""
    if not config.usable(name):
        return []
    pool = kinds.layered(config.source(name))
    return list(pool.children) if pool is not None else []


def status(config: Config, stores: Stores,
           names: Iterable[str] | None = None) -> list[SourceStatus]:
    """Per-source counts; unknown names are an error.

    Without ``names``: every configured source, and every source the
    stores still have instances of.
    """
    failures: dict[str, Exception] = {}
    instances = every_instance(stores, failures)
    wanted = list(names) if names else None
    known = {inst.source for inst in instances}
    if wanted:
        for name in wanted:
            if name not in config.definitions and name not in known:
                config.source(name)  # raises UnknownSource
        selected = wanted
    else:
        selected = list(config.names())
        # Instances of a source since removed from the configuration
        # still exist somewhere: show them rather than hide them.
        for inst in instances:
            if inst.source not in config.definitions \
                    and inst.source not in selected:
                selected.append(inst.source)
    result = {}
    for name in selected:
        if config.usable(name):
            source = config.source(name)
            store = source.conf.store
            result[name] = SourceStatus(
                name, source.conf.type, source.maximum, source.reserve,
                children(config, name), store=store,
                error=(f"its store '{store}' cannot be used: "
                       f'{failures[store]}' if store in failures else None))
        elif name in config.errors:
            result[name] = SourceStatus(
                name, None, None, None, [], error=str(config.errors[name]))
        else:
            result[name] = SourceStatus(
                name, None, None, None, [],
                error=f"source '{name}' is no longer configured")
    field = {CACHED: 'cached', IN_USE: 'in_use',
             PROVISIONING: 'provisioning', DISCARDING: 'discarding'}
    for inst in instances:
        found = result.get(inst.source)
        if found is None:
            continue
        if inst.problem:
            LOG.warning('%s; it counts against the maximum of %s until '
                        'crcache gc discards it', inst.problem, inst.source)
        attr = field.get(inst.state)
        if attr is not None:
            setattr(found, attr, getattr(found, attr) + 1)
    return list(result.values())


def every_instance(stores: Stores,
                   failures: dict[str, Exception] | None = None
                   ) -> list[Instance]:
    """Every instance of every store worth looking in (those that cannot
    be reached are left out when ``failures`` is given to collect them)."""
    found = []
    for store in stores.each(failures):
        with store.reading() as tx:
            found.extend(tx.instances())
    return found


def instances(stores: Stores, sources: Iterable[str] | None = None
              ) -> list[Instance]:
    """The instances of ``sources`` (all when None), by source and number."""
    found = every_instance(stores)
    if sources is None:
        return found
    wanted = set(sources)
    return [i for i in found if i.source in wanted]


def slow(found: Iterable[Instance], now: float | None = None) -> list[str]:
    """Say which instances are stuck changing state, and on what."""
    from crcache.progress import duration
    now = time.time() if now is None else now
    lines = []
    for inst in found:
        if inst.state not in (PROVISIONING, DISCARDING):
            continue
        op = inst.op or {}
        since = op.get('since') or inst.updated
        if now - since < SLOW:
            continue
        hook = op.get('hook') or {}
        doing = (f"{hook.get('script')} running, pid {hook.get('pid')}"
                 if hook.get('script') else
                 f"pid {op.get('pid')} on {op.get('host')}" if op
                 else 'nobody is working on it')
        lines.append(f'{inst.name} has been {inst.state} for '
                     f'{duration(now - since)} ({doing})')
    return lines


def nodes(config: Config, names: Iterable[str]) -> dict[str, Node]:
    """--query's view of ``names`` and every source they draw on."""
    found: dict[str, Node] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        if not config.usable(name):
            found[name] = Node(0)  # nothing can be made of it
            continue
        source = config.source(name)
        pool = kinds.layered(source)
        if pool is not None:
            found[name] = Node(source.conf.maximum or None, pool.children)
            todo.extend(pool.children)
        else:
            found[name] = Node(source.maximum or None)
    return found


class Node:
    """A source as --query sees it: how many instances it may have (None:
    no limit) and, for a pool, the sources it draws on."""

    def __init__(self, limit: int | None,
                 children: Sequence[str] | None = None) -> None:
        self.limit = limit
        #: None for a source that makes its instances itself.
        self.children = children


def query(what: str, selected: Sequence[str], nodes: dict[str, Node],
          instances: Iterable[Any]) -> int | str:
    """One figure over the ``selected`` sources; see the --query help.

    A pool instance and the instance it wraps are one instance: each is
    counted once, for the outermost selected source holding it. ``nodes``
    describes every selected source and every source they draw on;
    ``instances`` are all the store's rows.
    """
    chosen = set(selected)
    rows = list(instances)
    by_name = {inst.name: inst for inst in rows}

    def outermost(inst: Any) -> bool:
        parent = by_name.get(inst.parent) if inst.parent else None
        while parent is not None:
            if parent.source in chosen:
                return False
            parent = by_name.get(parent.parent) if parent.parent else None
        return True

    counted = [i for i in rows if i.source in chosen and outermost(i)]
    if what in ('cached', 'in-use'):
        return sum(1 for i in counted if i.state == what)
    if what == 'max':
        most = _most(selected, nodes, {})
        return 0 if most is None else most
    # available: the cached instances, plus the new ones there is room
    # for, counting what is already live. A pool may also take the cached
    # instances of a source it draws on that is not itself counted.
    live = collections.Counter(i.source for i in rows)
    cached = collections.Counter(i.source for i in rows
                                 if i.state == 'cached')
    room = {name: -live[name] + (0 if name in chosen else cached[name])
            for name in nodes}
    most = _most(selected, nodes, room)
    if most is None:
        return UNLIMITED
    return sum(1 for i in counted if i.state == 'cached') + most


def _most(selected: Sequence[str], nodes: dict[str, Node],
          adjust: dict[str, int]) -> int | None:
    """How many instances the selected sources could make at once (None:
    no limit), a pool's taken from its sources: a maximum flow in which
    each source lets through its limit (plus ``adjust``) at most."""
    inf = math.inf
    # Each source is two vertices joined by an edge of its capacity.
    capacity: dict[tuple[Any, Any], float] = collections.defaultdict(int)
    for name, node in nodes.items():
        limit = inf if node.limit is None else max(
            0, node.limit + adjust.get(name, 0))
        capacity[('in', name), ('out', name)] = limit
        for child in node.children if node.children is not None else ():
            capacity[('out', name), ('in', child)] = inf
        if node.children is None:
            capacity[('out', name), 'sink'] = inf
    for name in dict.fromkeys(selected):
        capacity['start', ('in', name)] = inf
    edges: dict[Any, set] = collections.defaultdict(set)
    for a, b in list(capacity):
        edges[a].add(b)
        edges[b].add(a)
    total = 0
    while True:
        # Edmonds-Karp: the shortest path with room left, by breadth.
        came_from: dict[Any, Any] = {'start': None}
        queue = collections.deque(['start'])
        while queue and 'sink' not in came_from:
            here = queue.popleft()
            for there in edges[here]:
                if there not in came_from and capacity[here, there] > 0:
                    came_from[there] = here
                    queue.append(there)
        if 'sink' not in came_from:
            return total
        path = []
        there = 'sink'
        while came_from[there] is not None:
            path.append((came_from[there], there))
            there = came_from[there]
        through = min(capacity[edge] for edge in path)
        if through == inf:
            return None
        for a, b in path:
            capacity[a, b] -= through
            capacity[b, a] += through
        total += int(through)
