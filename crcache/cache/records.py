"""What the cache writes into rows: names, holders and work records.

Small, store-independent helpers shared by the cache's modules: the
shape of instance names, the record of the process holding an instance
(``holder``) or working on it (``op``), and the phrases messages use to
name them.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import time
from typing import Any

from crcache import exceptions
from crcache import invocation
from crcache.store.base import CACHED, DISCARDING, IN_USE, PROVISIONING
from crcache.store.base import Instance

#: Instance names are ``<source>-<n>``; anything else is refused up front.
INSTANCE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\Z')
#: The states of instances that stay (not on their way out).
STAYING = (PROVISIONING, IN_USE, CACHED)


def check_instance_name(name: str) -> str:
    """Refuse names that could not be instances before using them."""
    if not INSTANCE_NAME.match(name):
        raise exceptions.InvalidName(
            f'invalid instance name {name!r}: instance names are '
            '<source>-<number> (letters, digits, ".", "_", "-")')
    return name


#: Added to every work record this process writes: what it works for
#: (``reset``: a background reset, see :mod:`crcache.cache.resets`).
PURPOSE: dict[str, Any] = {}


def work_record(**purpose: Any) -> dict[str, Any]:
    """The ``op`` of a row this process starts working on, from now;
    ``purpose`` (and :data:`PURPOSE`) say what for."""
    return dict(invocation.identity(), since=time.time(), **PURPOSE,
                **purpose)


def resetting(inst: Instance) -> bool:
    """Whether the row is being reset (see :mod:`crcache.cache.resets`)."""
    return bool((inst.op or {}).get('reset'))


def user_name() -> str:
    """This process's user, by name if it has one."""
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid
        return str(os.getuid())


def current_holder() -> dict[str, Any]:
    """Describe the process acquiring instances, for ``status -v``."""
    return {
        'host': socket.gethostname(),
        'machine': invocation.machine_id(),
        'pid': invocation.pid(),
        'ppid': invocation.ppid(),
        'start': invocation.start_time(invocation.pid()),
        'user': user_name(),
        'since': time.time(),
        'argv': invocation.argv(),
    }


def held_elsewhere(holder: dict[str, Any] | None) -> str | None:
    """Who holds an instance, if it is another user or machine."""
    if not holder:
        return None
    if holder.get('user') == user_name() and invocation.here(holder):
        return None
    return (f"{holder.get('user')}@{holder.get('host')} (pid "
            f"{holder.get('pid')})")


def taken_over(inst: Instance) -> bool:
    """Whether another process (crcache gc) is discarding the instance."""
    return (inst.state == DISCARDING
            and not invocation.same_process(inst.op, invocation.identity()))


def plural(n: int, word: str) -> str:
    """``1 instance``, ``2 instances``."""
    return f'{n} {word}' if n == 1 else f'{n} {word}s'


def describe_process(record: dict[str, Any] | None) -> str:
    """A process recorded in the store, as a message names it."""
    if not record:
        return 'an unknown process'
    text = f"pid {record.get('pid')} on {record.get('host')}"
    argv = record.get('argv')
    if argv:
        command = ' '.join([os.path.basename(str(argv[0]))]
                           + [str(a) for a in argv[1:]])
        if len(command) > 60:
            command = command[:57] + '...'
        text += f' ({command})'
    return text
