"""What crcache's background processes share: where they live, how they
start and claim their socket, and how either end makes sure the other is
the same user.

The agent and the ssh connection holders are started by whichever
command first needs them, run detached, log to a file beside their
socket, and listen on a unix socket in a private directory: ours, mode
0700, not a symbolic link. Two of them may be started for the same socket
at once; only one may serve it, and a socket left by one that died must
not keep the next out.

Whoever talks to such a socket hands over command lines and its open
descriptors, so a client only talks to one that provably belongs to the
same user: :func:`connect` checks the directory, the socket file and the
listening process's ``SO_PEERCRED`` uid before a byte is sent, and a
server checks its client's uid before reading a byte. A request has
:data:`REQUEST_DEADLINE` seconds to arrive whole: a client that stalls is
dropped instead of holding anyone up. What is said once connected is
framed by :mod:`crcache.daemons.messages`.

Where the sockets live (:func:`runtime_dir`): ``$XDG_RUNTIME_DIR/crcache``
when that is ours and private (or not there yet), else
``$XDG_CACHE_HOME/crcache/run`` (``~/.cache/crcache/run``): a shared or
hostile ``XDG_RUNTIME_DIR`` never stops crcache, it just moves its
sockets home, saying so once.

The agent's client uses this module, and it imports builtin modules
only, so this module imports nothing else.
"""

import os
import stat
import sys

#: Seconds a client has, from connecting, to send its whole request.
REQUEST_DEADLINE = 5.0
#: Seconds to wait for a connection to a socket's listen queue.
CONNECT_DEADLINE = 5.0

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Print ``crcache: message`` on stderr, once per process."""
    if message in _warned:
        return
    _warned.add(message)
    try:
        sys.stderr.write(f'crcache: {message}\n')
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def warned() -> list[str]:
    """What this process has warned about (a worker need not repeat it)."""
    return sorted(_warned)


def set_warned(messages: list[str]) -> None:
    """Take over what the client already printed."""
    _warned.update(messages)


# -- where sockets may live -------------------------------------------------

def directory_problem(directory: str) -> str | None:
    """Why ``directory`` is no place for our sockets, or None.

    It must be a real directory (not a symbolic link) of ours that nobody
    else may enter. One that does not exist yet is fine: we create it.
    """
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f'cannot be examined ({err.strerror})'
    if stat.S_ISLNK(st.st_mode):
        return 'is a symbolic link'
    if not stat.S_ISDIR(st.st_mode):
        return 'is not a directory'
    me = os.geteuid()
    if st.st_uid != me:
        return f'is owned by uid {st.st_uid}, not by you (uid {me})'
    if st.st_mode & 0o077:
        return (f'is open to other users (mode '
                f'{stat.S_IMODE(st.st_mode):o}, not 700)')
    return None


def private_dir(directory: str) -> bool:
    """Whether ``directory`` exists, is ours and closed to everyone else."""
    return os.path.isdir(directory) and directory_problem(directory) is None


def runtime_dir(env: dict | None = None) -> str | None:
    """The private directory for crcache's sockets (not created).

    ``$XDG_RUNTIME_DIR/crcache``, unless something unsafe is in the way
    there (another user's directory in a shared ``XDG_RUNTIME_DIR``, or
    one open to others): then ``$XDG_CACHE_HOME/crcache/run``, with one
    line on stderr saying so. None, also said once, when neither is
    usable: the agent and the ssh holders then stay off.
    """
    env = os.environ if env is None else env
    candidates = []
    base = env.get('XDG_RUNTIME_DIR')
    if base and os.path.isabs(base):
        candidates.append(os.path.join(base, 'crcache'))
    cache = env.get('XDG_CACHE_HOME')
    if not (cache and os.path.isabs(cache)):
        cache = os.path.join(env.get('HOME') or os.path.expanduser('~'),
                             '.cache')
    candidates.append(os.path.join(cache, 'crcache', 'run'))
    refused = []
    for directory in candidates:
        problem = directory_problem(directory)
        if problem is None:
            if refused:
                warn_once(f'not keeping sockets in {refused[0]}; using '
                          f'{directory} instead')
            return directory
        refused.append(f'{directory}: it {problem}')
    warn_once('no private directory for the crcache agent and ssh '
              'connection holders (' + '; '.join(refused)
              + '); running without them')
    return None


# -- talking to a socket safely ---------------------------------------------

class Refused(Exception):
    """Something listens (or lies) where our socket should be, and it is
    not provably ours; the message says why."""


def peer(sock) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix socket.

    For a client, that is whoever called ``listen()`` on the socket.
    """
    import _socket
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return (int.from_bytes(creds[0:4], sys.byteorder, signed=True),
            int.from_bytes(creds[4:8], sys.byteorder))


def connect(path: str):  # -> _socket.socket | None
    """Connect to our daemon's socket at ``path``, if it is safe to.

    None when nothing answers there (no socket, a stale one, or one too
    busy to take a connection in time). Raises :class:`Refused` when
    something is there that is not provably ours: the directory is not
    private, the socket file is not ours, or the process listening on it
    is another user's. All of this is checked before anything is sent,
    so a refused socket learns nothing (no command line, no
    descriptors). The socket returned blocks without a deadline; set one
    for each wait.
    """
    try:
        return _open(path)
    except OSError:
        return None


def _open(path: str):  # -> _socket.socket
    """:func:`connect`, raising OSError when nothing answers in time."""
    import _socket
    directory = os.path.dirname(path)
    problem = directory_problem(directory)
    if problem is not None:
        raise Refused(f'{directory} {problem}')
    st = os.lstat(path)
    me = os.geteuid()
    if not stat.S_ISSOCK(st.st_mode):
        raise Refused('it is not a socket')
    if st.st_uid != me:
        raise Refused(f'it is owned by uid {st.st_uid}, not by you '
                      f'(uid {me})')
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_DEADLINE)
        sock.connect(path)
        pid, uid = peer(sock)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    if uid != me:
        sock.close()
        raise Refused(f'it is served by uid {uid} (pid {pid}), not by you '
                      f'(uid {me})')
    return sock


# -- starting and claiming ---------------------------------------------------

def spawn(socket_path: str, module: str, *args: str,
          stdin: bytes = b'') -> None:
    """Run ``python -m module socket_path args...`` detached; never raises.

    The process leaves our session (so our terminal's signals and our
    death do not reach it), is reparented to init, starts in ``/`` with
    stdout on /dev/null and stderr appended to the ``.log`` beside its
    socket. Its stdin is a pipe holding ``stdin``, then EOF (/dev/null if
    that is empty): the way to hand it what must not show in ``ps``.
    """
    if len(stdin) > 65536:  # more than a pipe holds unread
        return
    read_end = -1
    try:
        directory = os.path.dirname(socket_path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not private_dir(directory):
            return
        if stdin:
            read_end, write_end = os.pipe()
            try:
                view = memoryview(stdin)
                while view:
                    view = view[os.write(write_end, view):]
            finally:
                os.close(write_end)
        pid = os.fork()
    except OSError:
        if read_end >= 0:
            os.close(read_end)
        return
    if pid:
        if read_end >= 0:
            os.close(read_end)
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
        os.dup2(read_end if read_end >= 0 else null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        os.closerange(3, 1024)
        os.chdir('/')
        os.execv(sys.executable,
                 [sys.executable, '-m', module, socket_path, *args])
    finally:
        os._exit(0)


def read_stdin(limit: int = 65536) -> bytes:
    """What :func:`spawn` handed us on stdin; stdin is /dev/null after."""
    data = b''
    while len(data) <= limit:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return data


def claim(path: str, backlog: int = 128):  # -> socket.socket | None
    """Listen on ``path`` (mode 0600), unless a live daemon of ours does.

    A socket nobody answers on is stale and replaced; so is one that is
    not ours (another user's file, or served by another user's process:
    only root could have put it in our private directory, and it must
    not keep ours out). A lock file beside it makes the check and the
    replacement one step, so of two processes started together exactly
    one gets the socket.
    """
    import fcntl
    import socket
    if not private_dir(os.path.dirname(path)):
        return None
    lock = os.open(path + '.lock', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _open(path).close()
            return None  # one of ours serves it
        except TimeoutError:
            return None  # one of ours, too busy to answer at once
        except (Refused, OSError):
            pass  # stale, or not ours: replace it
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
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
