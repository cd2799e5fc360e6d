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

``crcache acquire`` starts with :func:`collect_before_acquire`: a quick
read-only look, and only when something is due, a ``crcache gc`` in a
process of its own. The acquire waits for it (at most a couple of
seconds) only when what is due belongs to the sources it draws from,
so a slow discard.d never holds an acquire up for long, and never
one from another source.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from crcache import exceptions
from crcache import hooks
from crcache import invocation
from crcache import stamps
from crcache.sources import base
from crcache.store.base import CACHED, DISCARDING, IN_USE, PROVISIONING

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Action:
    """One thing a pass did or found."""

    #: None when the row is about a source, not an instance.
    instance: str | None
    source: str
    action: str
    reason: str


def _who(op: dict | None) -> str:
    if not op:
        return 'an unknown process'
    return f"pid {op.get('pid')} on {op.get('host')}"


def _started(inst: Any) -> float:
    """When the row's current work began (its ``op``), else last change."""
    since = (inst.op or {}).get('since')
    return since if isinstance(since, (int, float)) else inst.updated


def _due(conf: Any, inst: Any, now: float) -> str | None:
    """Why a row should be collected, or None to leave it alone.

    ``conf`` is the source's configuration, or None when the source
    cannot be loaded (only the rules that need no keys apply then).
    """
    if inst.problem:
        return inst.problem
    if inst.state in (PROVISIONING, DISCARDING):
        key = ('provision_timeout' if inst.state == PROVISIONING
               else 'discard_timeout')
        timeout = getattr(conf, key) if conf is not None else 0
        age = now - _started(inst)
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


def due(cache: Any, rows: list, now: float | None = None,
        damaged: bool = True) -> list[tuple[Any, str]]:
    """The rows a pass would collect now, with why.

    ``damaged`` rows (unreadable, or in a state this crcache does not
    know) are only collected when asked: by ``crcache gc`` itself, not by
    the pass an acquire starts.
    """
    now = time.time() if now is None else now
    found = []
    for inst in rows:
        if not cache.config.usable(inst.source):
            continue
        if inst.problem and not damaged:
            continue
        reason = _due(cache.config.source(inst.source).conf, inst, now)
        if reason is not None:
            found.append((inst, reason))
    return found


def collect(cache: Any, leaks: bool = False) -> list[Action]:
    """One garbage collection pass; returns what it did and found."""
    now = time.time()
    with cache.store.reading() as tx:
        rows = tx.instances()
    actions: list[Action] = []
    for inst, reason in due(cache, rows, now):
        actions.extend(_collect_one(cache, inst, reason))
    actions.extend(_orphans(cache, rows, now))
    actions.extend(_unreleased(cache, rows))
    actions.extend(_leaks(cache, rows, destroy=leaks))
    return actions


def _collect_one(cache: Any, inst: Any, reason: str) -> list[Action]:
    try:
        taken = _take_over(cache, inst)
    except exceptions.CrcacheError as err:
        return [Action(inst.name, inst.source, 'failed', str(err))]
    if taken is None:
        return []  # someone else got to it first
    force = inst.state != CACHED
    try:
        hook = (inst.op or {}).get('hook')
        if invocation.session_may_live(hook):
            hooks.kill(hook['pid'])
        cache.discard(taken, force=force)
    except exceptions.CrcacheError as err:
        LOG.warning('%s: %s', inst.name, err)
        return [Action(inst.name, inst.source, 'failed',
                       f'{reason}; discarding failed: {err}')]
    return [Action(inst.name, inst.source, 'discarded', reason)]


def _orphans(cache: Any, rows: list, now: float) -> list[Action]:
    """Rows due for collection that no configured driver can reach."""
    found = []
    for inst in rows:
        if cache.config.usable(inst.source) or inst.parent:
            continue
        if inst.state in (CACHED, DISCARDING) \
                or _due(None, inst, now) is not None:
            found.append(Action(
                inst.name, inst.source, 'kept',
                f'{cache.unusable_reason(inst.source)}: cannot discard it '
                f"(fix the source, or 'crcache gc --forget {inst.source}' "
                'forgets it)'))
    return found


def forget(cache: Any, sources: list[str]) -> list[Action]:
    """Drop every row of sources that cannot be loaded any more.

    Says, for each, which backend resource may be left behind. An
    instance a forgotten pool instance held, of a source that still
    works, is discarded (its state is unknown).
    """
    for name in sources:
        if cache.config.usable(name):
            raise exceptions.CrcacheError(
                f"source '{name}' is configured and usable: release its "
                'instances, and gc discards what is due; --forget is for '
                'sources whose definition is gone or broken')
    actions = []
    children = []
    with cache.store.transaction() as tx:
        for name in sources:
            rows = tx.instances(name)
            if not rows and name not in cache.config.definitions:
                raise exceptions.UnknownSource(
                    name, {i.source for i in tx.instances()})
            for inst in rows:
                if inst.child:
                    child = tx.get(inst.child)
                    if child is not None and child.parent == inst.name:
                        tx.update(child.name, parent=None)
                        if cache.config.usable(child.source):
                            tx.update(child.name, state=DISCARDING,
                                      op=_work())
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
    for child in children:
        actions.extend(_collect_one_taken(cache, child))
    return actions


def _collect_one_taken(cache: Any, inst: Any) -> list[Action]:
    inst.state = DISCARDING
    try:
        cache.discard(inst, force=True)
    except exceptions.CrcacheError as err:
        return [Action(inst.name, inst.source, 'failed', str(err))]
    return [Action(inst.name, inst.source, 'discarded',
                   'its pool instance was forgotten')]


def _work() -> dict:
    from crcache import cache as cache_module
    return cache_module.work_record()


def _take_over(cache: Any, inst: Any) -> Any | None:
    """Mark a row ours to discard, unless it changed since we read it."""
    with cache.store.transaction() as tx:
        current = tx.get(inst.name)
        if (current is None or current.state != inst.state
                or current.updated != inst.updated):
            return None
        tx.update(inst.name, state=DISCARDING, op=_work())
        current.state = DISCARDING
        return current


def collect_before_acquire(cache: Any, sources: set[str], budget: float,
                           progress: Any = None) -> None:
    """Start a gc pass if anything is due; maybe wait ``budget`` seconds.

    The pass runs as ``crcache gc`` in a process of its own, so whatever
    it waits for (a discard.d script) holds the acquire up no longer
    than ``budget``: after that it goes on alone, bounded by the
    sources' timeouts. Only when something due belongs to ``sources``
    (those the acquisition draws from) is it waited for, its warnings
    coming to our stderr meanwhile. ``progress`` (a
    :class:`crcache.progress.Reporter`) is told when the wait becomes
    noticeable, and passes the pass's output on.
    """
    with cache.store.reading() as tx:
        rows = tx.instances()
    pending = due(cache, rows, damaged=False)
    if not pending:
        return
    wait = any(inst.source in sources for inst, _ in pending)
    pending = [(inst, reason) for inst, reason in pending
               if inst.source in sources] or pending
    if progress is None:
        from crcache.progress import Reporter
        progress = Reporter()
    names = ', '.join(inst.name for inst, _ in pending)
    env = cache.hook_env()
    env.pop('CRCACHE_INSTANCE', None)
    try:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'crcache', '-q', 'gc'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if wait else subprocess.DEVNULL,
            env=env, start_new_session=True, cwd='/')
    except OSError as err:
        LOG.warning('cannot start garbage collection: %s', err)
        return
    if not wait:
        return
    import select
    deadline = time.monotonic() + budget
    fd = proc.stderr.fileno()
    with progress.task(f'waiting for garbage collection of {names} '
                       f'(pid {proc.pid})', after=0.5):
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                data = os.read(fd, 65536)
                if not data:  # done: its stderr closed as it exited
                    proc.wait()
                    return
                progress.output(data)
        finally:
            proc.stderr.close()
    LOG.warning('garbage collection of %s goes on in the background (pid '
                '%s); acquiring meanwhile', names, proc.pid)


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
    for name in cache.config.usable_names():
        source = cache.config.source(name)
        if not isinstance(source, base.BackendSource):
            continue
        try:
            owned = source.list_owned(cache.store.store_id)
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
