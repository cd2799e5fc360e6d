"""The arbitration layer: every instance state transition happens here.

Commands call :class:`Cache`; the cache reads and writes the state store in
short transactions and asks source drivers and hook scripts to do their
work *between* them, never while holding the store. An acquisition claims
everything it needs (cached instances, new rows in ``provisioning``, the
child instances that pool instances wrap) in a single transaction, so two
processes can never be handed the same instance and a request that cannot
be met changes nothing. Rows are written before a backend is asked for
anything and carry the identity of the process working on them, so a
crash at any point leaves a row that says what may exist and who was
responsible; :mod:`crcache.gc` finishes or undoes such work.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import getpass
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from crcache import exceptions
from crcache import hooks
from crcache import invocation
from crcache import paths
from crcache.config import Config
from crcache.sources import base
from crcache.store import base as store_base
from crcache.store.base import CACHED, DISCARDING, IN_USE, PROVISIONING

LOG = logging.getLogger(__name__)

#: Instance names are ``<source>-<n>``; anything else is refused up front.
INSTANCE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\Z')
#: How long the garbage collection an acquire starts with may take.
AUTO_GC_BUDGET = 2.0
#: Most instances provisioned at once.
PARALLEL = 8
STAYING = (PROVISIONING, IN_USE, CACHED)


def check_instance_name(name: str) -> str:
    """Refuse names that could not be instances before using them."""
    if not INSTANCE_NAME.match(name):
        raise exceptions.InvalidName(
            f'invalid instance name {name!r}: instance names are '
            '<source>-<number> (letters, digits, ".", "_", "-")')
    return name


def work_record() -> dict[str, Any]:
    """The ``op`` of a row this process starts working on, from now."""
    return dict(invocation.identity(), since=time.time())


def current_holder() -> dict[str, Any]:
    """Describe the process acquiring instances, for ``status -v``."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid
        user = str(os.getuid())
    return {
        'host': socket.gethostname(),
        'pid': invocation.pid(),
        'ppid': invocation.ppid(),
        'start': invocation.start_time(invocation.pid()),
        'user': user,
        'since': time.time(),
        'argv': invocation.argv(),
    }


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
    cached: int = 0
    in_use: int = 0
    provisioning: int = 0
    discarding: int = 0

    @property
    def live(self) -> int:
        return self.cached + self.in_use + self.provisioning + self.discarding

    @property
    def available(self) -> int | None:
        """Instances an acquire could get now; None when unbounded."""
        if not self.maximum:
            return None
        return self.cached + max(0, self.maximum - self.live)


@dataclasses.dataclass
class _Claim:
    """One instance taken by an acquisition, and what it wraps."""

    instance: store_base.Instance
    reused: bool
    child: _Claim | None = None

    def walk(self) -> Iterable[_Claim]:
        yield self
        if self.child is not None:
            yield from self.child.walk()


def _warn(message: str) -> None:
    LOG.warning('%s', message)


def _taken_over(inst: store_base.Instance) -> bool:
    """Whether another process (crcache gc) is discarding the instance."""
    return (inst.state == DISCARDING
            and (inst.op or {}).get('pid') != os.getpid())


def _plural(n: int, word: str) -> str:
    return f'{n} {word}' if n == 1 else f'{n} {word}s'


class Cache:
    """Acquire, release and use instances of configured sources.

    ``progress`` receives one-line reports of slow work (provisioning),
    meant for the user's stderr.
    """

    def __init__(self, config: Config, store: store_base.Store,
                 progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.progress = progress or (lambda message: None)
        for name in config.usable_names():
            source = config.source(name)
            if isinstance(source, base.BackendSource):
                source.owner = store.store_id
        self._hook_pids: set[int] = set()
        self._lock = threading.Lock()
        if hasattr(store, 'on_wait'):
            store.on_wait = self.progress

    # -- queries -----------------------------------------------------------

    def status(self, names: Iterable[str] | None = None
               ) -> list[SourceStatus]:
        """Return per-source counts; unknown names are an error."""
        with self.store.reading() as tx:
            instances = tx.instances()
        wanted = list(names) if names else None
        known = {inst.source for inst in instances}
        if wanted:
            for name in wanted:
                if (name not in self.config.definitions
                        and name not in known):
                    self.config.source(name)  # raises UnknownSource
            selected = wanted
        else:
            selected = list(self.config.names())
            # Instances of a source since removed from the configuration
            # still exist somewhere: show them rather than hide them.
            for inst in instances:
                if inst.source not in self.config.definitions \
                        and inst.source not in selected:
                    selected.append(inst.source)
        result = {}
        for name in selected:
            if self.config.usable(name):
                source = self.config.source(name)
                children = (source.children
                            if isinstance(source, base.LayeredSource)
                            else [])
                result[name] = SourceStatus(
                    name, source.conf.type, source.maximum, source.reserve,
                    children)
            elif name in self.config.errors:
                result[name] = SourceStatus(
                    name, None, None, None, [],
                    error=str(self.config.errors[name]))
            else:
                result[name] = SourceStatus(
                    name, None, None, None, [],
                    error=f"source '{name}' is no longer configured")
        field = {CACHED: 'cached', IN_USE: 'in_use',
                 PROVISIONING: 'provisioning', DISCARDING: 'discarding'}
        for inst in instances:
            status = result.get(inst.source)
            if status is None:
                continue
            if inst.problem:
                LOG.warning('%s; it counts against the maximum of %s until '
                            'crcache gc discards it', inst.problem,
                            inst.source)
            attr = field.get(inst.state)
            if attr is not None:
                setattr(status, attr, getattr(status, attr) + 1)
        return list(result.values())

    def instances(self, sources: Iterable[str] | None = None
                  ) -> list[store_base.Instance]:
        """Return the instances of ``sources`` (all when None)."""
        with self.store.reading() as tx:
            found = tx.instances()
        if sources is None:
            return found
        wanted = set(sources)
        return [i for i in found if i.source in wanted]

    # -- acquire -----------------------------------------------------------

    def acquire(self, source_name: str, count: int = 1,
                holder: dict[str, Any] | None = None,
                wait: float | None = None,
                lease: float | None = None) -> list[store_base.Instance]:
        """Take ``count`` instances of a source, all or nothing.

        Cached instances are handed out first (after checking that they
        still answer); the rest are provisioned, in parallel. Without
        ``wait`` a source without room raises
        :class:`~crcache.exceptions.CapacityError` at once, having changed
        nothing; with it, the acquisition queues (first come, first
        served) for up to ``wait`` seconds (0: for ever). ``lease``
        (seconds; default: the source's ``lease``) lets ``crcache gc``
        reclaim the instances once it has passed.
        """
        if count < 1:
            raise exceptions.CrcacheError(
                f'cannot acquire {count} instances: ask for 1 or more')
        source = self.config.source(source_name)
        holder = holder or current_holder()
        if lease is None:
            lease = source.conf.lease
        self._auto_gc(source)
        if wait is None:
            with self.store.transaction() as tx:
                self._check_queue(tx, source, count)
                claims = self._claim(tx, source, count, holder)
        else:
            claims = self._claim_waiting(source, count, holder, wait)
        try:
            claims = [self._verified(claim, holder) for claim in claims]
            self._provision(claims)
        except BaseException:
            self._undo(claims)
            raise
        expires = time.time() + lease if lease else None
        if expires:
            with self.store.transaction() as tx:
                for claim in claims:
                    tx.update(claim.instance.name, lease_expires=expires)
        handed_out = []
        for claim in claims:
            handed_out.append(dataclasses.replace(
                claim.instance, state=IN_USE, holder=holder,
                lease_expires=expires))
        return handed_out

    def _auto_gc(self, source: base.Source) -> None:
        from crcache import gc
        drawn = set()
        todo = [source.name]
        while todo:
            name = todo.pop()
            if name in drawn or not self.config.usable(name):
                continue
            drawn.add(name)
            todo.extend(getattr(self.config.source(name), 'children', ()))
        try:
            gc.collect_before_acquire(self, drawn, AUTO_GC_BUDGET,
                                      self.progress)
        except exceptions.CrcacheError as err:
            LOG.warning('garbage collection before acquiring: %s', err)

    def _check_queue(self, tx: store_base.Transaction, source: base.Source,
                     count: int) -> None:
        waiting = [w for w in tx.waiters(source.name)
                   if invocation.alive(w.process) is not False]
        if waiting:
            raise exceptions.CapacityError(
                f"source '{source.name}' cannot supply "
                f"{_plural(count, 'instance')}: "
                f"{_plural(len(waiting), 'earlier acquisition')} "
                f"{'is' if len(waiting) == 1 else 'are'} waiting for it "
                '(use acquire --wait to queue)')

    def _claim_waiting(self, source: base.Source, count: int,
                       holder: dict[str, Any],
                       wait: float) -> list[_Claim]:
        """Queue for the source and claim when first in line and room."""
        deadline = time.monotonic() + wait if wait else None
        with self.store.transaction() as tx:
            ticket = tx.add_waiter(source.name, count, invocation.identity())
        reported = False
        try:
            delay = 0.01
            while True:
                refusal: exceptions.CapacityError | None = None
                claims = None
                try:
                    with self.store.transaction() as tx:
                        for waiter in tx.waiters(source.name):
                            if waiter.id != ticket and invocation.alive(
                                    waiter.process) is False:
                                tx.remove_waiter(waiter.id)
                        if tx.waiters(source.name)[0].id == ticket:
                            claims = self._claim(tx, source, count, holder)
                            tx.remove_waiter(ticket)
                        else:
                            refusal = exceptions.CapacityError(
                                f"source '{source.name}': waiting behind "
                                'an earlier acquisition')
                except exceptions.CapacityError as err:
                    refusal = err
                if claims is not None:  # committed, ticket and all
                    ticket = None
                    return claims
                if deadline is not None and time.monotonic() > deadline:
                    raise exceptions.CapacityError(
                        f'{refusal} (waited {wait:g}s)')
                if not reported:
                    self.progress(f'waiting: {refusal}')
                    reported = True
                time.sleep(delay)
                delay = min(delay * 1.5, 0.25)
        finally:
            if ticket is not None:
                with self.store.transaction() as tx:
                    tx.remove_waiter(ticket)

    def _claim(self, tx: store_base.Transaction, source: base.Source,
               count: int, holder: dict[str, Any],
               avoid: frozenset[str] = frozenset()) -> list[_Claim]:
        claims = []
        for inst in tx.instances(source.name, [CACHED])[:count]:
            tx.update(inst.name, state=IN_USE, holder=holder)
            claims.append(_Claim(inst, reused=True))
        need = count - len(claims)
        if not need:
            return claims
        live = tx.count(source.name)
        maximum = source.maximum
        if maximum and live + need > maximum:
            in_use = tx.count(source.name, [IN_USE])
            raise exceptions.CapacityError(
                f"source '{source.name}' cannot supply "
                f"{_plural(count, 'instance')}: maximum {maximum}, "
                f'{live} live ({in_use} in use, '
                f'{live - in_use} cached or changing state)')
        for _ in range(need):
            claim = self._claim_new(tx, source, parent=None, holder=holder,
                                    avoid=avoid)
            if claim is None:
                raise exceptions.CapacityError(
                    f"source '{source.name}' cannot supply "
                    f"{_plural(count, 'instance')}: "
                    + self._exhaustion(tx, source))
            claims.append(claim)
        return claims

    def _can_claim(self, tx: store_base.Transaction,
                   source: base.Source) -> bool:
        maximum = source.maximum
        if maximum and tx.count(source.name) >= maximum:
            return False
        if not isinstance(source, base.LayeredSource):
            return True
        for child_name in source.children:
            child = self.config.source(child_name)
            if tx.count(child.name, [CACHED]) or self._can_claim(tx, child):
                return True
        return False

    def _exhaustion(self, tx: store_base.Transaction,
                    source: base.Source) -> str:
        if not isinstance(source, base.LayeredSource):
            return (f'maximum {source.maximum}, '
                    f'{tx.count(source.name)} live')
        details = []
        for child_name in source.children:
            child = self.config.source(child_name)
            details.append(f'{child.name}: ' + self._exhaustion(tx, child))
        return f"its sources are exhausted ({'; '.join(details)})"

    def _claim_new(self, tx: store_base.Transaction, source: base.Source,
                   parent: str | None, holder: dict[str, Any] | None,
                   avoid: frozenset[str] = frozenset()) -> _Claim | None:
        """Create a provisioning row (and claim what it wraps), or None."""
        if not self._can_claim(tx, source):
            return None
        seq = tx.next_seq(source.name)
        inst = store_base.Instance(
            name=f'{source.name}-{seq}', source=source.name, seq=seq,
            state=PROVISIONING, parent=parent, holder=holder,
            op=work_record())
        tx.add(inst)
        claim = _Claim(inst, reused=False)
        if isinstance(source, base.LayeredSource):
            claim.child = self._claim_child(tx, source, inst.name, avoid)
            inst.child = claim.child.instance.name
            tx.update(inst.name, child=inst.child)
        return claim

    def _claim_child(self, tx: store_base.Transaction,
                     pool: base.LayeredSource, parent: str,
                     avoid: frozenset[str] = frozenset()) -> _Claim:
        """Claim what a new pool instance wraps: a cached instance of one
        of its sources (in order), else a new one. Sources in ``avoid``
        (just found dead) are tried last."""
        children = [self.config.source(name) for name in pool.children]
        children.sort(key=lambda child: child.name in avoid)
        for child in children:
            cached = tx.instances(child.name, [CACHED])
            if cached:
                inst = cached[0]
                tx.update(inst.name, state=IN_USE, parent=parent,
                          holder=None)
                inst.parent = parent
                return _Claim(inst, reused=True)
        for child in children:
            claim = self._claim_new(tx, child, parent=parent, holder=None)
            if claim is not None:
                return claim
        raise exceptions.CapacityError(
            f"source '{pool.name}' cannot supply an instance: "
            + self._exhaustion(tx, pool))

    # -- checking cached instances -------------------------------------------

    def _leaf(self, inst: store_base.Instance) -> store_base.Instance:
        if not inst.child:
            return inst
        with self.store.reading() as tx:
            leaf = inst
            while leaf.child:
                nxt = tx.get(leaf.child)
                if nxt is None:
                    break
                leaf = nxt
        return leaf

    def _verified(self, claim: _Claim, holder: dict[str, Any] | None,
                  parent: str | None = None,
                  avoid: frozenset[str] = frozenset()) -> _Claim:
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
        source = self.config.source(leaf.source)
        if (not isinstance(source, base.BackendSource)
                or not source.conf.verify_cached
                or source.is_alive(leaf.ref or {})):
            return claim
        self.progress(f'cached instance {claim.instance.name} does not '
                      'answer; discarding it and taking another')
        with self.store.transaction() as tx:
            tx.update(claim.instance.name, state=DISCARDING,
                      op=work_record())
        self._discard(claim.instance, force=True)
        owner = self.config.source(claim.instance.source)
        avoid = avoid | {leaf.source}
        with self.store.transaction() as tx:
            if parent is None:
                replacement = self._claim(tx, owner, 1, holder, avoid)[0]
            else:
                pool = self.config.source(self._source_of(tx, parent))
                replacement = self._claim_child(tx, pool, parent, avoid)
                tx.update(parent, child=replacement.instance.name)
        return self._verified(replacement, holder, parent, avoid)

    @staticmethod
    def _source_of(tx: store_base.Transaction, name: str) -> str:
        inst = tx.get(name)
        if inst is None:
            raise exceptions.StoreError(f'instance {name} vanished')
        return inst.source

    # -- provisioning -------------------------------------------------------

    def hook_env(self) -> dict[str, str]:
        """The environment hooks run in: a nested crcache sees our world."""
        env = dict(os.environ)
        env[paths.CONFIG_PATH_ENV] = ':'.join(
            root for root in self.config.roots if os.path.isdir(root))
        env['XDG_CACHE_HOME'] = os.path.dirname(paths.cache_dir())
        return env

    def _run_hooks(self, inst: store_base.Instance, kind: str) -> None:
        if not self.config.usable(inst.source):
            return  # its timeouts are unknown; gc --forget is the way
        definition = self.config.definitions.get(inst.source)
        scripts = hooks.scripts(definition and definition.directory, kind,
                                report=_warn)
        if not scripts:
            return
        conf = self.config.source(inst.source).conf
        key = ('provision_timeout' if kind == hooks.PROVISION
               else 'discard_timeout')

        mine: list[int] = []

        def started(pid: int) -> None:
            # Recorded both for an interrupt (see _in_parallel) and, in
            # the store, for whoever finds the work abandoned (gc).
            with self._lock:
                self._hook_pids.add(pid)
            mine.append(pid)
            with self.store.transaction() as tx:
                current = tx.get(inst.name)
                if current is not None:
                    op = dict(current.op or work_record(),
                              hook=dict(invocation.identity(pid),
                                        script=os.path.relpath(
                                            scripts[len(mine) - 1],
                                            definition.directory)))
                    tx.update(inst.name, op=op)

        try:
            hooks.run(scripts, instance=inst.name, source=inst.source,
                      env=self.hook_env(), started=started,
                      timeout=getattr(conf, key), timeout_key=key)
        finally:
            with self._lock:
                self._hook_pids.difference_update(mine)

    def _provision_leaf(self, claim: _Claim) -> None:
        inst = claim.instance
        source = self.config.source(inst.source)
        refs = self._call(source, 'provisioning', source.provision,
                          [inst.name])
        if inst.name not in refs:
            raise exceptions.SourceError(
                source.name, f'provisioning returned no reference for '
                f'{inst.name}')
        inst.ref = refs[inst.name]
        with self.store.transaction() as tx:
            tx.update(inst.name, ref=inst.ref)
        self._run_hooks(inst, hooks.PROVISION)
        inst.concurrency = (
            source.configured_concurrency
            or self._call(source, 'probing concurrency', source.concurrency,
                          inst.ref))

    def _provision(self, claims: list[_Claim], final_state: str = IN_USE,
                   report: bool = False) -> None:
        """Make every new instance of ``claims`` and mark them usable."""
        new = [c for top in claims for c in top.walk() if not c.reused]
        if not new:
            return
        leaves = [c for c in new if isinstance(
            self.config.source(c.instance.source), base.BackendSource)]
        timer = None
        if report:
            self.progress(f'provisioning {_plural(len(leaves), "instance")}'
                          f': {", ".join(c.instance.name for c in leaves)}')
        elif leaves:
            timer = threading.Timer(1.0, self.progress, [
                'provisioning '
                + ', '.join(c.instance.name for c in leaves) + '...'])
            timer.daemon = True
            timer.start()
        try:
            self._in_parallel(self._provision_leaf, leaves, report)
            # Wrappers follow their children (listed after them): their
            # own provision.d runs once the wrapped instance is ready.
            for claim in reversed(new):
                if claim.child is None:
                    continue
                source = self.config.source(claim.instance.source)
                self._run_hooks(claim.instance, hooks.PROVISION)
                claim.instance.concurrency = (
                    source.configured_concurrency
                    or claim.child.instance.concurrency)
        finally:
            if timer is not None:
                timer.cancel()
        tops = {id(c) for c in claims}
        with self.store.transaction() as tx:
            for claim in new:
                current = tx.get(claim.instance.name)
                if current is None or _taken_over(current):
                    raise exceptions.SourceError(
                        claim.instance.source, f'{claim.instance.name} was '
                        'reclaimed while it was provisioning (it took '
                        'longer than provision_timeout)')
            for claim in new:
                top = id(claim) in tops
                tx.update(claim.instance.name,
                          state=final_state if top else IN_USE,
                          concurrency=claim.instance.concurrency, op=None,
                          **({'holder': None} if final_state == CACHED
                             and top else {}))

    def _in_parallel(self, work: Callable[[_Claim], None],
                     claims: list[_Claim], report: bool) -> None:
        """Run ``work`` on each claim in threads; raise the first error."""
        if len(claims) <= 1:
            for claim in claims:
                work(claim)
            return
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(PARALLEL, len(claims)))
        futures = {pool.submit(work, c): c for c in claims}
        try:
            done = 0
            first_error: BaseException | None = None
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                if error is not None and first_error is None:
                    first_error = error
                done += 1
                if report and error is None:
                    self.progress(f'{futures[future].instance.name} ready '
                                  f'({done}/{len(claims)})')
            if first_error is not None:
                raise first_error
        except BaseException:
            # Interrupted: stop running hooks so the threads finish.
            with self._lock:
                for pid in self._hook_pids:
                    hooks.kill(pid)
            raise
        finally:
            pool.shutdown(wait=True)

    @staticmethod
    def _call(source: base.Source, action: str, func: Any,
              *args: Any) -> Any:
        """Call a driver, turning its unexpected errors into ours."""
        try:
            return func(*args)
        except exceptions.CrcacheError:
            raise
        except Exception as err:
            raise exceptions.SourceError(
                source.name, f'{action} failed: {err}') from err

    def _undo(self, claims: list[_Claim]) -> None:
        """Put back what a failed acquisition took; best effort."""
        for top in claims:
            for claim in top.walk():
                inst = claim.instance
                with self.store.transaction() as tx:
                    current = tx.get(inst.name)
                    if current is None or _taken_over(current):
                        continue
                    if claim.reused:
                        tx.update(inst.name, state=CACHED, holder=None,
                                  parent=None, lease_expires=None)
                        continue
                    tx.update(inst.name, state=DISCARDING,
                              op=work_record())
                    inst = current
                unmade = inst.ref is None and not inst.child
                try:
                    self._discard(inst, force=True, children=False)
                except exceptions.CrcacheError as err:
                    if not unmade:
                        # Left 'discarding' for crcache gc to retry.
                        LOG.warning('%s', err)
                        continue
                    # The backend never returned this instance, and a
                    # driver that fails cleans up after itself: nothing
                    # to retry (a crash's leftovers are found as leaks).
                    LOG.debug('discarding unmade %s: %s', inst.name, err)
                    with self.store.transaction() as tx:
                        tx.delete(inst.name)

    # -- filling the reserve -----------------------------------------------

    def fill(self, names: Iterable[str] | None = None
             ) -> list[store_base.Instance]:
        """Provision instances until each source has its ``reserve``.

        New instances are cached, ready for the next acquire. Sources
        already at their reserve (or their maximum) get nothing. Returns
        the instances made; failures are reported together at the end,
        after every other instance was tried.
        """
        names = list(names) if names else [
            n for n in self.config.usable_names()
            if self.config.source(n).reserve]
        sources = [self.config.source(n) for n in names]
        claims: list[_Claim] = []
        with self.store.transaction() as tx:
            for source in sources:
                need = source.reserve - tx.count(source.name, STAYING)
                for _ in range(max(0, need)):
                    claim = self._claim_new(tx, source, None, None)
                    if claim is None:
                        break
                    claims.append(claim)
        if not claims:
            self.progress('every source already has its reserve')
            return []
        failures: list[tuple[str, BaseException]] = []

        def one(claim: _Claim) -> None:
            try:
                self._provision([claim], final_state=CACHED)
            except BaseException as err:
                self._undo([claim])
                failures.append((claim.instance.name, err))
                if not isinstance(err, Exception):
                    raise

        self.progress(f'provisioning {_plural(len(claims), "instance")}: '
                      + ', '.join(c.instance.name for c in claims))
        self._in_parallel(one, claims, report=True)
        if failures:
            raise exceptions.PartialFailure('provision', len(claims),
                                            failures)
        with self.store.reading() as tx:
            return [tx.get(c.instance.name) for c in claims]

    # -- release -----------------------------------------------------------

    def release(self, names: Iterable[str]) -> None:
        """Release each named instance; report every failure at the end."""
        unique = list(dict.fromkeys(names))
        failures: list[tuple[str, BaseException]] = []
        for name in unique:
            try:
                self._release_one(name)
            except exceptions.CrcacheError as err:
                failures.append((name, err))
        if len(unique) == 1 and failures:
            raise failures[0][1]
        if failures:
            raise exceptions.PartialFailure('release', len(unique), failures)

    def _lookup(self, tx: store_base.Transaction,
                name: str) -> store_base.Instance:
        check_instance_name(name)
        inst = tx.get(name)
        if inst is None:
            raise exceptions.UnknownInstance(
                name, [i.name for i in tx.instances()])
        return inst

    def _keep(self, tx: store_base.Transaction,
              inst: store_base.Instance) -> bool:
        """Whether a released instance stays cached, per ``reserve``."""
        if not self.config.usable(inst.source):
            return False
        reserve = self.config.source(inst.source).reserve
        # Instances already being discarded are on their way out.
        return tx.count(inst.source, STAYING) <= reserve

    def _release_one(self, name: str) -> None:
        with self.store.transaction() as tx:
            inst = self._lookup(tx, name)
            if inst.state != IN_USE:
                raise exceptions.InstanceStateError(
                    f"instance '{name}' is not acquired (it is "
                    f'{inst.state})')
            if inst.parent:
                raise exceptions.InstanceStateError(
                    f"instance '{name}' is held by pool instance "
                    f"'{inst.parent}'; release '{inst.parent}' instead")
            keep = self._keep(tx, inst)
            orphan = not keep and not self._dischargeable(tx, inst)
            tx.update(name, state=CACHED if keep else DISCARDING,
                      holder=None, lease_expires=None,
                      op=None if keep or orphan else work_record())
        if orphan:
            # Nothing here can reach its backend; gc finishes the job
            # once the source is configured again, or --forget drops it.
            LOG.warning(
                '%s: %s, so its backend resource cannot be discarded '
                'now; crcache gc discards it once the source is fixed, '
                "or 'crcache gc --forget %s' forgets it", name,
                self.unusable_reason(inst.source), inst.source)
            return
        if not keep:
            self._discard(inst)

    def unusable_reason(self, source: str) -> str:
        """Why instances of ``source`` cannot be handled by its driver."""
        if source in self.config.errors:
            return (f"source '{source}' has a configuration error "
                    f'({self.config.errors[source]})')
        return f"source '{source}' is no longer configured"

    def _dischargeable(self, tx: store_base.Transaction,
                       inst: store_base.Instance) -> bool:
        """Whether this process can discard ``inst`` (and what it wraps)."""
        if not self.config.usable(inst.source):
            return False
        if inst.child:
            child = tx.get(inst.child)
            if child is not None and child.parent == inst.name:
                return self._dischargeable(tx, child)
        return True

    def discard(self, inst: store_base.Instance, force: bool = False
                ) -> None:
        """Destroy an instance this process has marked ``discarding``.

        For crcache gc, which takes rows over first; see :meth:`_discard`.
        """
        self._discard(inst, force=force)

    def _discard(self, inst: store_base.Instance, force: bool = False,
                 children: bool = True) -> None:
        """Destroy an instance already marked ``discarding``.

        discard.d runs first (a failure is reported, not fatal). A pool
        instance hands its child back to the child's source, which keeps
        or discards it by its own reserve; with ``force`` (the state of
        the whole is unknown) the child is discarded too. ``children``
        False leaves the child to whoever else is handling it.
        """
        try:
            self._run_hooks(inst, hooks.DISCARD)
        except hooks.HookError as err:
            LOG.warning('%s (discarding it anyway)', err)
        if inst.child:
            with self.store.transaction() as tx:
                child = tx.get(inst.child)
                mine = (children and child is not None
                        and child.parent == inst.name)
                keep_child = False
                if mine:
                    keep_child = (not force and child.state == IN_USE
                                  and self._keep(tx, child))
                    tx.update(child.name,
                              state=CACHED if keep_child else DISCARDING,
                              parent=None,
                              op=None if keep_child
                              else work_record())
                elif child is not None and child.parent == inst.name:
                    tx.update(child.name, parent=None)
                tx.delete(inst.name)
            if mine and not keep_child:
                self._discard(child, force=force)
            return
        if not self.config.usable(inst.source):
            raise exceptions.SourceError(
                inst.source, f'cannot discard {inst.name}: '
                + self.unusable_reason(inst.source))
        source = self.config.source(inst.source)
        if isinstance(source, base.BackendSource):
            self._call(source, f'discarding {inst.name}', source.discard,
                       {inst.name: inst.ref or {}})
        with self.store.transaction() as tx:
            tx.delete(inst.name)

    # -- use ---------------------------------------------------------------

    def resolve(self, name: str) -> tuple[store_base.Instance,
                                          base.BackendSource]:
        """Return the backend instance that does the work for ``name``.

        Pool instances are followed down to the instance they wrap. Only
        acquired (in-use) instances can be used, except by the hook
        scripts of the instance being provisioned or discarded.
        """
        with self.store.reading() as tx:
            inst = self._lookup(tx, name)
            hook_of_it = os.environ.get('CRCACHE_INSTANCE') == name
            usable = (inst.state == IN_USE or hook_of_it
                      and inst.state in (PROVISIONING, DISCARDING))
            if not usable:
                raise exceptions.InstanceStateError(
                    f"instance '{name}' is not acquired (it is "
                    f"{inst.state}); acquire one with 'crcache acquire -s "
                    f"{inst.source}'")
            leaf = inst
            while leaf.child:
                nxt = tx.get(leaf.child)
                if nxt is None:
                    raise exceptions.StoreError(
                        f"instance '{leaf.name}' wraps '{leaf.child}', "
                        'which the state store no longer has')
                leaf = nxt
        source = self.config.source(leaf.source)
        if not isinstance(source, base.BackendSource):
            raise exceptions.StoreError(
                f"instance '{leaf.name}' belongs to '{leaf.source}', which "
                'cannot run commands')
        return leaf, source

    def run(self, name: str, argv: list[str], stdin: int = 0,
            stdout: int = 1, stderr: int = 2) -> int:
        """Run ``argv`` on an acquired instance; return its exit status."""
        leaf, source = self.resolve(name)
        from crcache import process
        with process.naming(name, argv):
            return self._call(source, f'running on {name}', source.run,
                              leaf.ref or {}, argv, stdin, stdout, stderr)

    def copy(self, src: str, dst: str, recursive: bool = False) -> None:
        """Copy between ``[INSTANCE:]PATH`` arguments (``cp -p`` style)."""
        src_name, src_path = split_location(src)
        dst_name, dst_path = split_location(dst)
        if src_name is None and dst_name is None:
            raise exceptions.CopyError(
                f'neither {src!r} nor {dst!r} names an instance; write '
                'INSTANCE:PATH on at least one side')
        if src_name is not None and dst_name is not None:
            self._copy_between(src_name, src_path, dst_name, dst_path,
                               recursive)
            return
        if src_name is not None:
            leaf, source = self.resolve(src_name)
            with _naming(src_name):
                self._call(source, f'copying from {src_name}',
                           source.copy_out, leaf.ref or {}, src_path,
                           dst_path, recursive)
        else:
            leaf, source = self.resolve(dst_name)
            with _naming(dst_name):
                self._call(source, f'copying to {dst_name}', source.copy_in,
                           leaf.ref or {}, src_path, dst_path, recursive)

    def place_files(self, name: str, files: Iterable[str]) -> None:
        """Make local files exist at the same absolute paths on an instance.

        For test runners whose command names a local file (testr's
        ``$FILES``). Instances of this machine need nothing.
        """
        leaf, source = self.resolve(name)
        if source.shares_filesystem:
            return
        for path in files:
            path = os.path.abspath(path)
            if not os.path.isfile(path):
                raise exceptions.CopyError(f'--files {path}: not a file')
            parent = os.path.dirname(path)
            self._call(source, f'placing {path} on {name}', source.capture,
                       leaf.ref or {}, ['mkdir', '-p', '--', parent])
            self._call(source, f'placing {path} on {name}', source.copy_in,
                       leaf.ref or {}, path, path, False)

    def _copy_between(self, src_name: str, src_path: str, dst_name: str,
                      dst_path: str, recursive: bool) -> None:
        import shutil
        import tempfile
        src_leaf, src_source = self.resolve(src_name)
        dst_leaf, dst_source = self.resolve(dst_name)
        staging = tempfile.mkdtemp(prefix='crcache-cp.')
        try:
            os.chmod(staging, 0o700)
            with _naming(src_name):
                src_source.copy_out(src_leaf.ref or {}, src_path, staging,
                                    recursive)
            base_name = os.path.basename(src_path.rstrip('/')) or src_path
            with _naming(dst_name):
                dst_source.copy_in(dst_leaf.ref or {},
                                   os.path.join(staging, base_name),
                                   dst_path, recursive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _naming(instance: str) -> Iterator[None]:
    """Name the instance in errors about paths on it (``INSTANCE:PATH``)."""
    try:
        yield
    except exceptions.InstancePathError as err:
        raise err.on(instance) from None


def split_location(arg: str) -> tuple[str | None, str]:
    """Split ``INSTANCE:PATH`` (as scp does: a colon before any slash).

    A local path containing a colon can be written ``./a:b``. An empty
    instance path means the instance's working directory.
    """
    head, sep, tail = arg.partition(':')
    if not sep or '/' in head or not head:
        return None, arg
    check_instance_name(head)
    return head, tail or '.'
