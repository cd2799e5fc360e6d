"""Claims: what an acquisition takes, decided inside one transaction.

Everything here runs inside a store transaction and never calls a
backend: it reads the store, decides, and writes rows (cached instances
taken, new rows in ``provisioning``, the child instances that pool
instances wrap). Either the whole acquisition fits and is written, or a
:class:`~crcache.exceptions.CapacityError` rolls it all back. Which of a
pool's sources an instance is drawn from is the pool's decision
(:meth:`~crcache.sources.base.LayeredSource.choose`); this module only
offers it the candidates and carries the choice out.

It is written against the :class:`~crcache.store.base.Transaction`
interface alone, so it can be tested against an in-memory one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from crcache import exceptions
from crcache.cache import heartbeat
from crcache.cache import kinds
from crcache.cache import records
from crcache.config import Config
from crcache.sources import base
from crcache.store.base import CACHED, IN_USE, PROVISIONING
from crcache.store.base import Instance, Transaction


@dataclasses.dataclass
class Claim:
    """One instance taken by an acquisition, and what it wraps."""

    instance: Instance
    reused: bool
    child: Claim | None = None

    def walk(self) -> Iterable[Claim]:
        """This claim, then what it wraps, then what that wraps..."""
        yield self
        if self.child is not None:
            yield from self.child.walk()


class Claimer:
    """Claims instances of configured sources within a transaction."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def claim(self, tx: Transaction, source: base.Source, count: int,
              holder: dict[str, Any] | None,
              avoid: frozenset[str] = frozenset()) -> list[Claim]:
        """Take ``count`` instances of ``source``, all or nothing.

        Cached instances first, then new ones. ``avoid`` names sources
        a pool should draw from last (just found dead).
        """
        claims = []
        for inst in tx.instances(source.name, [CACHED])[:count]:
            tx.update(inst.name, state=IN_USE, holder=holder)
            claims.append(Claim(inst, reused=True))
        need = count - len(claims)
        if not need:
            return claims
        live = tx.count(source.name)
        maximum = source.maximum
        if maximum and live + need > maximum:
            in_use = tx.count(source.name, [IN_USE])
            raise exceptions.CapacityError(
                f"source '{source.name}' cannot supply "
                f"{records.plural(count, 'instance')}: maximum {maximum}, "
                f'{live} live ({in_use} in use, '
                f'{live - in_use} cached or changing state)')
        for _ in range(need):
            claim = self.claim_new(tx, source, parent=None, holder=holder,
                                   avoid=avoid)
            if claim is None:
                raise exceptions.CapacityError(
                    f"source '{source.name}' cannot supply "
                    f"{records.plural(count, 'instance')}: "
                    + self.exhaustion(tx, source))
            claims.append(claim)
        return claims

    def check_queue(self, tx: Transaction, source: base.Source,
                    count: int, heartbeat_timeout: float | None = None
                    ) -> None:
        """Refuse to jump the queue of ``acquire --wait`` callers (those
        of other hosts judged by their heartbeats, in a shared store whose
        ``heartbeat_timeout`` is given)."""
        now = time.time()
        waiting = [w for w in tx.waiters(source.name)
                   if not heartbeat.waiter_gone(w.process,
                                                heartbeat_timeout, now)]
        if waiting:
            raise exceptions.CapacityError(
                f"source '{source.name}' cannot supply "
                f"{records.plural(count, 'instance')}: "
                f"{records.plural(len(waiting), 'earlier acquisition')} "
                f"{'is' if len(waiting) == 1 else 'are'} waiting for it "
                '(use acquire --wait to queue)')

    def can_claim(self, tx: Transaction, source: base.Source) -> bool:
        """Whether a new instance of ``source`` could be made now."""
        maximum = source.maximum
        if maximum and tx.count(source.name) >= maximum:
            return False
        pool = kinds.layered(source)
        if pool is None:
            return True
        for child_name in pool.children:
            child = self.config.source(child_name)
            if tx.count(child.name, [CACHED]) or self.can_claim(tx, child):
                return True
        return False

    def exhaustion(self, tx: Transaction, source: base.Source) -> str:
        """Why ``source`` has no room, for an error message."""
        pool = kinds.layered(source)
        if pool is None:
            return (f'maximum {source.maximum}, '
                    f'{tx.count(source.name)} live')
        details = []
        for child_name in pool.children:
            child = self.config.source(child_name)
            details.append(f'{child.name}: ' + self.exhaustion(tx, child))
        return f"its sources are exhausted ({'; '.join(details)})"

    def claim_new(self, tx: Transaction, source: base.Source,
                  parent: str | None, holder: dict[str, Any] | None,
                  avoid: frozenset[str] = frozenset()) -> Claim | None:
        """Create a provisioning row (and claim what it wraps), or None."""
        if not self.can_claim(tx, source):
            return None
        seq = tx.next_seq(source.name)
        inst = Instance(
            name=f'{source.name}-{seq}', source=source.name, seq=seq,
            state=PROVISIONING, parent=parent, holder=holder,
            op=records.work_record())
        tx.add(inst)
        claim = Claim(inst, reused=False)
        pool = kinds.layered(source)
        if pool is not None:
            claim.child = self.claim_child(tx, pool, inst, avoid)
            inst.child = claim.child.instance.name
            tx.update(inst.name, child=inst.child)
        return claim

    def candidates(self, tx: Transaction, pool: base.LayeredSource,
                   avoid: frozenset[str] = frozenset()
                   ) -> list[base.Candidate]:
        """What ``pool`` can draw from now, as its ``choose`` sees it."""
        found = []
        for name in pool.children:
            child = self.config.source(name)
            cached = tx.count(name, [CACHED])
            found.append(base.Candidate(
                source=name, cached=cached, live=tx.count(name),
                in_use=tx.count(name, [IN_USE]), maximum=child.maximum,
                room=bool(cached) or self.can_claim(tx, child),
                avoid=name in avoid))
        return found

    def claim_child(self, tx: Transaction, pool: base.LayeredSource,
                    parent: Instance,
                    avoid: frozenset[str] = frozenset()) -> Claim:
        """Claim what a new pool instance wraps, from the source the pool
        chooses: a cached instance of it if it has one, else a new one."""
        offered = self.candidates(tx, pool, avoid)
        for candidate in pool.choose(offered, parent.seq):
            if candidate.source not in pool.children:
                raise exceptions.SourceError(
                    pool.name, f'chose {candidate.source!r}, which is not '
                    'one of its sources')
            if not candidate.room:
                continue
            cached = tx.instances(candidate.source, [CACHED])
            if cached:
                inst = cached[0]
                tx.update(inst.name, state=IN_USE, parent=parent.name,
                          holder=None)
                inst.parent = parent.name
                return Claim(inst, reused=True)
            child = self.config.source(candidate.source)
            claim = self.claim_new(tx, child, parent=parent.name,
                                   holder=None)
            if claim is not None:
                return claim
        raise exceptions.CapacityError(
            f"source '{pool.name}' cannot supply an instance: "
            + self.exhaustion(tx, pool))
