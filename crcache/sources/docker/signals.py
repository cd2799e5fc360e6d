"""Signals for a command running in a container.

The engine has no way to signal an exec: crcache runs ``kill`` in the
container, for the process group the command's wrapper reported
(:mod:`crcache.transport.remotegroup`).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from crcache.sources import base


class DockerSource(Protocol):
    """What signalling needs of the docker source (typed here, so that
    this module does not import the one that uses it)."""

    def request(self, what: str, method: str, path: str,
                body: dict | None = None) -> Any: ...


class ExecSignals:
    """Signals for an exec's process group, by ``kill`` in the container.

    The exec runs through :mod:`crcache.transport.remotegroup`'s wrapper, whose
    report (taken out of stderr by :attr:`report`) says which group to
    signal; a signal that comes before it is held until it does. An exec
    with a terminal has no report: its process, which leads its group,
    is found from the engine's pid for it (an engine on this machine
    only).
    """

    def __init__(self, source: DockerSource, ref: base.Ref,
                 reporting: bool) -> None:
        from crcache.transport import remotegroup
        self.source = source
        self.ref = ref
        self.reporting = reporting
        self.exec_id: str | None = None
        self.nonce = remotegroup.new_nonce()
        self.report = remotegroup.Report(self.nonce, self._located)
        self.where: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int | None]] = []

    def _located(self, where: tuple[int, str]) -> None:
        with self._lock:
            self.where = where
            pending, self._pending = self._pending, []
        for name, after in pending:
            threading.Thread(target=self.kill, args=(name, after),
                             daemon=True).start()

    def _where(self) -> tuple[int, str] | None:
        if self.where is not None or not self.exec_id:
            return self.where
        # Nothing reported (yet): the engine's pid for the exec, which
        # leads its group, as the container sees it.
        info = self.source.request('inspecting a command', 'GET',
                                    f'/exec/{self.exec_id}/json') or {}
        pid = _namespace_pid(info.get('Pid'))
        return (pid, '-') if pid else None

    def send_signal(self, signum: int) -> None:
        import signal
        self.signal(signal.Signals(signum).name[3:])

    def signal(self, name: str, then_kill_after: int | None = None) -> None:
        with self._lock:
            if (self.where is None and self.reporting
                    and not self.report.done):
                self._pending.append((name, then_kill_after))
                return
        threading.Thread(target=self.kill, args=(name, then_kill_after),
                         daemon=True).start()

    def kill(self, name: str, then_kill_after: int | None = None) -> bool:
        """Run ``kill`` for the group in the container; False if it could
        not be started (the command may have finished)."""
        from crcache.transport import remotegroup
        try:
            where = self._where()
            if where is None:
                return False
            created = self.source.request(
                'signalling a command', 'POST',
                f"/containers/{self.ref['id']}/exec",
                {'Cmd': remotegroup.kill_argv(name, where, then_kill_after),
                 'User': '0'})
            if created is None:
                return False
            self.source.request('signalling a command', 'POST',
                                 f"/exec/{created['Id']}/start",
                                 {'Detach': True, 'Tty': False})
        except Exception:
            return False  # best effort: the command may have finished
        return True

    def abandon(self) -> str:
        from crcache.transport import remotegroup
        if self.kill('HUP', remotegroup.HANG_UP_GRACE):
            return 'is being hung up on'
        return 'may still be running'


def _namespace_pid(host_pid: int | None) -> int | None:
    """The pid a host process has inside its container's namespace."""
    if not host_pid:
        return None
    try:
        with open(f'/proc/{host_pid}/status') as f:
            for line in f:
                if line.startswith('NSpid:'):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None
