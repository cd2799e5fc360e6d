"""Who is running this crcache command.

Run directly, that is this process. Run through the agent, the worker
process is a fork of the agent, and the process the user (or a test
runner) started is the agent's client: the agent records the client's pid,
parent pid and command line here so that holders are reported as the user
sees them.
"""

from __future__ import annotations

import os
import sys

_client: tuple[int, int, list[str]] | None = None


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
