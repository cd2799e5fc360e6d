"""crcache's Python API: acquire instances, run on them, copy, release.

Everything the ``crcache`` command does, for programs that would rather
not run it and parse its output: test runners, build tools, notebooks::

    import crcache

    client = crcache.Client()
    with client.acquire('pool', count=3) as instances:
        for inst in instances:
            result = inst.run(['make', 'check'], capture_output=True)
            print(inst.name, result.returncode, result.stdout)
    # released here, even when the block raised

A :class:`Client` finds the configuration and the state stores as the
command line does (``CRCACHE_CONFIG_PATH``, else ``$XDG_CONFIG_HOME/crcache``
and ``./.crcache``; state under ``$XDG_CACHE_HOME/crcache``), in
``os.environ`` or in the environment it is given, and shares them with
every ``crcache`` command and every other client: whichever process
asks, an instance is handed to one holder at a time, and an acquisition
gets everything it asked for or nothing. The command line itself goes
through this module (``crcache acquire``, ``release``, ``run``, ``cp``,
``fill`` and ``gc``), so both behave the same.

Threads
    A client may be used from several threads at once, each working on
    instances of its own: running commands, copying files, acquiring and
    releasing. Only a command run from the main thread is passed the
    signals the process receives (SIGINT, SIGTERM, SIGHUP, SIGQUIT), as
    ``crcache run`` passes them: the first Ctrl-C goes to the command,
    which may stop as it likes, a second one gives up on it with
    :class:`KeyboardInterrupt`. Python lets no other thread install
    signal handlers.

Processes
    Any number of processes may use the same instances and sources at
    once, each with a client of its own. A client carried into a child
    process by ``fork`` (``multiprocessing``) opens the stores afresh
    there, as a new client would.

Errors
    Failures crcache reports are :class:`~crcache.exceptions.CrcacheError`
    subclasses (see :mod:`crcache.exceptions`), whose ``str()`` is the
    one line the command line prints: among them
    :class:`~crcache.exceptions.UnknownSource`,
    :class:`~crcache.exceptions.ConfigError`,
    :class:`~crcache.exceptions.CapacityError` (no room, and ``wait``
    not given or run out), :class:`~crcache.exceptions.UnknownInstance`,
    :class:`~crcache.exceptions.InstanceStateError` (not acquired, or
    released), :class:`~crcache.exceptions.SourceError` (the backend
    failed), :class:`~crcache.exceptions.CopyError` and
    :class:`~crcache.exceptions.InstancePathError`,
    :class:`~crcache.exceptions.PartialFailure` (some of several
    releases failed; the others were done),
    :class:`~crcache.exceptions.StoreError` and
    :class:`~crcache.exceptions.CommandFailed` (``run(..., check=True)``).
    Arguments of the wrong type or value raise :class:`TypeError` or
    :class:`ValueError`, as elsewhere in Python.

Stability
    What ``crcache.__all__`` lists is the API. It is versioned with the
    package (``crcache.__version__``): a change to it comes with a
    release note, and nothing is removed or changed incompatibly without
    a release that first deprecates it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import subprocess
import threading
from collections.abc import (Callable, Iterable, Iterator, Mapping,
                             Sequence)
from typing import IO, TYPE_CHECKING, Any, Union, overload

from crcache import exceptions

if TYPE_CHECKING:
    from crcache.cache import Cache

__all__ = ['Acquisition', 'Client', 'GcAction', 'Instance', 'InstanceInfo',
           'SourceInfo']

#: What ``stdin`` may be: None (this process's stdin), bytes to feed,
#: a descriptor, a file object with ``fileno()``, or subprocess.DEVNULL.
Input = Union[None, bytes, bytearray, memoryview, int, IO[Any]]
#: What ``stdout``/``stderr`` may be: None (this process's), a
#: descriptor, a file object, subprocess.DEVNULL or subprocess.PIPE
#: (``stderr`` also subprocess.STDOUT).
Output = Union[None, int, IO[Any]]
#: A path, as ``os.fspath`` takes it.
PathLike = Union[str, 'os.PathLike[str]']


# -- results ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    """One instance as the state store knows it, at the time it was read.

    ``state`` is ``provisioning``, ``cached``, ``in-use`` or
    ``discarding``. ``parent`` names the pool instance holding this one,
    ``child`` the instance a pool instance wraps. ``holder`` describes the
    process that acquired it (``user``, ``host``, ``machine``, ``pid``,
    ``ppid``, ``since``, ``argv``), as ``crcache status -v`` shows it.
    Times are seconds since the epoch.
    """

    name: str
    source: str
    state: str
    concurrency: int | None = None
    store: str | None = None
    parent: str | None = None
    child: str | None = None
    holder: Mapping[str, Any] | None = dataclasses.field(
        default=None, compare=False)
    lease_expires: float | None = None
    created: float = 0.0
    updated: float = 0.0

    @classmethod
    def _of(cls, inst: Any) -> 'InstanceInfo':
        """From the store's record."""
        return cls(inst.name, inst.source, inst.state, inst.concurrency,
                   inst.store, inst.parent, inst.child,
                   dict(inst.holder) if inst.holder else None,
                   inst.lease_expires, inst.created, inst.updated)


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """One source and how many instances it has in each state.

    ``type`` is its source type; ``maximum`` the most instances it may
    have at once (0: no limit); ``reserve`` how many it keeps cached;
    ``children`` the sources a pool draws from; ``store`` the state store
    keeping its instances. ``error`` says why the source cannot be used
    (its configuration is broken, its store cannot be reached, it is no
    longer configured), else None; the fields it makes unknown are None.
    """

    name: str
    type: str | None
    maximum: int | None
    reserve: int | None
    children: tuple[str, ...] = ()
    store: str | None = None
    error: str | None = None
    cached: int = 0
    in_use: int = 0
    provisioning: int = 0
    discarding: int = 0

    @property
    def live(self) -> int:
        """Every instance it has, whatever its state."""
        return self.cached + self.in_use + self.provisioning + self.discarding

    @property
    def available(self) -> int | None:
        """Instances an acquire could get now; None when unlimited."""
        if not self.maximum:
            return None
        return self.cached + max(0, self.maximum - self.live)

    @classmethod
    def _of(cls, status: Any) -> 'SourceInfo':
        return cls(status.name, status.type, status.maximum, status.reserve,
                   tuple(status.children), status.store, status.error,
                   status.cached, status.in_use, status.provisioning,
                   status.discarding)


@dataclasses.dataclass(frozen=True)
class GcAction:
    """One thing a garbage collection pass did or found.

    ``action`` is ``discarded``, ``kept`` (cannot be discarded now; the
    reason says why), ``forgotten``, ``leaked`` (a backend resource the
    store does not know; ``instance`` is its id), ``destroyed`` (a leak,
    with ``leaks=True``) or ``failed``. ``instance`` is None for a row
    about a whole source.
    """

    instance: str | None
    source: str
    action: str
    reason: str


# -- the client -------------------------------------------------------------

class Client:
    """The way in: acquire instances, and see and tend the sources.

    :param config_path: the configuration roots to use instead of the
        search path, first one first: a list of directories, or one
        string of them separated by ``:`` (as ``CRCACHE_CONFIG_PATH``).
        Each must exist.
    :param env: the environment in which the configuration and the state
        stores are looked for (``CRCACHE_CONFIG_PATH``, ``HOME``,
        ``XDG_CONFIG_HOME``, ``XDG_CACHE_HOME``), and which provision.d
        and discard.d scripts run with; default ``os.environ``. Source
        drivers still read what they need (``SSH_AUTH_SOCK``,
        ``DOCKER_HOST``) from ``os.environ``.

    The configuration is read, and the stores are opened, when first
    needed, and kept: a client made before the configuration changed
    does not see the change. :meth:`close` (or leaving a ``with Client()
    as client:`` block) lets go of the stores; a closed client opens
    them again if used.
    """

    def __init__(self, config_path: str | Sequence[PathLike] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        if isinstance(config_path, str):
            roots: list[str] | None = [p for p in config_path.split(':')
                                       if p]
        elif config_path is not None:
            roots = [os.fspath(p) for p in config_path]
        else:
            roots = None
        if roots is not None:
            roots = [os.path.abspath(root) for root in roots]
        self._roots = roots
        self._env = os.environ if env is None else dict(env)
        self._cache: Cache | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @classmethod
    def _for(cls, opener: Callable[[], 'Cache']) -> 'Client':
        """A client using the cache ``opener`` returns when first needed
        (the command line's, with its progress reporting)."""
        client = cls()
        client._opener = opener
        return client

    _opener: Callable[[], 'Cache'] | None = None

    def _opened(self) -> 'Cache':
        """The cache, opened on first use."""
        with self._lock:
            if self._cache is not None and self._pid != os.getpid():
                # Forked: the parent's connections are the parent's.
                self._cache = None
            self._pid = os.getpid()
            if self._cache is None and self._opener is not None:
                self._cache = self._opener()
            if self._cache is None:
                from crcache.cache import Cache
                from crcache.config import Config
                for root in self._roots or ():
                    if not os.path.isdir(root):
                        raise exceptions.ConfigError(
                            root, 'no such directory (named in the '
                            "client's config_path)")
                self._cache = Cache(Config(self._roots, self._env))
            return self._cache

    def close(self) -> None:
        """Let go of the state stores (connections, heartbeats)."""
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is not None and self._opener is None:
            cache.close()  # (a cache it was lent is its owner's to close)

    def __enter__(self) -> 'Client':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ':'.join(self._roots) if self._roots is not None else \
            'the search path'
        return f'<crcache.Client configuration from {where}>'

    # -- instances ------------------------------------------------------

    def acquire(self, source: str = 'local', count: int = 1, *,
                wait: float | None = None,
                lease: float | None = None) -> 'Acquisition':
        """Take ``count`` instances of ``source``, all or none.

        Cached instances are handed out first; the rest are provisioned
        in parallel. Returns an :class:`Acquisition`: a sequence of
        :class:`Instance` that releases them all when used as a context
        manager, on leaving the block; otherwise they stay acquired until
        released (:meth:`Acquisition.release`, :meth:`release`, ``crcache
        release``) or reclaimed when their lease expires.

        :param wait: when the source has no room: None or 0 to fail at
            once with :class:`~crcache.exceptions.CapacityError` (having
            changed nothing), else how many seconds to queue for room
            (first come, first served; ``math.inf``: for ever).
        :param lease: seconds after which ``crcache gc`` may reclaim
            instances that were not released (0 or ``math.inf``: never;
            default: the source's ``lease`` key).
        :raises ~crcache.exceptions.UnknownSource: ``source`` is not
            configured.
        :raises ~crcache.exceptions.CapacityError: there is no room.
        :raises ~crcache.exceptions.SourceError: provisioning failed
            (nothing stays acquired).
        """
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f'count must be an int, not {count!r}')
        cache_wait: float | None = None
        if wait is not None:
            wait = _seconds('wait', wait)
            if math.isinf(wait):
                cache_wait = 0.0  # the cache's "for ever"
            elif wait > 0:
                cache_wait = wait
        if lease is not None:
            lease = _seconds('lease', lease)
            if math.isinf(lease):
                lease = 0.0
        found = self._opened().acquire(source, count, wait=cache_wait,
                                       lease=lease)
        return Acquisition(self, [
            Instance(self, inst.name, inst.source, inst.concurrency)
            for inst in found])

    def instance(self, name: str) -> 'Instance':
        """A handle on the instance called ``name``, acquired elsewhere
        (by ``crcache acquire``, or by another client).

        Nothing is read until it is used: an unknown name raises
        :class:`~crcache.exceptions.UnknownInstance` then.

        :raises ~crcache.exceptions.InvalidName: ``name`` cannot be an
            instance's name.
        """
        from crcache.cache import check_instance_name
        check_instance_name(name)
        return Instance(self, name)

    def release(self, names: str | Iterable[str], *,
                force: bool = False) -> None:
        """Release instances by name (as ``crcache release`` does).

        Each is kept cached if its source's ``reserve`` wants it, and
        discarded otherwise. Every name is tried; failures are raised
        together at the end, as
        :class:`~crcache.exceptions.PartialFailure` when some of several
        failed (or the one error, for one name). An instance acquired by
        another user or machine (in a shared store) is refused unless
        ``force``.
        """
        if isinstance(names, str):
            names = [names]
        names = list(names)
        if names:
            self._opened().release(names, force=force)

    def copy(self, src: str, dst: str, recursive: bool = False) -> None:
        """Copy between ``[INSTANCE:]PATH`` locations, as ``crcache cp``.

        ``INSTANCE:PATH`` is a path on an acquired instance (a colon
        before any slash, as scp has it); at least one side must be one.
        Prefer :meth:`Instance.copy_in` and :meth:`Instance.copy_out`,
        which parse nothing.
        """
        self._opened().copy(os.fspath(src), os.fspath(dst), recursive)

    # -- reports --------------------------------------------------------

    def sources(self) -> list[str]:
        """The names of the configured sources (``local`` included, and
        broken ones), sorted. Reads only the configuration."""
        return list(self._opened().config.names())

    def status(self, sources: Iterable[str] | None = None
               ) -> list[SourceInfo]:
        """Each source's instance counts, as ``crcache status`` shows.

        Without ``sources``: every configured source, and every source
        the stores still have instances of.

        :raises ~crcache.exceptions.UnknownSource: for a name neither
            configured nor in a store.
        """
        selected = _names(sources)
        return [SourceInfo._of(s)
                for s in self._opened().status(selected or None)]

    def instances(self, sources: Iterable[str] | None = None,
                  states: Iterable[str] | None = None
                  ) -> list[InstanceInfo]:
        """The instances the stores hold, by source and number.

        :param sources: only these sources' (default: every source's).
        :param states: only those in these states (``provisioning``,
            ``cached``, ``in-use``, ``discarding``).
        """
        wanted = _names(sources) if sources is not None else None
        kept = set(_names(states)) if states is not None else None
        return [InstanceInfo._of(i)
                for i in self._opened().instances(wanted)
                if kept is None or i.state in kept]

    # -- upkeep ---------------------------------------------------------

    def fill(self, sources: Iterable[str] | None = None
             ) -> list[InstanceInfo]:
        """Provision cached instances until sources hold their
        ``reserve`` (default: every source with one), as ``crcache
        fill``. Returns the instances made; failures are raised together
        once every other instance was tried."""
        selected = _names(sources)
        return [InstanceInfo._of(i)
                for i in self._opened().fill(selected or None)]

    def gc(self, *, leaks: bool = False,
           forget: Iterable[str] | None = None) -> list[GcAction]:
        """One garbage collection pass, as ``crcache gc``.

        Discards instances left provisioning or discarding by processes
        that have gone, in-use ones whose lease has expired and cached
        ones idle longer than ``max_idle``; reports backend resources the
        store does not know (destroys them with ``leaks``). With
        ``forget``, instead forgets every instance of those sources
        (ones no longer configured, or broken).
        """
        cache = self._opened()
        if forget is not None:
            return [GcAction(a.instance, a.source, a.action, a.reason)
                    for a in cache.forget(_names(forget))]
        return [GcAction(a.instance, a.source, a.action, a.reason)
                for a in cache.collect(leaks=leaks)]


# -- instances --------------------------------------------------------------

class Instance:
    """One acquired instance: run commands on it, copy files, release it.

    Made by :meth:`Client.acquire` (in an :class:`Acquisition`) or
    :meth:`Client.instance`. Different instances may be used from
    different threads at once; so may one instance, from several
    threads or processes, as far as its ``concurrency`` allows.
    """

    def __init__(self, client: Client, name: str,
                 source: str | None = None,
                 concurrency: int | None = None) -> None:
        self._client = client
        self._name = name
        self._source = source
        self._concurrency = concurrency
        self._known = source is not None
        self._released = False

    @property
    def name(self) -> str:
        """Its name, as ``crcache`` commands take it (``pool-0``)."""
        return self._name

    @property
    def source(self) -> str:
        """The name of the source it was acquired from."""
        self._learn()
        assert self._source is not None
        return self._source

    @property
    def concurrency(self) -> int | None:
        """How many jobs it takes in parallel (its CPUs, unless its
        source's ``concurrency`` says otherwise)."""
        self._learn()
        return self._concurrency

    def _learn(self) -> None:
        if not self._known:
            inst = self._client._opened().instance(self._name)
            self._source = inst.source
            self._concurrency = inst.concurrency
            self._known = True

    def info(self) -> InstanceInfo:
        """What the state store says of it now."""
        return InstanceInfo._of(self._client._opened().instance(self._name))

    def __repr__(self) -> str:
        return f'<crcache.Instance {self._name}>'

    def _usable(self) -> 'Cache':
        if self._released:
            raise exceptions.InstanceStateError(
                f"instance '{self._name}' was released by this handle; "
                'acquire another')
        return self._client._opened()

    # -- running --------------------------------------------------------

    def run(self, argv: str | Sequence[str], *, stdin: Input = None,
            stdout: Output = None, stderr: Output = None,
            capture_output: bool = False, check: bool = False,
            cwd: PathLike | None = None,
            env: Mapping[str, str] | None = None
            ) -> 'subprocess.CompletedProcess[Any]':
        """Run a command on the instance, like :func:`subprocess.run`.

        :param argv: a list of words, each passed to the command exactly
            (the instance's shell is handed them quoted), or a string,
            which is a shell command line of its own (``'make && make
            check'``). An empty list starts the instance's shell, which
            reads its commands from ``stdin``.
        :param stdin: None (this process's standard input), bytes to
            feed it (then end of file), a descriptor, a file object with
            a ``fileno()``, or ``subprocess.DEVNULL``.
        :param stdout: None (this process's standard output), a
            descriptor, a file object, ``subprocess.DEVNULL`` or
            ``subprocess.PIPE`` (to capture it as bytes).
        :param stderr: the same, or ``subprocess.STDOUT`` to send it
            where ``stdout`` goes.
        :param capture_output: capture both (as ``stdout=PIPE,
            stderr=PIPE``).
        :param check: raise :class:`~crcache.exceptions.CommandFailed`
            (also a :class:`subprocess.CalledProcessError`) when the
            status is not 0.
        :param cwd: the directory on the instance to run in (default: the
            caller's on a local instance, the home directory on a remote
            one).
        :param env: variables set on the instance for the command, on top
            of the environment its shell starts with (which is kept).
        :returns: a :class:`subprocess.CompletedProcess` whose ``args``
            is ``argv``, ``returncode`` the command's exit status
            (128+N when it died of signal N, as a shell says), and
            ``stdout``/``stderr`` the bytes captured, else None.
        :raises ~crcache.exceptions.InstanceStateError: the instance is
            not acquired (or was released through this handle).
        :raises ~crcache.exceptions.SourceError: the command could not
            be run at all (never for a command that ran and failed).
        """
        if isinstance(argv, (bytes, bytearray)):
            raise TypeError('argv must be a string or a list of strings')
        if isinstance(argv, str):
            words = [argv]
        else:
            argv = list(argv)
            for word in argv:
                if not isinstance(word, str):
                    raise TypeError(
                        f'argv words must be strings, not {word!r}')
            words = [shlex.join(argv)] if argv else []
        if env:
            from crcache.transport import cmdline
            if not words:
                raise ValueError('env needs a command (argv is empty)')
            words = [cmdline.with_environment(env, words[0])]
        if cwd is not None:
            from crcache.transport import cmdline
            if not words:
                raise ValueError('cwd needs a command (argv is empty)')
            words = [cmdline.in_directory(os.fspath(cwd), words[0])]
        if capture_output:
            if stdout is not None or stderr is not None:
                raise ValueError('stdout and stderr arguments may not be '
                                 'used with capture_output')
            stdout = stderr = subprocess.PIPE
        cache = self._usable()
        status, out, err = _with_streams(
            lambda i, o, e: cache.run(self._name, words, i, o, e),
            stdin, stdout, stderr)
        result = subprocess.CompletedProcess(argv, status, out, err)
        if check and status:
            raise exceptions.CommandFailed(status, argv, out, err,
                                           instance=self._name)
        return result

    # -- files ----------------------------------------------------------

    def copy_in(self, local: PathLike, remote: str,
                recursive: bool = False) -> None:
        """Copy the local file (or, with ``recursive``, directory)
        ``local`` to ``remote`` on the instance, as ``cp -p`` would.

        A relative ``remote`` starts in the directory commands run in;
        an existing directory receives ``local`` under its own name.
        """
        self._usable().copy_in(self._name, os.fspath(local), remote,
                               recursive)

    def copy_out(self, remote: str, local: PathLike,
                 recursive: bool = False) -> None:
        """Copy ``remote`` on the instance to the local ``local``.

        What the instance sends is untrusted: nothing is written outside
        ``local``, whatever links or names it holds.
        """
        self._usable().copy_out(self._name, remote, os.fspath(local),
                                recursive)

    def place_files(self, paths: Iterable[PathLike]) -> None:
        """Make local files exist at the same absolute paths on the
        instance (a test runner's list of test ids named in a command);
        nothing to do on an instance of this machine."""
        self._usable().place_files(self._name,
                                   [os.fspath(p) for p in paths])

    def release(self, *, force: bool = False) -> None:
        """Release it: cached if its source's ``reserve`` wants it,
        discarded otherwise. This handle cannot be used afterwards."""
        self._usable().release([self._name], force=force)
        self._released = True


class Acquisition(Sequence[Instance]):
    """The instances one :meth:`Client.acquire` took: a sequence of
    :class:`Instance`, released together by :meth:`release`, or on
    leaving a ``with`` block (whether it raised or not)."""

    def __init__(self, client: Client, instances: list[Instance]) -> None:
        self._client = client
        self._instances = list(instances)
        self._lock = threading.Lock()

    @overload
    def __getitem__(self, index: int) -> Instance: ...

    @overload
    def __getitem__(self, index: slice) -> list[Instance]: ...

    def __getitem__(self, index: int | slice) -> Instance | list[Instance]:
        return self._instances[index]

    def __len__(self) -> int:
        return len(self._instances)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self._instances)

    def __repr__(self) -> str:
        return f'<crcache.Acquisition {" ".join(self.names)}>'

    @property
    def names(self) -> list[str]:
        """The instances' names."""
        return [inst.name for inst in self._instances]

    def release(self, *, force: bool = False) -> None:
        """Release every instance not released yet; failures are raised
        together once every other one was released."""
        with self._lock:
            todo = [i for i in self._instances if not i._released]
            for inst in todo:
                inst._released = True
        if todo:
            self._client.release([i.name for i in todo], force=force)

    def __enter__(self) -> 'Acquisition':
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.release()
            return
        try:
            self.release()
        except exceptions.CrcacheError as err:
            # The block's own error is the one to see; this one says
            # what it left behind.
            note = f'crcache: releasing {" ".join(self.names)}: {err}'
            if hasattr(exc, 'add_note'):
                exc.add_note(note)
            import logging
            logging.getLogger(__name__).warning('%s', note)


# -- helpers ----------------------------------------------------------------

def _names(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    return list(names)


def _seconds(what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{what} must be a number of seconds, not '
                        f'{value!r}')
    if math.isnan(value) or value < 0:
        raise ValueError(f'{what} must be 0 or more seconds, not {value}')
    return float(value)


def _fd(stream: Any, what: str) -> int:
    """The descriptor of a file object (flushed first) or a descriptor."""
    if isinstance(stream, int) and not isinstance(stream, bool):
        if stream < 0:
            raise ValueError(f'{what}: {stream} is not a descriptor')
        return stream
    fileno = getattr(stream, 'fileno', None)
    if fileno is None:
        raise TypeError(f'{what} must be None, bytes, a descriptor or a '
                        f'file object, not {type(stream).__name__}')
    flush = getattr(stream, 'flush', None)
    if flush is not None and what != 'stdin':
        flush()
    return fileno()


def _with_streams(run: Any, stdin: Input, stdout: Output,
                  stderr: Output) -> tuple[int, bytes | None, bytes | None]:
    """Call ``run(stdin_fd, stdout_fd, stderr_fd)`` with the streams the
    caller asked for; return its status and what was captured.

    Feeding and capturing are threads, so a command writing more than a
    pipe holds never blocks against us.
    """
    to_close: list[int] = []
    threads: list[threading.Thread] = []
    captured: dict[str, list[bytes]] = {}
    readers: list[tuple[str, int]] = []

    def pipe() -> tuple[int, int]:
        r, w = os.pipe()
        to_close.extend((r, w))
        return r, w

    def close(fd: int) -> None:
        if fd in to_close:
            to_close.remove(fd)
            os.close(fd)

    try:
        if stdin is None:
            in_fd = 0
        elif isinstance(stdin, (bytes, bytearray, memoryview)):
            in_fd, feed_fd = pipe()
            data = memoryview(bytes(stdin))
            to_close.remove(feed_fd)  # the feeder closes it

            def feed() -> None:
                view = data
                try:
                    while view:
                        view = view[os.write(feed_fd, view):]
                except OSError:  # the command stopped reading
                    pass
                finally:
                    os.close(feed_fd)

            threads.append(threading.Thread(target=feed, daemon=True))
        elif isinstance(stdin, int) and stdin == subprocess.DEVNULL:
            in_fd = os.open(os.devnull, os.O_RDONLY)
            to_close.append(in_fd)
        elif isinstance(stdin, int) and stdin in (subprocess.PIPE,
                                                  subprocess.STDOUT):
            raise ValueError('stdin may not be subprocess.PIPE or STDOUT: '
                             'give the bytes to feed instead')
        elif isinstance(stdin, str):
            raise TypeError('stdin takes bytes, not str')
        else:
            in_fd = _fd(stdin, 'stdin')

        def output(stream: Output, what: str, default: int) -> int:
            if stream is None:
                return default
            if isinstance(stream, int) and stream == subprocess.PIPE:
                r, w = pipe()
                captured[what] = []
                readers.append((what, r))
                return w
            if isinstance(stream, int) and stream == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_WRONLY)
                to_close.append(fd)
                return fd
            if isinstance(stream, int) and stream == subprocess.STDOUT:
                raise ValueError(f'{what} may not be subprocess.STDOUT')
            return _fd(stream, what)

        out_fd = output(stdout, 'stdout', 1)
        if isinstance(stderr, int) and stderr == subprocess.STDOUT:
            err_fd = out_fd
        else:
            err_fd = output(stderr, 'stderr', 2)

        def drain(what: str, fd: int) -> None:
            chunks = captured[what]
            while data := os.read(fd, 65536):
                chunks.append(data)

        threads.extend(threading.Thread(target=drain, args=reader,
                                        daemon=True) for reader in readers)
        for thread in threads:
            thread.start()
        try:
            status = run(in_fd, out_fd, err_fd)
        finally:
            # Our copies of the command's ends: the readers then see end
            # of file once the command's own copies are closed.
            for fd in (in_fd, out_fd, err_fd):
                close(fd)
            for thread in threads:
                thread.join()
    finally:
        for fd in list(to_close):
            close(fd)

    def got(what: str) -> bytes | None:
        return b''.join(captured[what]) if what in captured else None

    return status, got('stdout'), got('stderr')
