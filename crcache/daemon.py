"""What crcache's background processes share: starting and claiming.

The agent and the ssh connection holders are started by whichever
command first needs them, run detached, log to a file beside their
socket, and listen on a unix socket in a private (0700) directory. Two
of them may be started for the same socket at once; only one may serve
it, and a socket left by one that died must not keep the next out.

``spawn`` runs in the agent's client, which imports builtin modules only,
so this module imports nothing else at import time.
"""

from __future__ import annotations

import os
import sys


def private_dir(directory: str) -> bool:
    """Whether ``directory`` is ours and closed to everyone else."""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def spawn(socket_path: str, module: str, *args: str) -> None:
    """Run ``python -m module socket_path args...`` detached; never raises.

    The process leaves our session (so our terminal's signals and our
    death do not reach it), is reparented to init, starts in ``/`` with
    stdin and stdout on /dev/null and stderr appended to the ``.log``
    beside its socket.
    """
    try:
        directory = os.path.dirname(socket_path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not private_dir(directory):
            return
        pid = os.fork()
    except OSError:
        return
    if pid:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(socket_path[:-len('.sock')] + '.log',
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        os.closerange(3, 1024)
        os.chdir('/')
        os.execv(sys.executable,
                 [sys.executable, '-m', module, socket_path, *args])
    finally:
        os._exit(0)


def claim(path: str, backlog: int = 128):  # -> socket.socket | None
    """Listen on ``path`` (mode 0600), unless a live process already does.

    A socket nobody answers on is stale and replaced. A lock file beside
    it makes the check and the replacement one step, so of two processes
    started together exactly one gets the socket.
    """
    import fcntl
    import socket
    lock = os.open(path + '.lock', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return None  # someone serves it
        except OSError:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        finally:
            probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(backlog)
        return listener
    finally:
        os.close(lock)


def still_ours(path: str, inode: int) -> bool:
    """Whether ``path`` is still the socket we bound (inode ``inode``).

    Removed or replaced, nobody can reach us through it any more: time
    to go.
    """
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


# Messages between crcache processes on these sockets: a 4-byte length,
# then marshal data (both ends run the same interpreter); descriptors
# ride along as SCM_RIGHTS on the first byte. (The agent's client frames
# its side by hand, with builtin modules only.)

def send_message(sock, message: object, fds: list[int] | None = None
                 ) -> None:
    """Send one message, with ``fds`` attached if given."""
    import marshal
    import socket
    import struct
    data = marshal.dumps(message)
    payload = len(data).to_bytes(4, 'big') + data
    if fds:
        sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  struct.pack(f'{len(fds)}i', *fds))])
    else:
        sock.sendall(payload)


def receive_message(sock, with_fds: int = 0) -> tuple[object, list[int]]:
    """Receive one message and the descriptors (up to ``with_fds``) sent
    with it. Raises EOFError if the peer hangs up first."""
    import marshal
    import socket
    import struct
    fds: list[int] = []
    if with_fds:
        data, ancdata, _, _ = sock.recvmsg(
            65536, socket.CMSG_SPACE(with_fds * 4))
        for level, kind, blob in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(blob) - len(blob) % 4
                fds.extend(struct.unpack(f'{usable // 4}i', blob[:usable]))
    else:
        data = b''
    try:
        data = _fill(sock, data, 4)
        size = int.from_bytes(data[:4], 'big')
        body = _fill(sock, data[4:], size)
        return marshal.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _fill(sock, data: bytes, size: int) -> bytes:
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise EOFError
        data += more
    return data
