"""``acquire --wait``: queueing for room, first come, first served.

A waiter is a row in the store; each attempt is one transaction in which
the first live waiter in line claims, if the source has room. Between
attempts it sleeps (growing to a quarter second) and tells the user, as
a progress task, what it waits for and for whom. In a shared store each
attempt also renews the waiter's heartbeat, by which waiters on other
hosts are judged (:func:`crcache.cache.heartbeat.waiter_gone`).
"""

from __future__ import annotations

import time
from typing import Any

from crcache import exceptions
from crcache import invocation
from crcache.cache import definitions
from crcache.cache import heartbeat
from crcache.cache import records
from crcache.cache.claims import Claim, Claimer
from crcache.sources import base
from crcache.store.base import IN_USE, Store


def claim_waiting(store: Store, claimer: Claimer, progress: Any,
                  source: base.Source, count: int, holder: dict[str, Any],
                  wait: float) -> list[Claim]:
    """Queue for ``source`` and claim when first in line and there is
    room; give up after ``wait`` seconds (0: never)."""
    deadline = time.monotonic() + wait if wait else None
    beats = store.heartbeat_timeout if store.shared else None
    me = invocation.identity()
    with store.transaction() as tx:
        me['heartbeat'] = time.time()
        ticket = tx.add_waiter(source.name, count, me)
    task = None
    try:
        delay = 0.01
        while True:
            refusal: exceptions.CapacityError | None = None
            claims = None
            try:
                with store.transaction() as tx:
                    now = time.time()
                    if beats and now - me['heartbeat'] > \
                            heartbeat.interval(beats):
                        me['heartbeat'] = now
                        tx.renew_waiter(ticket, me)
                    queue = tx.waiters(source.name)
                    for waiter in queue:
                        if waiter.id != ticket and heartbeat.waiter_gone(
                                waiter.process, beats, now):
                            tx.remove_waiter(waiter.id)
                    if ticket not in [w.id for w in queue]:
                        # Taken for gone (this process was too busy to
                        # renew its heartbeat in time): queue again.
                        me['heartbeat'] = now
                        ticket = tx.add_waiter(source.name, count, me)
                    # Read again: rows may go meanwhile (by hand).
                    first = tx.waiters(source.name)[:1]
                    if first and first[0].id == ticket:
                        definitions.check(tx, store, claimer.config,
                                          source.name)
                        claims = claimer.claim(tx, source, count, holder)
                        tx.remove_waiter(ticket)
                    else:
                        refusal = exceptions.CapacityError(
                            f"source '{source.name}': waiting behind "
                            'an earlier acquisition')
            except exceptions.CapacityError as err:
                refusal = err
            if claims is not None:  # committed, ticket and all
                ticket = None
                if task is not None:
                    from crcache.progress import duration
                    task.finish(
                        f"got {', '.join(c.instance.name for c in claims)}"
                        f" from source '{source.name}' after waiting "
                        f'{duration(task.elapsed)}')
                return claims
            if deadline is not None and time.monotonic() > deadline:
                raise exceptions.CapacityError(
                    f'{refusal} (waited {wait:g}s)')
            waiting_for = _waiting_for(store, claimer, source, ticket)
            if task is None:
                task = progress.task(waiting_for)
            else:
                task.update(waiting_for)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
    finally:
        if task is not None:
            task.close()
        if ticket is not None:
            with store.transaction() as tx:
                tx.remove_waiter(ticket)


def _waiting_for(store: Store, claimer: Claimer, source: base.Source,
                 ticket: int) -> str:
    """What a queued acquisition waits for, and for whom."""
    with store.reading() as tx:
        queue = tx.waiters(source.name)
        ids = [w.id for w in queue]
        ahead = queue[:ids.index(ticket)] if ticket in ids else []
        if ahead:
            who = ', '.join(records.describe_process(w.process)
                            for w in ahead[:3])
            more = f' and {len(ahead) - 3} more' if len(ahead) > 3 else ''
            return (f"waiting for source '{source.name}' behind "
                    f"{records.plural(len(ahead), 'earlier acquisition')} "
                    f'({who}{more})')
        limit = claimer.exhaustion(tx, source)
        held = [i for i in tx.instances(source.name, [IN_USE])
                if not i.parent]
    text = f"waiting for room in source '{source.name}': {limit}"
    holders: dict[str, list[str]] = {}
    for inst in held:
        holders.setdefault(records.describe_process(inst.holder),
                           []).append(inst.name)
    if holders:
        text += '; in use: ' + ', '.join(
            f"{', '.join(names)} by {who}"
            for who, names in list(holders.items())[:3])
        if len(holders) > 3:
            text += f' and {len(holders) - 3} more holders'
    return text
