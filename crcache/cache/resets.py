"""Clean instances: ``reset = recreate`` on release, in the background.

A released instance that its source's reserve keeps is, with ``reset =
recreate``, not cached as its last user left it: the release marks it
``discarding``, starts ``crcache fill --replace INSTANCE`` in the
background (through the agent, where there is one) and returns. That
takes the row over, discards the instance (discard.d first, as always) and
fills the source's reserve again, from the capture when the source has
one (``snapshot = provisioned``), so the next acquire gets a pristine,
warm instance.

Rows it works on carry ``reset`` in their work record: an acquire that
finds the source at its maximum while a reset is under way waits for
it (it takes no longer than a cold start) instead of failing. A reset
that fails leaves nothing in the reserve; its error is written to the
reset log (:func:`log_path`) and to a per-source file that ``crcache
status`` reports until a later reset of that source succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from crcache import paths

LOG = logging.getLogger(__name__)
#: The reset log and failure files live here, in crcache's private
#: state directory.
DIRECTORY = 'resets'
#: Set (to 1) in the environment of a reset started by a release: it
#: then yields to foreground work (see :func:`yield_to_foreground`).
BACKGROUND_ENV = 'CRCACHE_BACKGROUND_RESET'
#: Seconds a background reset waits before it starts: the command that
#: usually follows a release (the next acquire) runs meanwhile, without
#: sharing the machine with the reset's start nor with a container's
#: removal and creation.
PAUSE = 0.5
#: The niceness a background reset adds to its own.
NICENESS = 10


def _dir(env: Any) -> str:
    return os.path.join(paths.cache_dir(env), DIRECTORY)


def log_path(env: Any) -> str:
    """Where background resets write what they did and why they failed."""
    return os.path.join(_dir(env), 'reset.log')


def _open_log(env: Any) -> int:
    """The reset log, opened to append (private, made if need be)."""
    paths.ensure_private_dir(_dir(env))
    return os.open(log_path(env), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                   0o600)


def start(life: Any, name: str) -> None:
    """Reset instance ``name`` (marked discarding) in the background:
    ``crcache fill --replace NAME``, through the agent where there is
    one (a warm worker, not a cold interpreter), its output appended to
    the reset log."""
    env = life.hook_env()
    env.pop('CRCACHE_INSTANCE', None)
    env[BACKGROUND_ENV] = '1'
    log = _open_log(env)
    try:
        # After a pause (see PAUSE), by sh, whose pid the command keeps.
        proc = subprocess.Popen(
            ['/bin/sh', '-c', 'sleep "$0" && exec "$@"', str(PAUSE),
             sys.executable, '-m', 'crcache', 'fill', '--replace', name,
             '-f', 'value', '-c', 'name'],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            start_new_session=True, cwd='/')
    except OSError as err:
        LOG.warning('%s: cannot start its reset (%s); crcache gc discards '
                    'it and crcache fill makes a fresh one', name, err)
        return
    finally:
        os.close(log)
    # The row is the reset's from now: gc leaves it alone while that
    # process lives (it may not have taken the row over yet).
    from crcache import invocation
    from crcache.store.base import DISCARDING
    with life.stores.find(name).transaction() as tx:
        inst = tx.get(name)
        if inst is not None and inst.state == DISCARDING:
            tx.update(name, op=dict(invocation.identity(proc.pid),
                                    since=time.time(), reset=True))


def failures(env: Any, sources: list[str]) -> list[str]:
    """What ``crcache status`` says about resets of ``sources`` that
    failed (and that no later reset made good)."""
    found = []
    for source in sources:
        try:
            with open(os.path.join(_dir(env), f'{source}.failed')) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        when = time.strftime('%Y-%m-%dT%H:%M:%SZ',
                             time.gmtime(record.get('time', 0)))
        found.append(f"source '{source}': the reset of "
                     f"{record.get('instance')} failed at {when}: "
                     f"{record.get('error')} (see {log_path(env)}); its "
                     'reserve is short until crcache fill or the next reset')
    return found


def _record(env: Any, source: str, instance: str,
            error: str | None) -> None:
    path = os.path.join(_dir(env), f'{source}.failed')
    if error is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    fd = os.open(path + '.tmp', os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o600)
    with os.fdopen(fd, 'w') as f:
        json.dump({'time': time.time(), 'instance': instance,
                   'error': error}, f)
    os.replace(path + '.tmp', path)


def replace(life: Any, name: str) -> str:
    """Discard ``name`` (cached, or left discarding by a release for its
    reset) for a fresh one to take its place; return its source.

    The row is taken over by this process first, so gc leaves it alone
    while the discard runs; every work record this process writes from
    now on says ``reset``.
    """
    from crcache import exceptions
    from crcache.cache import records
    from crcache.store.base import CACHED, DISCARDING
    records.PURPOSE['reset'] = True
    records.check_instance_name(name)
    store = life.stores.find(name)
    with store.transaction() as tx:
        inst = tx.get(name)
        if inst is None:
            raise exceptions.UnknownInstance(
                name, [i.name for i in tx.instances()])
        if inst.parent or not (inst.state == CACHED or (
                inst.state == DISCARDING and records.resetting(inst))):
            held = f', held by {inst.parent}' if inst.parent else ''
            raise exceptions.InstanceStateError(
                f"instance '{name}' is {inst.state}{held}: only a cached "
                'instance (or one a release left to be reset) can be '
                'replaced')
        tx.update(name, state=DISCARDING, op=records.work_record())
    inst.state = DISCARDING
    life.discard(inst)
    return inst.source


def yield_to_foreground(env: Any) -> None:
    """In a reset a release started (:data:`BACKGROUND_ENV`), which
    starts after a :data:`PAUSE`: lower this process's priority, so that
    foreground commands come first."""
    if env.get(BACKGROUND_ENV) != '1':
        return
    try:
        os.nice(NICENESS)
    except OSError:
        pass


def replace_and_fill(life: Any, provisioner: Any, names: list[str],
                     sources: list[str]) -> list[Any]:
    """``crcache fill --replace NAMES [SOURCES]``: replace each named
    instance (:func:`replace`), then fill the reserves of their sources
    and of ``sources``; each reset's outcome is recorded (see
    :func:`failures`)."""
    from crcache import exceptions
    env = life.config.env
    yield_to_foreground(env)
    done: list[tuple[str, str]] = []
    try:
        for name in names:
            try:
                source = replace(life, name)
            except exceptions.CrcacheError as err:
                source = _source_of(life, name)
                if source is not None:
                    _ended(env, source, name, str(err))
                raise
            done.append((source, name))
        made = provisioner.fill(list(dict.fromkeys(
            [*sources, *(source for source, _ in done)])))
    except exceptions.CrcacheError as err:
        for source, name in done:
            _ended(env, source, name, str(err))
        raise
    for source, name in done:
        fresh = [i.name for i in made if i.source == source]
        _ended(env, source, name, None, fresh)
    return made


def _source_of(life: Any, name: str) -> str | None:
    try:
        with life.stores.find(name).reading() as tx:
            inst = tx.get(name)
    except Exception:
        return None
    return inst.source if inst is not None else None


def _ended(env: Any, source: str, instance: str, error: str | None,
           fresh: list[str] | None = None) -> None:
    """Record how the reset of ``instance`` ended: a line in the reset
    log, and the failure file :func:`failures` reads."""
    stamp = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    if error:
        line = f'{stamp} {instance}: reset failed: {error}'
    else:
        line = (f'{stamp} {instance}: reset: discarded, {source} refilled'
                + (f' ({", ".join(fresh)})' if fresh else ''))
    try:
        with os.fdopen(_open_log(env), 'a') as f:
            f.write(line + '\n')
        _record(env, source, instance, error)
    except OSError as err:
        LOG.warning('cannot record the reset of %s in %s: %s', instance,
                    _dir(env), err)
