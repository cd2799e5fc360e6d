"""Between transactions: hooks, discarding, releasing, undoing.

Work that asks backends and hook scripts to act, and so must never run
inside a store transaction: each step reads or writes the store in a
short transaction of its own, before and after the slow part. Rows are
marked first (``discarding`` with this process's work record), so a
crash at any point leaves a row that says what may exist.
:mod:`crcache.cache.provisioning` builds on this for making instances.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from crcache import exceptions
from crcache import hooks
from crcache import invocation
from crcache import paths
from crcache.cache import definitions
from crcache.cache import records
from crcache.cache.claims import Claim
from crcache.cache.stores import Stores
from crcache.config import Config
from crcache.sources import base
from crcache.store.base import CACHED, DISCARDING, IN_USE
from crcache.store.base import Instance, Transaction

LOG = logging.getLogger(__name__)


def _warn(message: str) -> None:
    LOG.warning('%s', message)


def lookup(tx: Transaction, name: str) -> Instance:
    """The named instance, or an error suggesting a close name."""
    records.check_instance_name(name)
    inst = tx.get(name)
    if inst is None:
        raise exceptions.UnknownInstance(
            name, [i.name for i in tx.instances()])
    return inst


def call(source: base.Source, action: str, func: Any, *args: Any) -> Any:
    """Call a driver, turning its unexpected errors into ours."""
    try:
        return func(*args)
    except exceptions.CrcacheError:
        raise
    except Exception as err:
        raise exceptions.SourceError(
            source.name, f'{action} failed: {err}') from err


class Lifecycle:
    """Hooks, release and discard for one configuration and its stores.

    ``progress`` is a :class:`crcache.progress.Reporter`. Thread-safe:
    instances are provisioned and discarded from several threads.
    """

    def __init__(self, config: Config, stores: Stores,
                 progress: Any) -> None:
        self.config = config
        self.stores = stores
        self.progress = progress
        self._hook_pids: set[int] = set()
        self._lock = threading.Lock()

    # -- hooks -------------------------------------------------------------

    def hook_env(self) -> dict[str, str]:
        """The environment hooks run in: a nested crcache sees our world."""
        env = dict(self.config.env)
        env[paths.CONFIG_PATH_ENV] = ':'.join(
            root for root in self.config.roots if os.path.isdir(root))
        env['XDG_CACHE_HOME'] = os.path.dirname(
            paths.cache_dir(self.config.env))
        return env

    def run_hooks(self, inst: Instance, kind: str) -> None:
        """Run the instance's source's ``kind`` scripts for it."""
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
            # Recorded both for an interrupt (see stop_hooks) and, in the
            # store, for whoever finds the work abandoned (gc).
            with self._lock:
                self._hook_pids.add(pid)
            mine.append(pid)
            script = os.path.relpath(scripts[len(mine) - 1],
                                     definition.directory)
            LOG.info('%s: running %s (pid %s)', inst.name, script, pid)
            with self.stores.of_instance(inst).transaction() as tx:
                current = tx.get(inst.name)
                if current is not None:
                    op = dict(current.op or records.work_record(),
                              hook=dict(invocation.identity(pid),
                                        script=script))
                    tx.update(inst.name, op=op)

        try:
            hooks.run(scripts, instance=inst.name, source=inst.source,
                      env=self.hook_env(), started=started,
                      timeout=getattr(conf, key), timeout_key=key,
                      output=self.progress.output)
        finally:
            with self._lock:
                self._hook_pids.difference_update(mine)

    def stop_hooks(self) -> None:
        """Stop every hook this process runs (interrupted)."""
        with self._lock:
            for pid in self._hook_pids:
                hooks.kill(pid)

    # -- release and discard ----------------------------------------------

    def release(self, names: Iterable[str], force: bool = False) -> None:
        """Release each named instance; report every failure at the end.

        An instance held by another user or machine is refused unless
        ``force``.
        """
        unique = list(dict.fromkeys(names))
        failures: list[tuple[str, BaseException]] = []
        for name in unique:
            try:
                self._release_one(name, force)
            except exceptions.CrcacheError as err:
                failures.append((name, err))
        if len(unique) == 1 and failures:
            raise failures[0][1]
        if failures:
            raise exceptions.PartialFailure('release', len(unique), failures)

    def keep(self, tx: Transaction, inst: Instance) -> bool:
        """Whether a released instance stays cached, per ``reserve``."""
        if not self.config.usable(inst.source):
            return False
        reserve = self.config.source(inst.source).reserve
        # Instances already being discarded are on their way out.
        return tx.count(inst.source, records.STAYING) <= reserve

    def _release_one(self, name: str, force: bool) -> None:
        records.check_instance_name(name)
        store = self.stores.find(name)
        with store.transaction() as tx:
            inst = lookup(tx, name)
            if inst.state != IN_USE:
                raise exceptions.InstanceStateError(
                    f"instance '{name}' is not acquired (it is "
                    f'{inst.state})')
            if inst.parent:
                raise exceptions.InstanceStateError(
                    f"instance '{name}' is held by pool instance "
                    f"'{inst.parent}'; release '{inst.parent}' instead")
            if self.config.usable(inst.source):
                definitions.check(tx, store, self.config, inst.source)
            # Only a shared store has holders other than this user here.
            other = store.shared and records.held_elsewhere(inst.holder)
            if other and not force:
                raise exceptions.InstanceStateError(
                    f"instance '{name}' is held by {other}; release it "
                    'there, or use release --force')
            keep = self.keep(tx, inst)
            reset = keep and self.resets(inst)
            if reset:
                keep = False
            orphan = not keep and not self._dischargeable(tx, inst)
            tx.update(name, state=CACHED if keep else DISCARDING,
                      holder=None, lease_expires=None,
                      op=None if keep or orphan
                      else records.work_record(**(
                          {'reset': True} if reset else {})))
        if reset:
            from crcache.cache import resets
            LOG.info('%s: reset=recreate: discarding it and making a '
                     'fresh one in the background', name)
            resets.start(self, name)
            return
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
            self.discard(inst)

    def resets(self, inst: Instance) -> bool:
        """Whether a released ``inst`` that stays cached is recreated
        instead (its source's ``reset = recreate``)."""
        if inst.child or not self.config.usable(inst.source):
            return False
        return self.config.source(inst.source).reset_mode == 'recreate'

    def unusable_reason(self, source: str) -> str:
        """Why instances of ``source`` cannot be handled by its driver."""
        if source in self.config.errors:
            return (f"source '{source}' has a configuration error "
                    f'({self.config.errors[source]})')
        return f"source '{source}' is no longer configured"

    def _dischargeable(self, tx: Transaction, inst: Instance) -> bool:
        """Whether this process can discard ``inst`` (and what it wraps)."""
        if not self.config.usable(inst.source):
            return False
        if inst.child:
            child = tx.get(inst.child)
            if child is not None and child.parent == inst.name:
                return self._dischargeable(tx, child)
        return True

    def discard(self, inst: Instance, force: bool = False,
                children: bool = True) -> None:
        """Destroy an instance this process has marked ``discarding``.

        discard.d runs first (a failure is reported, not fatal). A pool
        instance hands its child back to the child's source, which keeps
        or discards it by its own reserve; with ``force`` (the state of
        the whole is unknown) the child is discarded too. ``children``
        False leaves the child to whoever else is handling it.
        """
        LOG.info('%s: discarding it', inst.name)
        try:
            self.run_hooks(inst, hooks.DISCARD)
        except hooks.HookError as err:
            LOG.warning('%s (discarding it anyway)', err)
        store = self.stores.of_instance(inst)
        if inst.child:
            with store.transaction() as tx:
                child = tx.get(inst.child)
                mine = (children and child is not None
                        and child.parent == inst.name)
                keep_child = reset_child = False
                if mine:
                    keep_child = (not force and child.state == IN_USE
                                  and self.keep(tx, child))
                    reset_child = keep_child and self.resets(child)
                    if reset_child:
                        keep_child = False
                    tx.update(child.name,
                              state=CACHED if keep_child else DISCARDING,
                              parent=None,
                              op=None if keep_child
                              else records.work_record(**(
                                  {'reset': True} if reset_child else {})))
                elif child is not None and child.parent == inst.name:
                    tx.update(child.name, parent=None)
                tx.delete(inst.name)
            if reset_child:
                from crcache.cache import resets
                resets.start(self, child.name)
            elif mine and not keep_child:
                self.discard(child, force=force)
            return
        if not self.config.usable(inst.source):
            raise exceptions.SourceError(
                inst.source, f'cannot discard {inst.name}: '
                + self.unusable_reason(inst.source))
        source = self.stores.driver(inst.source)
        if source is not None:
            call(source, f'discarding {inst.name}', source.discard,
                 {inst.name: inst.ref or {}})
        with store.transaction() as tx:
            tx.delete(inst.name)

    def undo(self, claims: list[Claim]) -> None:
        """Put back what a failed acquisition took; best effort."""
        for top in claims:
            for claim in top.walk():
                inst = claim.instance
                store = self.stores.of_instance(inst)
                with store.transaction() as tx:
                    current = tx.get(inst.name)
                    if current is None or records.taken_over(current):
                        continue
                    if claim.reused:
                        tx.update(inst.name, state=CACHED, holder=None,
                                  parent=None, lease_expires=None)
                        continue
                    tx.update(inst.name, state=DISCARDING,
                              op=records.work_record())
                    inst = current
                unmade = inst.ref is None and not inst.child
                try:
                    self.discard(inst, force=True, children=False)
                except exceptions.CrcacheError as err:
                    if not unmade:
                        # Left 'discarding' for crcache gc to retry.
                        LOG.warning('%s', err)
                        continue
                    # The backend never returned this instance, and a
                    # driver that fails cleans up after itself: nothing
                    # to retry (a crash's leftovers are found as leaks).
                    LOG.debug('discarding unmade %s: %s', inst.name, err)
                    with store.transaction() as tx:
                        tx.delete(inst.name)
