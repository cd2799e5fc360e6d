"""Finish or undo what was interrupted, and let go of what has expired.

crcache has no daemon, so nothing watches processes while they work: a
``crcache acquire`` killed halfway leaves rows in ``provisioning``, a
test runner killed with SIGKILL never releases its instances. Every row
records who is working on it, so this pass can tell abandoned work from
work in progress:

* ``provisioning`` whose worker process is gone (on this host) or which
  has taken twice the source's ``provision_timeout`` (its worker should
  have given up by then): discarded, through the driver and discard.d,
  after stopping any hook still running for it;
* ``discarding`` whose worker is gone, or that has taken twice the
  source's ``discard_timeout``: discarded again (discarding something
  already gone is success);
* in a shared store, work of another host is judged by its heartbeat
  alone (:mod:`crcache.cache.heartbeat`): taken over once it has stopped,
  never while it beats;
* ``in-use`` whose lease has expired: discarded, wrapped instances too
  (whoever had it may have left it in any state);
* ``cached`` for longer than the source's ``max_idle``: discarded;
* backend resources labelled as this store's that it does not know
  (leaks): reported, and destroyed with ``leaks=True``.

Each row is taken over in a transaction that checks it has not changed
since it was read, so concurrent passes never handle one row twice.

Rows of a source that is no longer configured (or whose definition is
broken) cannot be discarded, as no driver can reach their backend: they
are reported, never retried in a loop, and ``forget`` drops them.

``crcache acquire`` starts with a quick read-only look for what is due,
and hands it to a ``crcache gc`` of its own (see
:mod:`crcache.cache.autogc`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from crcache import exceptions
from crcache import hooks
from crcache import invocation
from crcache import stamps
from crcache.cache import heartbeat
from crcache.cache.actions import Action
from crcache.cache import records
from crcache.cache.lifecycle import Lifecycle
from crcache.store.base import CACHED, DISCARDING, IN_USE, PROVISIONING
from crcache.store.base import Store

LOG = logging.getLogger(__name__)


def _who(op: dict | None) -> str:
    if not op:
        return 'an unknown process'
    return f"pid {op.get('pid')} on {op.get('host')}"


def _started(inst: Any) -> float:
    """When the row's current work began (its ``op``), else last change."""
    since = (inst.op or {}).get('since')
    return since if isinstance(since, (int, float)) else inst.updated


def _due(conf: Any, inst: Any, now: float,
         heartbeat_timeout: float | None = None) -> str | None:
    """Why a row should be collected, or None to leave it alone.

    ``conf`` is the source's configuration, or None when the source
    cannot be loaded (only the rules that need no keys apply then).
    ``heartbeat_timeout`` is given for a shared store.
    """
    if inst.problem:
        return inst.problem
    if inst.state in (PROVISIONING, DISCARDING):
        key = ('provision_timeout' if inst.state == PROVISIONING
               else 'discard_timeout')
        timeout = getattr(conf, key) if conf is not None else 0
        age = now - _started(inst)
        if (heartbeat_timeout is not None and inst.op
                and not invocation.here(inst.op)):
            stopped = heartbeat.expired(inst.op, heartbeat_timeout, now)
            if stopped is None:
                return None  # alive on its own host: never ours
            return (f'{inst.state} by {_who(inst.op)}, whose heartbeat '
                    f'stopped {stopped:.0f}s ago')
        if invocation.alive(inst.op) is False:
            return f'{inst.state} by {_who(inst.op)}, which has exited'
        if inst.op is None and inst.state == DISCARDING:
            return 'discarding, by nobody'
        if timeout and age > 2 * timeout:
            return (f'{inst.state} for {age:.0f}s, more than twice '
                    f'{key} ({timeout:g}s)')
        return None
    if inst.state == IN_USE and not inst.parent and inst.lease_expires:
        if inst.lease_expires < now:
            return f'lease expired at {stamps.utc(inst.lease_expires)}'
        return None
    if inst.state == CACHED and conf is not None:
        max_idle = conf.max_idle
        age = now - inst.updated
        if max_idle and age > max_idle:
            return f'cached unused for {age:.0f}s (max_idle {max_idle:g}s)'
    return None


def due(life: Lifecycle, store: Store, rows: list,
        now: float | None = None,
        damaged: bool = True) -> list[tuple[Any, str]]:
    """The rows of ``store`` a pass would collect now, with why.

    ``damaged`` rows (unreadable, or in a state this crcache does not
    know) are only collected when asked: by ``crcache gc`` itself, not by
    the pass an acquire starts.
    """
    now = time.time() if now is None else now
    beats = store.heartbeat_timeout if store.shared else None
    found = []
    for inst in rows:
        if not life.config.usable(inst.source):
            continue
        if inst.problem and not damaged:
            continue
        reason = _due(life.config.source(inst.source).conf, inst, now,
                      beats)
        if reason is not None:
            found.append((inst, reason))
    return found


def collect(life: Lifecycle, leaks: bool = False) -> list[Action]:
    """One garbage collection pass over every store; returns what it did
    and found (a store that cannot be reached is one failed action)."""
    actions: list[Action] = []
    failures: dict[str, exceptions.CrcacheError] = {}
    for store in life.stores.each(failures):
        actions.extend(_collect_store(life, store, leaks))
    for store_name, err in failures.items():
        LOG.warning('%s', err)
        for name in life.config.usable_names():
            if life.config.store_of(name) == store_name:
                actions.append(Action(
                    None, name, 'failed',
                    f"its store '{store_name}' cannot be reached: {err}"))
    return actions


def _collect_store(life: Lifecycle, store: Store,
                   leaks: bool) -> list[Action]:
    now = time.time()
    with store.reading() as tx:
        rows = tx.instances()
    actions: list[Action] = []
    for inst, reason in due(life, store, rows, now):
        actions.extend(_collect_one(life, inst, reason))
    actions.extend(_orphans(life, rows, now))
    actions.extend(_unreleased(life, rows))
    actions.extend(_leaks(life, store, rows, destroy=leaks))
    from crcache.cache import snapshots
    actions.extend(snapshots.collect(life, store, leaks))
    return actions


def _collect_one(life: Lifecycle, inst: Any, reason: str) -> list[Action]:
    try:
        taken = _take_over(life, inst)
    except exceptions.CrcacheError as err:
        return [Action(inst.name, inst.source, 'failed', str(err))]
    if taken is None:
        return []  # someone else got to it first
    force = inst.state != CACHED
    try:
        hook = (inst.op or {}).get('hook')
        if invocation.session_may_live(hook):
            hooks.kill(hook['pid'])
        life.discard(taken, force=force)
    except exceptions.CrcacheError as err:
        LOG.warning('%s: %s', inst.name, err)
        return [Action(inst.name, inst.source, 'failed',
                       f'{reason}; discarding failed: {err}')]
    return [Action(inst.name, inst.source, 'discarded', reason)]


def _orphans(life: Lifecycle, rows: list, now: float) -> list[Action]:
    """Rows due for collection that no configured driver can reach."""
    found = []
    for inst in rows:
        if life.config.usable(inst.source) or inst.parent:
            continue
        if inst.state in (CACHED, DISCARDING) \
                or _due(None, inst, now) is not None:
            found.append(Action(
                inst.name, inst.source, 'kept',
                f'{life.unusable_reason(inst.source)}: cannot discard it '
                f"(fix the source, or 'crcache gc --forget {inst.source}' "
                'forgets it)'))
    return found


def forget(life: Lifecycle, sources: list[str]) -> list[Action]:
    """Drop every row of sources that cannot be loaded any more.

    Says, for each, which backend resource may be left behind. An
    instance a forgotten pool instance held, of a source that still
    works, is discarded (its state is unknown).
    """
    for name in sources:
        if life.config.usable(name):
            raise exceptions.CrcacheError(
                f"source '{name}' is configured and usable: release its "
                'instances, and gc discards what is due; --forget is for '
                'sources whose definition is gone or broken')
    actions = []
    children = []
    # A broken source's store is unknown: look for its rows in each.
    stores = list(life.stores.each())
    seen = {name: False for name in sources}
    for store in stores:
        with store.reading() as tx:
            for name in sources:
                seen[name] = seen[name] or bool(tx.instances(name))
    for name, found in seen.items():
        if not found and name not in life.config.definitions:
            raise exceptions.UnknownSource(name, [])
    for store in stores:
        with store.transaction() as tx:
            actions.extend(_forget_in(life, tx, sources, children))
    for child in children:
        actions.extend(_collect_one_taken(life, child))
    return actions


def _forget_in(life: Lifecycle, tx: Any, sources: list[str],
               children: list) -> list[Action]:
    actions = []
    for name in sources:
        for inst in tx.instances(name):
            if inst.child:
                child = tx.get(inst.child)
                if child is not None and child.parent == inst.name:
                    tx.update(child.name, parent=None)
                    if life.config.usable(child.source):
                        tx.update(child.name, state=DISCARDING,
                                  op=records.work_record())
                        children.append(child)
            tx.delete(inst.name)
            if inst.child:
                left = f'it held {inst.child}'
            elif inst.ref:
                left = ('its backend resource may remain: '
                        + json.dumps(inst.ref, sort_keys=True))
            else:
                left = 'no backend resource was recorded for it'
            actions.append(Action(inst.name, name, 'forgotten',
                                  f'was {inst.state}; {left}'))
    return actions


def _collect_one_taken(life: Lifecycle, inst: Any) -> list[Action]:
    inst.state = DISCARDING
    try:
        life.discard(inst, force=True)
    except exceptions.CrcacheError as err:
        return [Action(inst.name, inst.source, 'failed', str(err))]
    return [Action(inst.name, inst.source, 'discarded',
                   'its pool instance was forgotten')]


def _take_over(life: Lifecycle, inst: Any) -> Any | None:
    """Mark a row ours to discard, unless it changed since we read it."""
    with life.stores.of_instance(inst).transaction() as tx:
        current = tx.get(inst.name)
        if (current is None or current.state != inst.state
                or current.updated != inst.updated):
            return None
        tx.update(inst.name, state=DISCARDING, op=records.work_record())
        current.state = DISCARDING
        return current


def _unreleased(life: Lifecycle, rows: list) -> list[Action]:
    """In-use instances whose holder is gone but that have no lease."""
    found = []
    for inst in rows:
        if inst.state != IN_USE or inst.parent or inst.lease_expires:
            continue
        if invocation.alive(inst.holder) is False:
            found.append(Action(
                inst.name, inst.source, 'kept',
                f'held by {_who(inst.holder)}, which has exited; it has no '
                'lease, so it stays in use until released (acquire with '
                '--lease, or set lease= for the source, to let gc reclaim '
                'such instances)'))
    return found


def _leaks(life: Lifecycle, store: Store, rows: list,
           destroy: bool) -> list[Action]:
    """Backend resources carrying ``store``'s label that it does not
    know."""
    known = {inst.name for inst in rows}
    with store.reading() as tx:
        known.update(inst.name for inst in tx.instances())
    found = []
    for name in life.config.usable_names():
        if life.config.store_of(name) != store.name:
            continue
        source = life.stores.driver(name)
        if source is None:
            continue
        try:
            owned = source.list_owned(store.store_id)
        except exceptions.CrcacheError as err:
            found.append(Action(None, name, 'failed',
                                f'cannot list resources: {err}'))
            continue
        for resource, instance in sorted((owned or {}).items()):
            if instance in known:
                continue
            label = instance or resource
            if not destroy:
                found.append(Action(
                    label, name, 'leaked',
                    f'{resource} is not in the state store (crcache gc '
                    '--leaks destroys it)'))
                continue
            try:
                source.destroy_owned(resource)
            except exceptions.CrcacheError as err:
                found.append(Action(label, name, 'failed', str(err)))
                continue
            found.append(Action(label, name, 'destroyed',
                                f'{resource} was not in the state store'))
    return found
