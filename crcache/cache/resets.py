"""Clean instances: ``reset = recreate`` on release, in the background.

A released instance that its source's reserve keeps is, with ``reset =
recreate``, not cached as its last user left it: the release marks it
``discarding`` and starts this module in a process of its own (``python
-m crcache.cache.resets INSTANCE``), then returns. That process takes
the row over, discards the instance (discard.d first, as always) and
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


def _dir(env: Any) -> str:
    return os.path.join(paths.cache_dir(env), DIRECTORY)


def log_path(env: Any) -> str:
    """Where background resets write what they did and why they failed."""
    return os.path.join(_dir(env), 'reset.log')


def start(life: Any, name: str) -> None:
    """Reset instance ``name`` (marked discarding) in the background."""
    env = life.hook_env()
    env.pop('CRCACHE_INSTANCE', None)
    directory = paths.ensure_private_dir(_dir(env))
    log = os.open(os.path.join(directory, 'reset.log'),
                  os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        subprocess.Popen(
            [sys.executable, '-m', 'crcache.cache.resets', name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            start_new_session=True, cwd='/')
    except OSError as err:
        LOG.warning('%s: cannot start its reset (%s); crcache gc discards '
                    'it and crcache fill makes a fresh one', name, err)
    finally:
        os.close(log)


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


def reset(name: str) -> int:
    """Discard ``name`` and fill its source's reserve; the exit status."""
    from crcache import exceptions
    from crcache.cache import Cache
    from crcache.cache import records
    from crcache.store.base import DISCARDING
    records.PURPOSE['reset'] = True
    cache = Cache.open()
    env = cache.config.env
    life = cache._life
    stamp = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    source = None
    try:
        store = life.stores.find(name)
        with store.transaction() as tx:
            inst = tx.get(name)
            if inst is not None and inst.state == DISCARDING:
                source = inst.source
                tx.update(name, op=records.work_record())
        if inst is None:
            print(f'{stamp} {name}: already gone', flush=True)
            return 0
        source = inst.source
        if inst.state == DISCARDING:
            life.discard(inst)
        cache.fill([source])
    except exceptions.CrcacheError as err:
        print(f'{stamp} {name}: reset failed: {err}', flush=True)
        if source is not None:
            _record(env, source, name, str(err))
        return 1
    finally:
        cache.close()
    print(f'{stamp} {name}: reset: discarded, {source} refilled', flush=True)
    _record(env, source, name, None)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m crcache.cache.resets INSTANCE``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write('usage: python -m crcache.cache.resets INSTANCE\n')
        return 2
    logging.basicConfig(level=logging.WARNING,
                        format='%(asctime)s crcache reset: %(message)s')
    return reset(argv[0])


if __name__ == '__main__':
    sys.exit(main())
