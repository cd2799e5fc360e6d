"""The crcache agent: a warm process that forks one worker per command.

Started in the background by :mod:`crcache.daemons.client` (``python -m
crcache.daemons.agent SOCKET``), it imports everything a command may need once,
then waits on a private unix socket. For each connection it checks that
the peer is the same user before reading anything, reads the request as
it arrives without ever waiting on one client, answers "ready", reads the
client's descriptors (all within :data:`crcache.daemons.ipc.REQUEST_DEADLINE`
seconds of connecting), forks, and the worker takes on the client's
arguments, environment, working directory, umask and stdin/stdout/stderr
(passed as descriptors) before running the command exactly as a direct
invocation would. The agent reports the worker's pid, then its exit
status, to the client. It exits after ``$CRCACHE_AGENT_IDLE`` seconds
(default 120) without a client.

What it loads, and how it tells that a plugin changed since, is
:mod:`crcache.daemons.warmup`; what a forked worker does,
:mod:`crcache.daemons.worker`.

The agent holds no state of its own: the state store is read afresh by
every worker, and the configuration too unless the one the agent loaded
ahead is provably what the files still say (:mod:`crcache.config.prepared`),
so it can never serve stale answers.
What it does keep is open connections to the PostgreSQL databases its
workers use (:mod:`crcache.daemons.keeper`), lent to one worker at a
time and taken back only when the worker leaves them idle, so that a
command over a shared store does not pay for a new server backend.
Nor stale code: the client only reaches an agent started from the same
crcache files and ``sys.path`` (its socket is named after them), and the
agent itself refuses to serve once a file of any installed plugin (the
packages behind crcache's entry points) has changed since it loaded it,
and retires, so that the next command starts a fresh one. A client whose
process state the worker cannot take on (other user or group ids) is
refused too, and runs its command directly.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import time

from crcache.daemons import client as agentclient
from crcache.daemons import ipc as daemon
from crcache.daemons import keeper as keeper_
from crcache.daemons import lending
from crcache.daemons import messages
from crcache.daemons import pending as pending_
from crcache.daemons import spare as spare_
from crcache.daemons import warmup
from crcache.daemons import worker

DEFAULT_IDLE = 120.0


def _identity() -> list[int]:
    """What a worker cannot change about itself: its ids and groups."""
    return [os.getuid(), os.geteuid(), os.getgid(), os.getegid(),
            *sorted(set(os.getgroups()))]


class Agent:
    """Accepts requests on ``path`` and runs each in a forked worker.

    One thread, one poll loop, and nothing in it blocks on a client: a
    connection is checked (same uid) before anything is read from it,
    its request is read without blocking as it arrives, and a request
    not complete :data:`~crcache.daemons.ipc.REQUEST_DEADLINE` seconds after
    connecting is dropped. Descriptors that came with a request that is
    dropped, for whatever reason, are closed.
    """

    #: Requests being read at once; past this, the oldest is dropped.
    MAX_PENDING = 64

    def __init__(self, path: str, idle: float,
                 plugins: dict[str, tuple[int, int]] | None = None) -> None:
        self.path = path
        self.idle = idle
        #: Plugin files as loaded (see
        #: :func:`crcache.daemons.warmup.plugin_files`).
        self.plugins = plugins or {}
        self.identity = _identity()
        self.listener: socket.socket | None = None
        self.workers: dict[int, socket.socket] = {}
        #: Worker pid -> the read end of its report channel.
        self.reports: dict[int, int] = {}
        #: Database connections kept to lend to workers.
        self.keeper = keeper_.Keeper()
        #: A worker forked ahead, waiting for the next request.
        self.spare = spare_.Spare(self)
        self.worker_rss = 0  # KiB: the largest a worker has been
        #: A configuration to load ahead, once no request waits.
        self.config_wanted: tuple[dict, str] | None = None
        self.pending: dict[int, pending_.Pending] = {}
        self._gone: set[socket.socket] = set()
        self._wake_r, self._wake_w = os.pipe()

    # -- lifecycle ---------------------------------------------------------

    def bind(self) -> bool:
        """Listen on the socket; False if another agent already does."""
        self.listener = daemon.claim(self.path)
        if self.listener is None:
            return False
        self.listener.setblocking(False)
        self._inode = os.stat(self.path).st_ino
        return True

    def serve(self) -> None:
        """Answer requests until idle for ``self.idle`` seconds."""
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        gc.collect()
        gc.freeze()  # keep preloaded objects' pages shared with workers
        last_busy = time.monotonic()
        try:
            while True:
                self._reap()
                if self.config_wanted and not self.pending:
                    warmup.prepare_config(self.config_wanted)
                    self.config_wanted = None
                if not self.pending and not self.workers:  # idle
                    self.spare.ensure(warmup.generation
                                      + self.keeper.opened)
                now = time.monotonic()
                self._expire(now)
                self.keeper.expire(now)
                if self.workers:
                    last_busy = now
                timeout = self.idle - (now - last_busy)
                if timeout <= 0 and not self.workers:
                    return
                if not self._still_ours():
                    return
                if self.listener is None:  # retiring: plugins changed
                    if not self.workers:
                        return
                    timeout = 1.0
                for pending in self.pending.values():
                    timeout = min(timeout, pending.deadline - now)
                kept = self.keeper.deadline(now)
                if kept is not None:
                    timeout = min(timeout, kept)
                # poll, not select: any number of descriptors will do.
                poller = select.poll()
                if self.listener is not None:
                    poller.register(self.listener, select.POLLIN)
                poller.register(self._wake_r, select.POLLIN)
                for fd in self.pending:
                    poller.register(fd, select.POLLIN)
                clients = {c.fileno(): c for c in self.workers.values()
                           if c not in self._gone}
                for fd in clients:
                    poller.register(fd, select.POLLIN)
                for fd, events in self.keeper.watched().items():
                    poller.register(fd, events)
                ready = poller.poll(max(timeout, 0.01) * 1000)
                for fd, _ in ready:
                    if self.listener and fd == self.listener.fileno():
                        self._accept()
                        last_busy = time.monotonic()
                    elif fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    elif fd in self.pending:
                        self._read(fd)
                    elif fd in clients:
                        self._client_gone(clients[fd])
                    else:
                        self.keeper.ready(fd)
        finally:
            self.close()
            self.keeper.close()

    def _still_ours(self) -> bool:
        return self.listener is None or daemon.still_ours(self.path,
                                                          self._inode)

    def _refusal(self, request: tuple) -> str | None:
        """Why this agent must not run ``request``, if it must not."""
        if request[9] != self.identity:
            return 'the client has other user or group ids'
        changed = warmup.changed_plugin(self.plugins)
        if changed is not None:
            # Stale code: stop listening (the next command starts a new
            # agent) and go once the workers are done.
            self.close()
            return f'{changed} changed since the agent loaded it'
        return None

    def close(self) -> None:
        self.spare.retire()
        for pending in self.pending.values():
            pending.close()
        self.pending.clear()
        if self.listener is not None:
            if self._still_ours():
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            self.listener.close()
            self.listener = None

    # -- requests ----------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # gone already, or out of descriptors
            return
        try:
            _, uid = daemon.peer(conn)
        except OSError:
            conn.close()
            return
        if uid != os.geteuid():
            conn.close()  # before reading a byte of it
            return
        conn.setblocking(False)
        if len(self.pending) >= self.MAX_PENDING:
            oldest = min(self.pending, key=lambda fd:
                         self.pending[fd].deadline)
            self._drop(oldest)
        self.pending[conn.fileno()] = pending_.Pending(
            conn, time.monotonic() + daemon.REQUEST_DEADLINE)
        self._read(conn.fileno())  # usually all there already

    def _drop(self, fd: int) -> None:
        pending = self.pending.pop(fd, None)
        if pending is not None:
            pending.close()

    def _expire(self, now: float) -> None:
        for fd, pending in list(self.pending.items()):
            if pending.deadline <= now:
                self._drop(fd)

    def _read(self, fd: int) -> None:
        # Two messages: the request, answered with "ready" at once, then
        # the client's descriptors. A client only sends its descriptors
        # to an agent that has just answered, so none are left in the
        # socket of one that is stuck, holding its pipes open.
        pending = self.pending[fd]
        try:
            while not pending.incoming.receive(pending.conn):
                pass
        except BlockingIOError:
            return  # the rest later (or never: then the deadline)
        except Exception:  # hung up, malformed, too big: never ours to fix
            self._drop(fd)
            return
        message = pending.incoming.message
        fds = len(pending.incoming.fds)
        if pending.request is None:
            if (not pending_.valid(message) or fds
                    or not messages.only_request(pending.conn)):
                self._drop(fd)
                return
            refusal = self._refusal(message)
            if refusal is not None:
                self._send(pending.conn, 'refused', refusal)
                self._drop(fd)
                return
            if not self._send(pending.conn, 'ready', None):
                self._drop(fd)
                return
            pending.request = message
            pending.incoming = messages.Incoming(max_fds=3)
            return
        if (message != ('fds',) or fds != 3
                or not messages.only_request(pending.conn)):
            self._drop(fd)
            return
        del self.pending[fd]
        self._start(pending.conn, pending.request,
                    pending.incoming.take_fds())

    def _start(self, conn: socket.socket, request: tuple,
               fds: list[int]) -> None:
        pid = self.spare.take(request, fds)
        if pid is None:
            pid = spare_.fork(
                self, lambda: worker.run(request, fds,
                                         lambda: self.leave(conn)))
        if pid is None:
            self._send(conn, 'refused', 'fork failed')
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        for fd in fds:
            os.close(fd)
        self.workers[pid] = conn
        if not self._send(conn, 'pid', pid):
            # The client cannot hear about it: it will run the command
            # itself, so this one must not carry on.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _send(conn: socket.socket, kind: str, value: object) -> bool:
        try:
            messages.send_message(conn, (kind, value))
            return True
        except OSError:
            return False

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.worker_rss = max(self.worker_rss, usage.ru_maxrss)
            self.spare.reaped(pid)
            report = self.reports.pop(pid, None)
            said = lending.read_reports(report) if report else []
            self.keeper.finished(pid, said)
            self.config_wanted = (warmup.config_wanted(said)
                                  or self.config_wanted)
            if report is not None:
                os.close(report)
            conn = self.workers.pop(pid, None)
            if conn is None:
                continue
            self._gone.discard(conn)
            if os.WIFSIGNALED(status):
                self._send(conn, 'signal', os.WTERMSIG(status))
            else:
                self._send(conn, 'exit', os.waitstatus_to_exitcode(status))
            conn.close()

    def _client_gone(self, conn: socket.socket) -> None:
        # A client never writes after its request, so readable means it
        # went away (killed): the worker dies with it, as it would have
        # in a direct invocation.
        self._gone.add(conn)  # stop watching it: it stays readable
        for pid, worker_conn in list(self.workers.items()):
            if worker_conn is conn:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # -- the worker --------------------------------------------------------

    def leave(self, conn: socket.socket | None = None) -> None:
        """In a worker: close what is the agent's, not the command's."""
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self.listener.close()
        if conn is not None:
            conn.close()
        self.spare.leave()
        for other in self.workers.values():
            other.close()
        for report in self.reports.values():
            os.close(report)  # other workers' report channels
        for pending in self.pending.values():
            pending.close()  # other clients' requests and descriptors


def main(argv: list[str] | None = None) -> int:
    """``python -m crcache.daemons.agent SOCKET``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write('usage: python -m crcache.daemons.agent SOCKET\n')
        return 2
    try:
        idle = float(os.environ.get(agentclient.IDLE_ENV, DEFAULT_IDLE))
    except ValueError:
        idle = DEFAULT_IDLE
    agent = Agent(argv[0], idle)
    if not agent.bind():
        return 0
    agent.plugins = warmup.preload()
    try:
        agent.serve()
    finally:  # SIGTERM too
        warmup.report_memory(agent.worker_rss)
    return 0


if __name__ == '__main__':
    sys.exit(main())
