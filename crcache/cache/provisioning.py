"""Making instances: acquiring, checking cached ones, filling reserves.

An acquisition claims everything it needs in one transaction
(:mod:`crcache.cache.claims`), then, outside any transaction, checks that
the cached instances it took still answer (replacing dead ones),
provisions the new ones in parallel threads (the backend, then
provision.d; a pool instance's own provision.d once what it wraps is
ready), and marks them usable. Any failure, or Ctrl-C, undoes the claims.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from crcache import exceptions
from crcache import hooks
from crcache.cache import definitions
from crcache.cache import kinds
from crcache.cache import records
from crcache.cache import snapshots
from crcache.cache.claims import Claim, Claimer
from crcache.cache.lifecycle import Lifecycle, call
from crcache.sources import base
from crcache.store.base import CACHED, DISCARDING, IN_USE, Instance

LOG = logging.getLogger(__name__)
#: Most instances provisioned at once.
PARALLEL = 8


class Provisioner:
    """Acquires and fills, on top of a :class:`Lifecycle`."""

    def __init__(self, lifecycle: Lifecycle, claimer: Claimer) -> None:
        self.life = lifecycle
        self.claimer = claimer
        self.config = lifecycle.config
        self.stores = lifecycle.stores
        self.progress = lifecycle.progress

    def acquire(self, source: base.Source, count: int,
                holder: dict[str, Any], wait: float | None,
                lease: float | None) -> list[Instance]:
        """See :meth:`crcache.cache.Cache.acquire`."""
        store = self.stores.of(source.name)
        if wait is None:
            try:
                with store.transaction() as tx:
                    definitions.check(tx, store, self.config, source.name)
                    self.claimer.check_queue(
                        tx, source, count,
                        store.heartbeat_timeout if store.shared else None)
                    claims = self.claimer.claim(tx, source, count, holder)
            except exceptions.CapacityError:
                with store.reading() as tx:
                    resetting = self._resetting(tx, source)
                if resetting is None:
                    raise
                claims = None
            if claims is None:
                # Room is being made fresh by a reset (reset=recreate):
                # wait for it rather than fail; no longer than a cold
                # start, which is what the reset does.
                from crcache.cache import queue
                self.progress.event(
                    f'{source.name} is at its maximum while '
                    f'{resetting} is being reset; waiting for it')
                claims = queue.claim_waiting(
                    store, self.claimer, self.progress, source, count,
                    holder, self._reset_budget(source))
        else:
            from crcache.cache import queue
            claims = queue.claim_waiting(store, self.claimer,
                                         self.progress, source, count,
                                         holder, wait)
        try:
            claims = [self._verified(claim, holder) for claim in claims]
            self.provision(claims)
        except BaseException:
            self.life.undo(claims)
            raise
        expires = time.time() + lease if lease else None
        if expires:
            with store.transaction() as tx:
                for claim in claims:
                    tx.update(claim.instance.name, lease_expires=expires)
        return [dataclasses.replace(claim.instance, state=IN_USE,
                                    holder=holder, lease_expires=expires)
                for claim in claims]

    def _resetting(self, tx: Any, source: base.Source) -> str | None:
        """An instance of ``source`` (or of the sources it draws from)
        being reset in the background, if any."""
        todo, seen = [source.name], set()
        while todo:
            name = todo.pop()
            if name in seen or not self.config.usable(name):
                continue
            seen.add(name)
            todo.extend(self.config.source(name).children)
            for inst in tx.instances(name):
                if records.resetting(inst):
                    return inst.name
        return None

    def _reset_budget(self, source: base.Source) -> float:
        """How long a reset of ``source`` may take: a discard and a
        cold start, by their timeouts (10 minutes where unlimited)."""
        total = 0.0
        todo = [source.name]
        while todo:
            conf = self.config.source(todo.pop())
            todo.extend(conf.children)
            total = max(total, (conf.conf.provision_timeout or 600)
                        + (conf.conf.discard_timeout or 600))
        return total

    # -- checking cached instances -------------------------------------------

    def _leaf(self, inst: Instance) -> Instance:
        if not inst.child:
            return inst
        with self.stores.of_instance(inst).reading() as tx:
            leaf = inst
            while leaf.child:
                nxt = tx.get(leaf.child)
                if nxt is None:
                    break
                leaf = nxt
        return leaf

    def _verified(self, claim: Claim, holder: dict[str, Any] | None,
                  parent: str | None = None,
                  avoid: frozenset[str] = frozenset()) -> Claim:
        """Return the claim, or a replacement if a reused one is dead.

        A replacement is drawn preferring other sources than the dead
        instance's (in a pool), which may well be dead as a whole.
        """
        if not claim.reused:
            if claim.child is not None:
                claim.child = self._verified(claim.child, None,
                                             claim.instance.name, avoid)
            return claim
        leaf = self._leaf(claim.instance)
        source = self.stores.driver(leaf.source)
        if (source is None or not source.conf.verify_cached
                or source.is_alive(leaf.ref or {})):
            LOG.info('%s: cached, handed out again', claim.instance.name)
            return claim
        self.progress.event(f'cached instance {claim.instance.name} does '
                            'not answer; discarding it and taking another')
        store = self.stores.of_instance(claim.instance)
        with store.transaction() as tx:
            tx.update(claim.instance.name, state=DISCARDING,
                      op=records.work_record())
        self.life.discard(claim.instance, force=True)
        owner = self.config.source(claim.instance.source)
        avoid = avoid | {leaf.source}
        with store.transaction() as tx:
            if parent is None:
                replacement = self.claimer.claim(tx, owner, 1, holder,
                                                 avoid)[0]
            else:
                wrapper = tx.get(parent)
                if wrapper is None:
                    raise exceptions.StoreError(
                        f'instance {parent} vanished')
                pool = kinds.layered(self.config.source(wrapper.source))
                replacement = self.claimer.claim_child(tx, pool, wrapper,
                                                       avoid)
                tx.update(parent, child=replacement.instance.name)
        return self._verified(replacement, holder, parent, avoid)

    # -- provisioning -------------------------------------------------------

    def _provision_leaf(self, claim: Claim) -> None:
        inst = claim.instance
        source = self.stores.driver(inst.source)
        plan = (snapshots.plan(self.life, source)
                if snapshots.wanted(source) else None)
        if plan is not None and plan.capture:
            try:
                self._made(inst, source, call(
                    source, 'provisioning from the capture',
                    source.provision_from, [inst.name], plan.capture))
                LOG.info('%s: started from capture %s', inst.name,
                         plan.capture)
            except exceptions.CaptureGone as err:
                LOG.warning('%s; provisioning afresh', err)
                snapshots.gone(self.life, plan)
                plan = snapshots.plan(self.life, source)
            else:
                # Provisioned: what provision.d did is in the capture, and
                # the captured instance's concurrency holds for this one.
                inst.concurrency = (source.configured_concurrency
                                    or plan.concurrency
                                    or self._probe(source, inst))
                return
        try:
            self._made(inst, source, call(source, 'provisioning',
                                          source.provision, [inst.name]))
            self.life.run_hooks(inst, hooks.PROVISION)
            probed = (None if source.configured_concurrency
                      else self._probe(source, inst))
        except BaseException:
            if plan is not None and plan.claimed:
                snapshots.unclaim(self.life, plan)  # for the next one
            raise
        if plan is not None and plan.claimed:
            snapshots.take(self.life, source, plan, inst.name, inst.ref,
                           probed)
        inst.concurrency = source.configured_concurrency or probed

    def _probe(self, source: base.BackendSource, inst: Instance) -> int:
        return call(source, 'probing concurrency', source.concurrency,
                    inst.ref)

    def _made(self, inst: Instance, source: base.BackendSource,
              refs: dict[str, Any]) -> None:
        """Record the reference the backend returned for ``inst``."""
        if inst.name not in refs:
            raise exceptions.SourceError(
                source.name, f'provisioning returned no reference for '
                f'{inst.name}')
        inst.ref = refs[inst.name]
        LOG.info('%s: made by source %s', inst.name, source.name)
        with self.stores.of_instance(inst).transaction() as tx:
            tx.update(inst.name, ref=inst.ref)

    def provision(self, claims: list[Claim], final_state: str = IN_USE,
                  reported: bool = False) -> None:
        """Make every new instance of ``claims`` and mark them usable.

        Provisioning that takes over a second is reported, unless the
        caller reports it (``reported``).
        """
        new = [c for top in claims for c in top.walk() if not c.reused]
        if not new:
            return
        leaves = [c for c in new
                  if kinds.backend(self.config.source(c.instance.source))]
        task = None
        if leaves and not reported:
            task = self.progress.task(
                'provisioning ' + ', '.join(c.instance.name for c in leaves),
                count=len(leaves), counting='ready', after=1.0)

        def leaf(claim: Claim) -> None:
            self._provision_leaf(claim)
            if task is not None:
                task.step(f'{claim.instance.name} ready')

        try:
            self.in_parallel(leaf, leaves)
            # Wrappers follow their children (listed after them): their
            # own provision.d runs once the wrapped instance is ready.
            for claim in reversed(new):
                if claim.child is None:
                    continue
                source = self.config.source(claim.instance.source)
                self.life.run_hooks(claim.instance, hooks.PROVISION)
                claim.instance.concurrency = (
                    source.configured_concurrency
                    or claim.child.instance.concurrency)
        finally:
            if task is not None:
                task.close()
        tops = {id(c) for c in claims}
        # A pool and everything it draws from live in one store.
        with self.stores.of_instance(new[0].instance).transaction() as tx:
            for claim in new:
                current = tx.get(claim.instance.name)
                if current is None or records.taken_over(current):
                    fate = ('its row is gone' if current is None else
                            'it is being discarded by '
                            + records.describe_process(current.op))
                    raise exceptions.SourceError(
                        claim.instance.source, f'{claim.instance.name} was '
                        f'reclaimed while it was provisioning ({fate}): '
                        'crcache gc takes over work that runs past twice '
                        "provision_timeout, or whose worker's heartbeat "
                        'stopped on a shared store')
            for claim in new:
                top = id(claim) in tops
                tx.update(claim.instance.name,
                          state=final_state if top else IN_USE,
                          concurrency=claim.instance.concurrency, op=None,
                          **({'holder': None} if final_state == CACHED
                             and top else {}))

    def in_parallel(self, work: Callable[[Claim], None],
                    claims: list[Claim]) -> None:
        """Run ``work`` on each claim in threads; raise the first error."""
        if len(claims) <= 1:
            for claim in claims:
                work(claim)
            return
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(PARALLEL, len(claims)))
        futures = {pool.submit(work, c): c for c in claims}
        try:
            first_error: BaseException | None = None
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                if error is not None and first_error is None:
                    first_error = error
            if first_error is not None:
                raise first_error
        except BaseException:
            # Interrupted: stop running hooks so the threads finish.
            self.life.stop_hooks()
            raise
        finally:
            pool.shutdown(wait=True)

    # -- filling the reserve -----------------------------------------------

    def fill(self, names: Iterable[str] | None = None) -> list[Instance]:
        """See :meth:`crcache.cache.Cache.fill`."""
        names = list(names) if names else [
            n for n in self.config.usable_names()
            if self.config.source(n).reserve]
        sources = [self.config.source(n) for n in names]
        claims: list[Claim] = []
        for source in sources:
            store = self.stores.of(source.name)
            with store.transaction() as tx:
                definitions.check(tx, store, self.config, source.name)
                need = source.reserve - tx.count(source.name,
                                                 records.STAYING)
                for _ in range(max(0, need)):
                    claim = self.claimer.claim_new(tx, source, None, None)
                    if claim is None:
                        break
                    claims.append(claim)
        if not claims:
            LOG.info('every source already has its reserve')
            return []
        failures: list[tuple[str, BaseException]] = []

        def one(claim: Claim) -> None:
            name = claim.instance.name
            try:
                self.provision([claim], final_state=CACHED, reported=True)
            except BaseException as err:
                self.life.undo([claim])
                failures.append((name, err))
                task.step(f'{name} failed')
                if not isinstance(err, Exception):
                    raise
            else:
                task.step(f'{name} ready')

        with self.progress.task(
                f'provisioning {records.plural(len(claims), "instance")}: '
                + ', '.join(c.instance.name for c in claims),
                count=len(claims), counting='done') as task:
            self.in_parallel(one, claims)
        if failures:
            raise exceptions.PartialFailure('provision', len(claims),
                                            failures)
        made = []
        for claim in claims:
            with self.stores.of_instance(claim.instance).reading() as tx:
                made.append(tx.get(claim.instance.name))
        return [inst for inst in made if inst is not None]
