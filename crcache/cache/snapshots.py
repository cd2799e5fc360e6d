"""Provision once: captures of provisioned instances (``snapshot``).

A source with ``snapshot = provisioned`` has its first instance made as
usual (the backend, then provision.d); the backend then captures it
(:meth:`~crcache.sources.base.BackendSource.take_capture`) and every later
instance starts from the capture, without provision.d.

A capture belongs to a *fingerprint* (:func:`fingerprint`): the source's
type, its keys (but the ``local_keys`` each machine sets its own way),
what the backend says shapes the result (the base image's id), and the
content of every provision.d script. An acquire computes it; when no
capture of that fingerprint is ready, it provisions afresh. Stale
captures are removed by ``crcache gc`` (:func:`collect`).

One capture per fingerprint: the store records each (table
``captures``). The first acquire to find none inserts a ``capturing``
row with its work record, in a transaction, and so is the only one to
capture; the others provision normally meanwhile (never waiting on it).
A capturing row whose process is gone, or that has taken twice the
source's ``provision_timeout``, is abandoned: the next acquire or gc
forgets it, and what the backend made meanwhile carries labels that gc
finds (listed as a leak, removed with ``gc --leaks``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

from crcache import exceptions
from crcache import hooks
from crcache import invocation
from crcache.cache import kinds
from crcache.cache import records
from crcache.cache.actions import Action
from crcache.cache.lifecycle import Lifecycle, call
from crcache.config import Config
from crcache.sources import base
from crcache.store.base import CAPTURING, READY, Capture, Store

LOG = logging.getLogger(__name__)


def wanted(source: base.Source) -> bool:
    """Whether ``source`` starts its instances from captures."""
    return (kinds.backend(source) is not None
            and source.conf.snapshot == 'provisioned')


def fingerprint(config: Config, source: base.BackendSource) -> str:
    """What shapes a provisioned instance of ``source``, hashed.

    Asks the backend (:meth:`snapshot_basis`), and reads every
    provision.d script: their content, not their times.
    """
    cls = type(source)
    keys = {opt.dest: getattr(source.conf, opt.dest) for opt in cls.opts
            if opt.dest not in cls.local_keys}
    definition = config.definitions.get(source.name)
    scripts = []
    for path in hooks.scripts(definition and definition.directory,
                              hooks.PROVISION):
        try:
            with open(path, 'rb') as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as err:
            raise exceptions.SourceError(
                source.name, f'cannot read {path}: {err.strerror}')
        scripts.append((os.path.basename(path), digest))
    basis = call(source, 'looking up what shapes a capture',
                 source.snapshot_basis)
    text = json.dumps({'type': source.conf.type, 'keys': keys,
                       'basis': basis, 'provision.d': scripts},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def abandoned(row: Capture, source: base.Source) -> bool:
    """Whether a ``capturing`` row's work was given up (see module)."""
    if invocation.alive(row.op) is False:
        return True
    since = (row.op or {}).get('since', row.created)
    limit = 2 * source.conf.provision_timeout
    return bool(limit) and time.time() - since > limit


@dataclasses.dataclass
class Plan:
    """How one new instance of a snapshot source is to be made."""

    source: str
    fingerprint: str
    #: The capture to start from, if one is ready.
    capture: str | None = None
    #: Whether this process is to capture what it provisions.
    claimed: bool = False
    #: What an instance started from the capture takes (as probed on
    #: the captured one), if known.
    concurrency: int | None = None


def plan(life: Lifecycle, source: base.BackendSource) -> Plan:
    """Start from the ready capture, or claim the capture, or neither
    (another process is capturing: provision normally)."""
    current = fingerprint(life.config, source)
    store = life.stores.of(source.name)
    with store.transaction() as tx:
        for row in tx.captures(source.name):
            if row.fingerprint != current:
                continue
            if row.state == READY and row.capture:
                return Plan(source.name, current, capture=row.capture,
                            concurrency=row.concurrency)
            if row.state == CAPTURING and not abandoned(row, source):
                return Plan(source.name, current)
            tx.delete_capture(source.name, current)
        claimed = tx.add_capture(Capture(source.name, current, CAPTURING,
                                         op=records.work_record()))
    return Plan(source.name, current, claimed=claimed)


def take(life: Lifecycle, source: base.BackendSource, plan: Plan,
         name: str, ref: base.Ref, concurrency: int | None) -> None:
    """Capture the instance just provisioned for ``plan``; record it,
    with the ``concurrency`` it was found to take.

    A failure is reported and leaves no claim: later instances run
    provision.d until a capture succeeds.
    """
    store = life.stores.of(source.name)
    task = life.progress.task(f'capturing {name} for source {source.name} '
                              '(snapshot=provisioned)', after=1.0)
    try:
        with task:
            capture = call(source, f'capturing {name}', source.take_capture,
                           ref, plan.fingerprint)
    except BaseException as err:
        with store.transaction() as tx:
            if _ours(tx, plan):
                tx.delete_capture(plan.source, plan.fingerprint)
        if not isinstance(err, exceptions.CrcacheError):
            raise
        LOG.warning('%s; later instances run provision.d until a capture '
                    'succeeds', err)
        return
    with store.transaction() as tx:
        mine = _ours(tx, plan)
        if mine:
            tx.update_capture(plan.source, plan.fingerprint, state=READY,
                              capture=capture, created=time.time(), op=None,
                              concurrency=concurrency)
    if mine:
        LOG.info('%s: captured as %s for source %s', name, capture,
                 source.name)
        return
    # Taken over meanwhile (gc found it abandoned): not ours to keep.
    try:
        source.drop_capture(capture)
    except exceptions.CrcacheError as err:
        LOG.warning('%s', err)


def unclaim(life: Lifecycle, plan: Plan) -> None:
    """Give up the claim to capture (the instance was not provisioned)."""
    with life.stores.of(plan.source).transaction() as tx:
        if _ours(tx, plan):
            tx.delete_capture(plan.source, plan.fingerprint)


def _ours(tx: Any, plan: Plan) -> bool:
    for row in tx.captures(plan.source):
        if (row.fingerprint == plan.fingerprint and row.state == CAPTURING
                and invocation.same_process(row.op,
                                            invocation.identity())):
            return True
    return False


def gone(life: Lifecycle, plan: Plan) -> None:
    """Forget a ready capture the backend no longer has."""
    store = life.stores.of(plan.source)
    with store.transaction() as tx:
        for row in tx.captures(plan.source):
            if row.fingerprint == plan.fingerprint \
                    and row.capture == plan.capture:
                tx.delete_capture(plan.source, plan.fingerprint)


# -- listing, dropping, collecting ------------------------------------------

def rows(life: Lifecycle, names: list[str] | None = None) -> list[Capture]:
    """Every capture the stores record (of ``names`` only, if given)."""
    found = []
    for store in life.stores.each({}):
        with store.reading() as tx:
            found.extend(c for c in tx.captures()
                         if names is None or c.source in names)
    return found


def current(life: Lifecycle, name: str) -> str | None:
    """The fingerprint ``name`` would capture now (None: it does not
    capture)."""
    if not life.config.usable(name):
        return None
    source = life.stores.driver(name)
    if source is None or not wanted(source):
        return None
    return fingerprint(life.config, source)


def _snapshot_source(life: Lifecycle, name: str) -> base.BackendSource:
    source = life.config.source(name)
    backend = kinds.backend(source)
    if backend is None or not backend.supports_snapshot:
        raise exceptions.CrcacheError(
            f"source '{name}' is of type {source.conf.type}, which makes no "
            'captures')
    return life.stores.driver(name)


def drop(life: Lifecycle, name: str) -> list[Action]:
    """Remove every capture of source ``name`` (``crcache snapshot
    drop``); one being made by a live process is left, and said."""
    source = _snapshot_source(life, name)
    store = life.stores.of(name)
    actions = []
    with store.reading() as tx:
        recorded = tx.captures(name)
    busy = set()
    for row in recorded:
        if row.state == CAPTURING and not abandoned(row, source):
            busy.add(row.fingerprint)
            actions.append(Action(
                None, name, 'kept', f'a capture (fingerprint '
                f'{row.fingerprint}) is being made by '
                f'{records.describe_process(row.op)}; drop it once that '
                'is done'))
    listed = call(source, 'listing captures', source.list_captures,
                  store.store_id)
    ids = {row.capture: row.fingerprint for row in recorded
           if row.capture and row.fingerprint not in busy}
    ids.update((cid, fp) for cid, fp in listed.items() if fp not in busy)
    for capture, fp in sorted(ids.items()):
        try:
            call(source, 'dropping a capture', source.drop_capture, capture)
        except exceptions.CrcacheError as err:
            actions.append(Action(
                None, name, 'kept' if isinstance(
                    err, exceptions.CaptureInUse) else 'failed',
                f'{err}; no instance starts from it any more, and '
                'crcache gc removes it once none uses it'
                if isinstance(err, exceptions.CaptureInUse) else str(err)))
            continue
        actions.append(Action(None, name, 'dropped',
                              f'capture {_short(capture)} (fingerprint '
                              f'{fp})'))
    with store.transaction() as tx:
        for row in tx.captures(name):
            if row.fingerprint not in busy:
                tx.delete_capture(name, row.fingerprint)
    return actions


def collect(life: Lifecycle, store: Store, leaks: bool) -> list[Action]:
    """gc's pass over ``store``'s captures.

    Abandoned ``capturing`` rows are forgotten; captures whose
    fingerprint is no longer the source's (or whose source no longer
    captures) are removed; labelled captures the store does not record
    are leaks, listed, and removed with ``leaks``. Only sources that
    capture, or have captures recorded, are looked at
    (``crcache snapshot drop`` removes whatever else is labelled).
    """
    with store.reading() as tx:
        recorded = tx.captures()
    # Sources that capture, or have captures recorded: a type that can
    # capture but never was asked to is not asked for its captures on
    # every pass (a docker call each).
    names = {row.source for row in recorded}
    for name in life.config.usable_names():
        if (life.config.store_of(name) == store.name
                and wanted(life.config.source(name))):
            names.add(name)
    actions: list[Action] = []
    for name in sorted(names):
        if not life.config.usable(name) or life.config.store_of(
                name) != store.name:
            continue  # its backend cannot be reached from here
        try:
            actions.extend(_collect_source(
                life, store, name, [r for r in recorded if r.source == name],
                leaks))
        except exceptions.CrcacheError as err:
            actions.append(Action(None, name, 'failed',
                                  f'cannot check its captures: {err}'))
    return actions


def _collect_source(life: Lifecycle, store: Store, name: str,
                    recorded: list[Capture], leaks: bool) -> list[Action]:
    source = life.stores.driver(name)
    if source is None or not source.supports_snapshot:
        return []
    now_fp = current(life, name)
    actions = []
    keep: dict[str, str] = {}  # capture id or '' -> fingerprint kept
    busy = set()
    for row in recorded:
        if row.state == CAPTURING:
            if not abandoned(row, source):
                busy.add(row.fingerprint)
                continue
            with store.transaction() as tx:
                tx.delete_capture(name, row.fingerprint)
            actions.append(Action(
                None, name, 'forgotten',
                f'capture (fingerprint {row.fingerprint}) abandoned by '
                f'{records.describe_process(row.op)}'))
            continue
        if row.fingerprint == now_fp:
            keep[row.capture or ''] = row.fingerprint
            continue
        why = ('the source no longer captures' if now_fp is None else
               'the image, keys or provision.d changed since')
        try:
            call(source, 'dropping a capture', source.drop_capture,
                 row.capture)
        except exceptions.CrcacheError as err:
            keep[row.capture or ''] = row.fingerprint
            in_use = isinstance(err, exceptions.CaptureInUse)
            actions.append(Action(
                None, name, 'kept' if in_use else 'failed',
                f'stale capture {_short(row.capture)} ({why}): {err}; '
                'removed at a later gc'))
            continue
        with store.transaction() as tx:
            tx.delete_capture(name, row.fingerprint)
        actions.append(Action(None, name, 'discarded',
                              f'stale capture {_short(row.capture)} '
                              f'(fingerprint {row.fingerprint}: {why})'))
    listed = call(source, 'listing captures', source.list_captures,
                  store.store_id)
    for capture, fp in sorted(listed.items()):
        if capture in keep or fp in busy:
            continue
        # Unrecorded: an old capture (dropped while in use, or stale) is
        # removed like a stale one; one of the current fingerprint was
        # left by a capture that was cut short (a leak).
        stale = fp != now_fp
        what = f'capture {_short(capture)} (fingerprint {fp})'
        if not stale and not leaks:
            actions.append(Action(
                None, name, 'leaked', f'{what} is not in the state store '
                '(crcache gc --leaks removes it)'))
            continue
        try:
            call(source, 'dropping a capture', source.drop_capture, capture)
        except exceptions.CaptureInUse as err:
            actions.append(Action(None, name, 'kept',
                                  f'{err}; removed at a later gc'))
            continue
        except exceptions.CrcacheError as err:
            actions.append(Action(None, name, 'failed', str(err)))
            continue
        actions.append(Action(
            None, name, 'discarded' if stale else 'destroyed',
            f'old {what}, no longer recorded' if stale
            else f'{what} was not in the state store'))
    return actions


def _short(capture: str | None) -> str:
    if not capture:
        return '(none)'
    return capture.split(':', 1)[-1][:12]
