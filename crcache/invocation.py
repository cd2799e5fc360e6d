"""Who is running this crcache command, and whether a recorded one lives.

Run directly, the user's process and the one doing the work are the same.
Run through the agent, the worker is a fork of the agent and the process
the user (or a test runner) started is the agent's client: the agent
records the client's pid, parent pid and command line here so that
holders are reported as the user sees them, while the worker's own
identity says who is doing the work (and may have died doing it).

A process is identified by its host, pid and start time, so a pid reused
after a crash is not mistaken for the original. Its host is its name and
its machine id (``/etc/machine-id``), so two machines that happen to
share a host name (cloned VMs, containers) are never taken for one.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

_client: tuple[int, int, list[str]] | None = None
_machine: list[str] = []


def set_client(pid: int, ppid: int, argv: list[str]) -> None:
    """Record the client process a worker acts for."""
    global _client
    _client = (pid, ppid, list(argv))


def pid() -> int:
    """The pid of the process the user started."""
    return _client[0] if _client else os.getpid()


def ppid() -> int:
    """That process's parent pid."""
    return _client[1] if _client else os.getppid()


def argv() -> list[str]:
    """That process's command line."""
    return list(_client[2]) if _client else list(sys.argv)


def start_time(process: int) -> int | None:
    """The start time of a process (clock ticks since boot), if known."""
    try:
        with open(f'/proc/{process}/stat', 'rb') as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after it.
    fields = stat[stat.rindex(b')') + 2:].split()
    if fields[0] == b'Z':
        return None  # a zombie has finished
    return int(fields[19])


def machine_id() -> str:
    """This machine's id (systemd's /etc/machine-id, or D-Bus's)."""
    if not _machine:
        found = ''
        for path in ('/etc/machine-id', '/var/lib/dbus/machine-id'):
            try:
                with open(path) as f:
                    found = f.read().strip()
            except OSError:
                continue
            if found:
                break
        _machine.append(found)
    return _machine[0]


def identity(process: int | None = None) -> dict[str, Any]:
    """host, machine id, pid and start time of a process (default: this
    one)."""
    process = os.getpid() if process is None else process
    return {'host': socket.gethostname(), 'machine': machine_id(),
            'pid': process, 'start': start_time(process)}


def here(record: dict[str, Any] | None) -> bool:
    """Whether a recorded process ran on this very machine."""
    if not record or record.get('host') != socket.gethostname():
        return False
    # Records written before machine ids were kept have none.
    return record.get('machine') in (None, machine_id())


def same_process(record: dict[str, Any] | None,
                 me: dict[str, Any]) -> bool:
    """Whether ``record`` identifies the process ``me`` describes."""
    return bool(record) and all(record.get(key) == me.get(key)
                                for key in ('host', 'machine', 'pid',
                                            'start'))


def alive(record: dict[str, Any] | None) -> bool | None:
    """Whether the identified process still runs; None if unknowable.

    Only processes of this machine can be checked.
    """
    if not here(record):
        return None
    process = record.get('pid')
    if not isinstance(process, int):
        return None
    if os.path.exists('/proc/self/stat'):
        now = start_time(process)
        if now is None:
            return False
        return record.get('start') in (None, now)
    try:
        os.kill(process, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_may_live(record: dict[str, Any] | None) -> bool:
    """Whether the session a recorded process led may still have members.

    Its leader may be gone (killed with the crcache that ran it) while
    what it started runs on. A session id is not reused while any member
    lives, so only a pid that now belongs to a different process proves
    the session gone.
    """
    if not here(record):
        return False
    process = record.get('pid')
    if not isinstance(process, int):
        return False
    return start_time(process) in (None, record.get('start'))
