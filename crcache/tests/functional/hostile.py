"""Hostile peers for crcache's unix sockets, built by the tests themselves.

* :class:`ThrowawayUser`: a local user made with ``useradd`` for one test
  and removed after it (root only): "another user on the machine".
* :class:`PlantedListener`: a process listening on socket paths where
  crcache looks for its agent or an ssh connection holder, logging every
  connection, byte and descriptor it is handed, as an attacker would
  collect them. It can run as another user (binding either before or
  after dropping root, so the socket file and the listening process can
  belong to different users).
* :func:`raw_connect`, :func:`send_raw`: a client that speaks the framing
  of :mod:`crcache.daemons.messages` badly on purpose.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time
import uuid

import fixtures

# Run with sys.executable; logs one JSON object per line to LOG.
_LISTENER = r'''
import json, os, select, socket, sys

spec = json.loads(sys.argv[1])
log = os.open(spec['log'], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def note(**event):
    os.write(log, (json.dumps(event) + '\n').encode())


def bind_all():
    socks = []
    for path in spec['paths']:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o777)
        socks.append(s)
    return socks


listeners = bind_all() if spec['bind_first'] else None
if spec['chown'] is not None:
    for path in spec['paths']:
        os.chown(path, spec['chown'], spec['chown'])
if spec['uid'] is not None:
    os.setgroups([])
    os.setgid(spec['gid'])
    os.setuid(spec['uid'])
if spec['mkdir']:
    os.mkdir(spec['mkdir'])
    os.chmod(spec['mkdir'], 0o777)
if listeners is None:
    listeners = bind_all()
for s in listeners:
    s.listen(16)  # the listening process's uid is what SO_PEERCRED shows
names = {s.fileno(): path for s, path in zip(listeners, spec['paths'])}
conns = {}
sys.stdout.write('ready\n')
sys.stdout.flush()
while True:
    ready, _, _ = select.select(list(listeners) + list(conns), [], [])
    for r in ready:
        if r in listeners:
            conn, _ = r.accept()
            conns[conn] = names[r.fileno()]
            note(event='connect', path=conns[conn])
            continue
        try:
            data, anc, _, _ = r.recvmsg(1 << 20, socket.CMSG_SPACE(64 * 4))
        except OSError:
            data, anc = b'', []
        fds = 0
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for i in range(0, len(blob) - len(blob) % 4, 4):
                    fds += 1
                    os.close(int.from_bytes(blob[i:i + 4], sys.byteorder))
        if data or fds:
            note(event='data', path=conns[r], bytes=len(data), fds=fds,
                 sample=data[:200].decode('latin-1'))
        if not data:
            note(event='eof', path=conns.pop(r))
            r.close()
'''


def require_root(test) -> None:
    """Skip what needs a second uid when we cannot make one."""
    if os.geteuid() != 0:
        test.skipTest('needs root: a second local user (useradd) is '
                      'needed to plant a socket as someone else')


class ThrowawayUser(fixtures.Fixture):
    """A system user of its own for one test; ``uid``, ``gid``, ``name``."""

    def _setUp(self) -> None:
        self.name = f'crct{uuid.uuid4().hex[:10]}'
        for attempt in range(50):  # other tests may hold the passwd lock
            proc = subprocess.run(
                ['useradd', '--system', '--no-create-home', '--user-group',
                 '--shell', '/usr/sbin/nologin', self.name],
                capture_output=True, text=True)
            if proc.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f'useradd {self.name} failed: '
                               f'{proc.stderr.strip()}')
        self.addCleanup(self._remove)
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def _remove(self) -> None:
        for attempt in range(50):
            proc = subprocess.run(['userdel', self.name],
                                  capture_output=True)
            if proc.returncode in (0, 6):  # done, or no such user
                return
            time.sleep(0.1)


class PlantedListener(fixtures.Fixture):
    """Listens on ``paths`` until the test ends, logging what it gets.

    ``user`` (a :class:`ThrowawayUser`): the listening process runs as
    that user. ``bind_first``: the socket files are made while still
    root (so in a directory only we can write to), and only ``listen()``
    happens as ``user``. ``mkdir``: a directory the listener makes
    (mode 0777, as ``user``) before binding in it. ``chown``: a uid to
    give the socket files.
    """

    def __init__(self, paths: list[str], log: str, user=None,
                 bind_first: bool = False, mkdir: str | None = None,
                 chown: int | None = None) -> None:
        super().__init__()
        self.paths = paths
        self.log = log
        self.spec = {
            'paths': paths, 'log': log, 'bind_first': bind_first,
            'mkdir': mkdir, 'chown': chown,
            'uid': user.uid if user else None,
            'gid': user.gid if user else None,
        }

    def _setUp(self) -> None:
        open(self.log, 'w').close()
        self.proc = subprocess.Popen(
            [sys.executable, '-c', _LISTENER, json.dumps(self.spec)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.addCleanup(self._stop)
        line = self.proc.stdout.readline()
        if line != b'ready\n':
            raise RuntimeError('the planted listener did not start')

    def _stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()

    def events(self) -> list[dict]:
        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def received(self) -> list[dict]:
        """Every byte or descriptor anyone handed it."""
        return [e for e in self.events() if e['event'] == 'data']

    def all_hung_up(self) -> bool:
        """Whether every connection it accepted has ended."""
        events = self.events()
        return (sum(e['event'] == 'connect' for e in events)
                == sum(e['event'] == 'eof' for e in events))


def raw_connect(path: str, timeout: float = 10) -> socket.socket:
    """A plain connection to a daemon socket, no checks, no request."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def frame(body: bytes, length: int | None = None) -> bytes:
    """``body`` with the 4-byte length prefix (a false one if given)."""
    return (len(body) if length is None else length).to_bytes(
        4, 'big') + body


def send_raw(sock: socket.socket, data: bytes,
             fds: list[int] | None = None) -> None:
    """Send ``data`` in one go, ``fds`` attached to its first byte."""
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               b''.join(fd.to_bytes(4, sys.byteorder)
                                        for fd in fds))])
    else:
        sock.sendall(data)


def hung_up_on(sock: socket.socket, timeout: float) -> bool:
    """Whether the other end closes ``sock`` within ``timeout`` seconds
    (whatever it sends before is read and dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (TimeoutError, socket.timeout):
            return False


def fd_count(pid: int) -> int:
    """How many descriptors process ``pid`` has open."""
    return len(os.listdir(f'/proc/{pid}/fd'))


def settled_fd_count(pid: int, quiet: float = 0.5,
                     timeout: float = 10) -> int:
    """:func:`fd_count` once it has not changed for ``quiet`` seconds
    (what a request just served had open is closed by then)."""
    deadline = time.monotonic() + timeout
    count, since = fd_count(pid), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.05)
        now = fd_count(pid)
        if now != count:
            count, since = now, time.monotonic()
    return count
