"""The thin client side of the crcache agent.

Importing cliff, stevedore and oslo.config costs about seven times the
start-up of Python itself, on every invocation. The agent (see
:mod:`crcache.daemons.agent`) pays that once: it stays up while it is
being used
and forks a warm copy of itself for each command. This module is what
every ``crcache`` invocation runs first; it imports nothing beyond
builtin modules, hands the agent its arguments, environment, working
directory and its stdin/stdout/stderr descriptors, forwards signals to the
forked command and exits with its status.

Nothing has to be started or stopped: when no agent answers, the command
runs directly in this process and an agent is started in the background
for the next one; it exits by itself after ``$CRCACHE_AGENT_IDLE`` seconds
(default 120) without work. ``CRCACHE_AGENT=0`` turns it off. Commands
whose stdin is a terminal always run directly, so interactive shells and
job control behave exactly as without an agent.

The command line, environment and descriptors go only to an agent that
provably runs as the same user: the client checks the socket's directory,
the socket file and the listening process's uid before sending anything
(:func:`crcache.daemons.ipc.connect`), and says so on stderr when it ignores a
socket. An agent that does not take the request within
:data:`ANSWER_DEADLINE` seconds is given up on, also said, and the
command runs directly.
"""

import marshal
import os
import sys

import _signal
import _socket

PROTOCOL = 3
#: Seconds the agent has to answer each step (it answers at once).
ANSWER_DEADLINE = 10.0
#: Environment variable that turns the agent off (0, no, off, false).
DISABLE_ENV = 'CRCACHE_AGENT'
IDLE_ENV = 'CRCACHE_AGENT_IDLE'
_FORWARD = ('SIGINT', 'SIGQUIT', 'SIGTERM', 'SIGHUP', 'SIGUSR1', 'SIGUSR2')
_FORWARDED = [getattr(_signal, name) for name in _FORWARD]
# A terminal sends these to its whole foreground process group; the agent's
# worker is in a group of its own, so they go to that group.
_TO_GROUP = ('SIGINT', 'SIGQUIT')


def enabled(env: dict | None = None) -> bool:
    """Whether the agent may be used for this invocation."""
    env = os.environ if env is None else env
    if env.get(DISABLE_ENV, '').lower() in ('0', 'no', 'off', 'false'):
        return False
    try:
        return not os.isatty(0)
    except OSError:
        return True


def runtime_dir(env: dict | None = None) -> str | None:
    """The private directory that holds agent sockets (not created); see
    :func:`crcache.daemons.ipc.runtime_dir`."""
    from crcache.daemons import ipc as daemon
    return daemon.runtime_dir(env)


#: A Mersenne prime: the modulus of :func:`fingerprint`'s checksum.
_PRIME = (1 << 61) - 1


def fingerprint() -> str:
    """Identify the code an agent runs, so a changed install gets a new one.

    It covers the interpreter, every file of the crcache package and the
    directories on sys.path (where new plugins appear). File times and
    sizes are enough: this guards against staleness, not attackers.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    parts = [sys.executable, sys.version, package]
    stack = [package]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name == '__pycache__' or entry.name == 'tests':
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.name.endswith('.py'):
                    st = entry.stat()
                    parts.append(f'{entry.path}:{st.st_mtime_ns}:'
                                 f'{st.st_size}')
    for entry in sys.path:
        try:
            parts.append(f'{entry}:{os.stat(entry or ".").st_mtime_ns}')
        except OSError:
            parts.append(entry)
    parts.sort()
    # A checksum by integer arithmetic: zlib or hashlib would cost an
    # extension module's load (a third of a millisecond) on every command.
    data = '\0'.join(parts).encode('utf-8', 'surrogateescape')
    return '%08x' % (int.from_bytes(data, 'little') % _PRIME % (1 << 32))


def socket_path(env: dict | None = None) -> str | None:
    """Where this installation's agent listens; None if nowhere safe."""
    directory = runtime_dir(env)
    if directory is None:
        return None
    return os.path.join(directory, f'agent-{fingerprint()}.sock')


def _recv_exact(sock: '_socket.socket', size: int) -> bytes:
    data = b''
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _std_fds() -> list[int]:
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:  # closed: give the command /dev/null instead
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def run(argv: list[str]) -> int | None:
    """Run ``argv`` through the agent; None if it must run directly."""
    if not enabled():
        return None
    path = socket_path()
    if path is None or len(path.encode()) > 100:  # AF_UNIX path limit
        return None
    from crcache.daemons import ipc as daemon
    try:
        sock = daemon.connect(path)
    except daemon.Refused as why:
        sys.stderr.write(f'crcache: ignoring agent socket {path}: {why}; '
                         'running directly\n')
        sock = None
    if sock is None:
        spawn(path)
        return None
    try:
        cwd = os.getcwd()
    except OSError:
        sock.close()
        return None
    mask = os.umask(0)
    os.umask(mask)
    ignored = [signum for signum in _FORWARDED
               if _signal.getsignal(signum) == _signal.SIG_IGN]
    identity = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(),
                *sorted(set(os.getgroups()))]
    request = marshal.dumps((PROTOCOL, list(argv), dict(os.environ), cwd,
                             mask, os.getpid(), os.getppid(), sys.argv[0],
                             daemon.warned(), identity, ignored))
    forwarder = _Forwarder(ignored)
    try:
        return _wait(sock, forwarder, path,
                     len(request).to_bytes(4, 'big') + request)
    finally:
        sock.close()


def _send_fds(sock: '_socket.socket') -> None:
    """Our stdin, stdout and stderr, for the worker to take on."""
    fds = _std_fds()
    message = marshal.dumps(('fds',))
    sock.sendmsg(
        [len(message).to_bytes(4, 'big') + message],
        [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
          b''.join(fd.to_bytes(4, sys.byteorder, signed=True)
                   for fd in fds))])


class _Forwarder:
    """Pass our signals on to the worker, once we know who it is.

    Handlers are installed before the request is sent: a signal that
    arrives before the worker's pid does is held and delivered then.
    """

    def __init__(self, ignored: list[int]) -> None:
        self.pid = 0
        self.pending: list[int] = []
        self.group = {getattr(_signal, name) for name in _TO_GROUP}
        # A signal we were started ignoring (nohup) stays ignored: the
        # worker ignores it too.
        self.forwarded = [s for s in _FORWARDED if s not in ignored]
        for signum in self.forwarded:
            _signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: object) -> None:
        if not self.pid:
            self.pending.append(signum)
            return
        try:
            if signum in self.group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except OSError:
            pass

    def started(self, pid: int) -> None:
        self.pid = pid
        pending, self.pending = self.pending, []
        for signum in pending:
            self.handle(signum, None)

    def restore(self) -> None:
        for signum in self.forwarded:
            _signal.signal(signum, _signal.SIG_DFL)


def _nothing_ran(forwarder: _Forwarder) -> None:
    forwarder.restore()
    if forwarder.pending:
        # Asked to stop before anything ran: do so.
        os.kill(os.getpid(), forwarder.pending[0])
    return None  # the caller runs the command directly


def _wait(sock: '_socket.socket', forwarder: _Forwarder, path: str,
          request: bytes) -> int | None:
    # The agent answers each step at once: "ready" to the request (only
    # then do our descriptors go, so a stuck agent never holds them),
    # then the worker's pid. One that does not is stuck, and the command
    # runs directly instead; hanging up first makes sure it never runs
    # there too (the agent checks before each step, and kills a worker
    # it cannot report).
    sock.settimeout(ANSWER_DEADLINE)
    while True:
        try:
            if request:
                sock.sendall(request)
                request = b''
            header = _recv_exact(sock, 4)
            kind, value = marshal.loads(
                _recv_exact(sock, int.from_bytes(header, 'big')))
            if kind == 'ready':
                _send_fds(sock)
                continue
        except TimeoutError:
            sys.stderr.write(
                f'crcache: the crcache agent ({path}) did not answer within '
                f'{ANSWER_DEADLINE:g}s; running directly\n')
            return _nothing_ran(forwarder)
        except (EOFError, OSError, ValueError, TypeError):
            if not forwarder.pid:
                return _nothing_ran(forwarder)
            sys.stderr.write('crcache: lost contact with the crcache '
                             'agent while the command ran\n')
            return 255
        if kind == 'pid':
            sock.settimeout(None)
            forwarder.started(value)
        elif kind == 'refused':
            return _nothing_ran(forwarder)
        elif kind == 'exit':
            return value
        elif kind == 'signal':
            # Die the way the command's process died.
            forwarder.restore()
            sys.stdout.flush()
            os.kill(os.getpid(), value)
            return 128 + value


def spawn(path: str) -> None:
    """Start an agent for ``path`` in the background; never raises."""
    from crcache.daemons import ipc as daemon
    daemon.spawn(path, 'crcache.daemons.agent')
