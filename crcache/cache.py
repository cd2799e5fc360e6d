"""The arbitration layer: every instance state transition happens here.

Commands call :class:`Cache`; the cache reads and writes the state store in
short transactions and asks source drivers to do backend work *between*
them, never while holding the store. An acquisition claims everything it
needs (cached instances, new rows in ``provisioning``, the child instances
pool instances wrap) in a single transaction, so two processes can never
be handed the same instance and a request that cannot be met changes
nothing. Rows are written before a backend is asked for anything, so a
crash at any point leaves a row saying what may exist.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import socket
import time
from collections.abc import Iterable
from typing import Any

from crcache import exceptions
from crcache import invocation
from crcache.config import Config
from crcache.sources import base
from crcache.store import base as store_base
from crcache.store.base import CACHED, DISCARDING, IN_USE, PROVISIONING

#: Instance names are ``<source>-<n>``; anything else is refused up front.
INSTANCE_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$')


def check_instance_name(name: str) -> str:
    """Refuse names that could not be instances before using them."""
    if not INSTANCE_NAME.match(name):
        raise exceptions.InvalidName(
            f'invalid instance name {name!r}: instance names are '
            '<source>-<number> (letters, digits, ".", "_", "-")')
    return name


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


def _plural(n: int, word: str) -> str:
    return f'{n} {word}' if n == 1 else f'{n} {word}s'


class Cache:
    """Acquire, release and use instances of configured sources."""

    def __init__(self, config: Config, store: store_base.Store) -> None:
        self.config = config
        self.store = store

    # -- queries -----------------------------------------------------------

    def status(self, names: Iterable[str] | None = None
               ) -> list[SourceStatus]:
        """Return per-source counts; unknown names are an error."""
        with self.store.reading() as tx:
            instances = tx.instances()
        wanted = list(names) if names else None
        if wanted:
            for name in wanted:
                self.config.source(name)
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
            if name in self.config.definitions:
                source = self.config.source(name)
                children = (source.children
                            if isinstance(source, base.LayeredSource)
                            else [])
                result[name] = SourceStatus(
                    name, source.conf.type, source.maximum, source.reserve,
                    children)
            else:
                result[name] = SourceStatus(name, None, None, None, [])
        field = {CACHED: 'cached', IN_USE: 'in_use',
                 PROVISIONING: 'provisioning', DISCARDING: 'discarding'}
        for inst in instances:
            status = result.get(inst.source)
            if status is not None:
                attr = field[inst.state]
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
                holder: dict[str, Any] | None = None
                ) -> list[store_base.Instance]:
        """Take ``count`` instances of a source, all or nothing.

        Cached instances are handed out first; the rest are provisioned.
        Raises :class:`~crcache.exceptions.CapacityError` (having changed
        nothing) when the source cannot supply them all.
        """
        if count < 1:
            raise exceptions.CrcacheError(
                f'cannot acquire {count} instances: ask for 1 or more')
        source = self.config.source(source_name)
        holder = holder or current_holder()
        with self.store.transaction() as tx:
            claims = self._claim(tx, source, count, holder)
        try:
            self._provision(claims)
        except BaseException:
            self._undo(claims)
            raise
        with self.store.reading() as tx:
            return [tx.get(c.instance.name) for c in claims]

    def _claim(self, tx: store_base.Transaction, source: base.Source,
               count: int, holder: dict[str, Any]) -> list[_Claim]:
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
            claim = self._claim_new(tx, source, parent=None, holder=holder)
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
                   parent: str | None,
                   holder: dict[str, Any] | None) -> _Claim | None:
        """Create a provisioning row (and claim what it wraps), or None."""
        if not self._can_claim(tx, source):
            return None
        seq = tx.next_seq(source.name)
        inst = store_base.Instance(
            name=f'{source.name}-{seq}', source=source.name, seq=seq,
            state=PROVISIONING, parent=parent, holder=holder)
        tx.add(inst)
        claim = _Claim(inst, reused=False)
        if isinstance(source, base.LayeredSource):
            claim.child = self._claim_child(tx, source, inst.name)
            inst.child = claim.child.instance.name
            tx.update(inst.name, child=inst.child)
        return claim

    def _claim_child(self, tx: store_base.Transaction,
                     pool: base.LayeredSource, parent: str) -> _Claim:
        children = [self.config.source(name) for name in pool.children]
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
        # _can_claim(pool) said yes, so a child must have supplied.
        raise AssertionError(f'pool {pool.name} could not be satisfied')

    def _provision(self, claims: list[_Claim]) -> None:
        new = [c for top in claims for c in top.walk() if not c.reused]
        by_source: dict[str, list[_Claim]] = {}
        for claim in new:
            by_source.setdefault(claim.instance.source, []).append(claim)
        for source_name, group in by_source.items():
            source = self.config.source(source_name)
            if not isinstance(source, base.BackendSource):
                continue
            names = [c.instance.name for c in group]
            refs = self._call(source, 'provision', source.provision, names)
            missing = [n for n in names if n not in refs]
            with self.store.transaction() as tx:
                for claim in group:
                    if claim.instance.name in refs:
                        claim.instance.ref = refs[claim.instance.name]
                        tx.update(claim.instance.name,
                                  ref=claim.instance.ref)
            if missing:
                raise exceptions.SourceError(
                    source_name, f'provisioning returned no reference for '
                    f'{", ".join(missing)}')
            for claim in group:
                claim.instance.concurrency = (
                    source.configured_concurrency
                    or self._call(source, 'probe concurrency',
                                  source.concurrency,
                                  claim.instance.ref))
        # Wrappers take their child's concurrency unless configured;
        # children were listed after their parents, so go bottom-up.
        for claim in reversed(new):
            if claim.child is not None:
                source = self.config.source(claim.instance.source)
                claim.instance.concurrency = (
                    source.configured_concurrency
                    or claim.child.instance.concurrency)
        with self.store.transaction() as tx:
            for claim in new:
                tx.update(claim.instance.name, state=IN_USE,
                          concurrency=claim.instance.concurrency)

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
                if claim.reused:
                    with self.store.transaction() as tx:
                        if tx.get(inst.name) is not None:
                            tx.update(inst.name, state=CACHED, holder=None,
                                      parent=None)
                    continue
                with self.store.transaction() as tx:
                    current = tx.get(inst.name)
                    if current is None:
                        continue
                    tx.update(inst.name, state=DISCARDING)
                source = self.config.source(inst.source)
                if isinstance(source, base.BackendSource):
                    try:
                        source.discard({inst.name: inst.ref or {}})
                    except Exception:
                        # Left 'discarding' for a later pass to retry.
                        continue
                with self.store.transaction() as tx:
                    tx.delete(inst.name)

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
        if inst.source not in self.config.definitions:
            return False
        reserve = self.config.source(inst.source).reserve
        # Instances already being discarded are on their way out.
        staying = tx.count(inst.source, [PROVISIONING, IN_USE, CACHED])
        return staying <= reserve

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
            tx.update(name, state=CACHED if keep else DISCARDING,
                      holder=None, lease_expires=None)
        if not keep:
            self._discard(inst)

    def _discard(self, inst: store_base.Instance) -> None:
        """Destroy an instance already marked ``discarding``."""
        if inst.child:
            with self.store.transaction() as tx:
                child = tx.get(inst.child)
                keep_child = False
                if child is not None and child.parent == inst.name:
                    keep_child = self._keep(tx, child)
                    tx.update(child.name,
                              state=CACHED if keep_child else DISCARDING,
                              parent=None)
                tx.delete(inst.name)
            if child is not None and child.parent == inst.name \
                    and not keep_child:
                self._discard(child)
            return
        if inst.source not in self.config.definitions:
            raise exceptions.SourceError(
                inst.source, f'cannot discard {inst.name}: the source is no '
                'longer configured')
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
        acquired (in-use) instances can be used.
        """
        with self.store.reading() as tx:
            inst = self._lookup(tx, name)
            if inst.state != IN_USE:
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
            self._call(source, f'copying from {src_name}', source.copy_out,
                       leaf.ref or {}, src_path, dst_path, recursive)
        else:
            leaf, source = self.resolve(dst_name)
            self._call(source, f'copying to {dst_name}', source.copy_in,
                       leaf.ref or {}, src_path, dst_path, recursive)

    def _copy_between(self, src_name: str, src_path: str, dst_name: str,
                      dst_path: str, recursive: bool) -> None:
        import shutil
        import tempfile
        src_leaf, src_source = self.resolve(src_name)
        dst_leaf, dst_source = self.resolve(dst_name)
        staging = tempfile.mkdtemp(prefix='crcache-cp.')
        try:
            os.chmod(staging, 0o700)
            src_source.copy_out(src_leaf.ref or {}, src_path, staging,
                                recursive)
            base_name = os.path.basename(src_path.rstrip('/')) or src_path
            dst_source.copy_in(dst_leaf.ref or {},
                               os.path.join(staging, base_name), dst_path,
                               recursive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


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
