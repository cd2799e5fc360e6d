"""Finish or undo what was interrupted, and let go of what has expired.

crcache has no daemon, so nothing watches processes while they work: a
``crcache acquire`` killed halfway leaves rows in ``provisioning``, a
test runner killed with SIGKILL never releases its instances. Every row
records who is working on it, so this pass can tell abandoned work from
work in progress:

* ``provisioning`` whose worker process is gone (on this host) or which
  is older than the source's ``provision_timeout``: discarded, through the
  driver and discard.d, after stopping any hook still running for it;
* ``discarding`` whose worker is gone: discarded again (discarding
  something already gone is success);
* ``in-use`` whose lease has expired: discarded, wrapped instances too
  (whoever had it may have left it in any state);
* ``cached`` for longer than the source's ``max_idle``: discarded;
* backend resources labelled as this store's that it does not know
  (leaks): reported, and destroyed with ``leaks=True``.

Each row is taken over in a transaction that checks it has not changed
since it was read, so concurrent passes never handle one row twice.
``crcache acquire`` runs a pass with a time budget before it starts.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from crcache import exceptions
from crcache import hooks
from crcache import invocation
from crcache.sources import base
from crcache.store.base import CACHED, DISCARDING, IN_USE, PROVISIONING

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Action:
    """One thing a pass did or found."""

    instance: str
    source: str
    action: str
    reason: str


def _who(op: dict | None) -> str:
    if not op:
        return 'an unknown process'
    return f"pid {op.get('pid')} on {op.get('host')}"


def _abandoned(cache: object, inst: object, now: float) -> str | None:
    """Why a row should be collected, or None to leave it alone."""
    config = cache.config
    known = inst.source in config.definitions
    source = config.source(inst.source) if known else None
    age = now - inst.updated
    if inst.state in (PROVISIONING, DISCARDING):
        timeout = source.conf.provision_timeout if source else 0
        if invocation.alive(inst.op) is False:
            return f'{inst.state} by {_who(inst.op)}, which has exited'
        if inst.op is None and inst.state == DISCARDING:
            return 'discarding, by nobody'
        if timeout and age > timeout:
            return (f'{inst.state} for {age:.0f}s, longer than '
                    f'provision_timeout ({timeout:g}s)')
        return None
    if inst.state == IN_USE and not inst.parent and inst.lease_expires:
        if inst.lease_expires < now:
            stamp = time.strftime('%Y-%m-%dT%H:%M:%S',
                                  time.localtime(inst.lease_expires))
            return f'lease expired at {stamp}'
        return None
    if inst.state == CACHED and source is not None:
        max_idle = source.conf.max_idle
        if max_idle and age > max_idle:
            return f'cached unused for {age:.0f}s (max_idle {max_idle:g}s)'
    return None


def collect(cache: object, leaks: bool = False,
            budget: float | None = None) -> list[Action]:
    """One garbage collection pass; returns what it did and found.

    With a ``budget`` (seconds) no new work is started once it is spent,
    and leaks are not looked for (that asks every backend).
    """
    started = time.monotonic()
    now = time.time()
    with cache.store.reading() as tx:
        rows = tx.instances()
    actions: list[Action] = []
    for inst in rows:
        if budget is not None and time.monotonic() - started > budget:
            break
        reason = _abandoned(cache, inst, now)
        if reason is None:
            continue
        try:
            taken = _take_over(cache, inst)
        except exceptions.CrcacheError as err:
            actions.append(Action(inst.name, inst.source, 'failed',
                                  str(err)))
            continue
        if taken is None:
            continue  # someone else got to it first
        force = inst.state != CACHED
        try:
            hook = (inst.op or {}).get('hook')
            if invocation.session_may_live(hook):
                hooks.kill(hook['pid'])
            cache._discard(taken, force=force)
        except exceptions.CrcacheError as err:
            actions.append(Action(inst.name, inst.source, 'failed',
                                  f'{reason}; discarding failed: {err}'))
            LOG.warning('%s: %s', inst.name, err)
            continue
        actions.append(Action(inst.name, inst.source, 'discarded', reason))
    if budget is None:
        actions.extend(_unreleased(cache, rows))
        actions.extend(_leaks(cache, rows, destroy=leaks))
    return actions


def _take_over(cache: object, inst: object) -> object | None:
    """Mark a row ours to discard, unless it changed since we read it."""
    with cache.store.transaction() as tx:
        current = tx.get(inst.name)
        if (current is None or current.state != inst.state
                or current.updated != inst.updated):
            return None
        tx.update(inst.name, state=DISCARDING, op=invocation.identity())
        current.state = DISCARDING
        return current


def _unreleased(cache: object, rows: list) -> list[Action]:
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


def _leaks(cache: object, rows: list, destroy: bool) -> list[Action]:
    """Backend resources carrying this store's label that it does not know."""
    known = {inst.name for inst in rows}
    with cache.store.reading() as tx:
        known.update(inst.name for inst in tx.instances())
    found = []
    for name in cache.config.names():
        source = cache.config.source(name)
        if not isinstance(source, base.BackendSource):
            continue
        try:
            owned = source.list_owned(cache.store.store_id)
        except exceptions.CrcacheError as err:
            found.append(Action('-', name, 'failed',
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
