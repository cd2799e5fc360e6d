"""Forking the agent's workers, and the spare one kept ready.

Forking the agent and building the command-line application in the new
process are the same for every command, and cost several milliseconds
of each (the agent's pages are copied as the worker first writes to
them). So while the agent has nothing else to do, it forks one worker
ahead, a *spare*: it undoes the agent's signal handling, leaves the
agent's sockets, builds the cliff application, and waits on a private
socket pair for a request (:func:`crcache.daemons.worker.spare`). The
next request goes to it, with the client's descriptors, and a new spare
is forked once the agent is idle again. A spare that is out of date (the
agent loaded a configuration or libraries since it was forked) is
retired (while the agent is idle): its socket closed, it exits, and
what it was lent is lent again to the next; a request that comes first
is served by it all the same, as an ordinary worker would serve it.
(The agent counts what it loaded, and the database connections it
opened, which a spare forked before lacks.)

:func:`fork` is how every worker, spare or not, is started: one idle
database connection per database lent to it (:mod:`crcache.daemons.keeper`)
and a pipe for its reports (:mod:`crcache.daemons.lending`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

from crcache.daemons import lending
from crcache.daemons import messages


def fork(agent: Any, child: Callable[[], None]) -> int | None:
    """Fork a worker of ``agent`` that runs ``child`` (which never
    returns); its pid, or None if it could not be forked."""
    lent = agent.keeper.lend()
    channel: list[int] = []  # the worker's reports: read, write
    try:
        channel.extend(os.pipe())
        pid = os.fork()
    except OSError:
        agent.keeper.forked(0, lent)
        for fd in channel:
            os.close(fd)
        return None
    if pid == 0:
        os.close(channel[0])
        agent.keeper.in_worker(lent)
        lending.setup(channel[1], lent)
        child()
    agent.keeper.forked(pid, lent)
    os.close(channel[1])
    os.set_blocking(channel[0], False)
    agent.reports[pid] = channel[0]
    # Both sides set the worker's process group (as shells do), so it
    # exists before the client can signal it.
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    return pid


class Spare:
    """The agent's one spare worker, if it has one."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.pid: int | None = None
        self.ctl: socket.socket | None = None
        self.generation = -1

    def ensure(self, generation: int) -> None:
        """Have an up-to-date spare (the agent is idle and listening)."""
        if self.pid is not None and self.generation != generation:
            self.retire()
        if self.pid is not None or self.agent.listener is None:
            return
        ours, theirs = socket.socketpair()
        from crcache.daemons import worker
        pid = fork(self.agent, lambda: (
            ours.close(), worker.spare(theirs, self.agent.leave)))
        theirs.close()
        if pid is None:
            ours.close()
            return
        self.pid, self.ctl, self.generation = pid, ours, generation

    def take(self, request: tuple, fds: list[int]) -> int | None:
        """Hand ``request`` and the client's ``fds`` to the spare; its pid,
        or None if there is none (the caller forks a worker). An out of
        date spare serves too: it loads what it lacks, as any worker."""
        if self.pid is None:
            return None
        pid, ctl = self.pid, self.ctl
        self.pid = self.ctl = None
        try:
            messages.send_message(ctl, ('run', request), fds)
        except OSError:  # it died: reaped as any worker is
            return None
        finally:
            ctl.close()
        return pid

    def reaped(self, pid: int) -> None:
        """Worker ``pid`` is gone: if it was the spare, there is none."""
        if pid == self.pid:
            self.ctl.close()
            self.pid = self.ctl = None

    def retire(self) -> None:
        """Let the spare go: it exits as its socket closes. What it was
        lent is the agent's again at once: a spare never touches it
        before it has a request."""
        if self.ctl is not None:
            self.ctl.close()
            self.agent.keeper.reclaim(self.pid)
        self.pid = self.ctl = None

    def leave(self) -> None:
        """In another worker: close the agent's end of the spare's socket."""
        if self.ctl is not None:
            self.ctl.close()
