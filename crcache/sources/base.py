"""The contract every source type implements (API version 1).

A source type is a class registered in the ``crcache.sources`` entry
point group; a third-party package adds one by declaring an entry point
there, and it is then used like a built-in one (``type = NAME`` in a
``source.conf``). ``doc/source/plugins.rst`` is the plugin author's
guide; this module is the reference. :data:`API_VERSION` names the
version of the contract described here.

Two kinds exist:

* :class:`BackendSource` makes real resources (a process on this machine,
  an ssh host, a container). It provisions, discards, runs commands and
  copies files; it never touches crcache's state store, which the cache
  layer owns.
* :class:`LayeredSource` makes no resources of its own: each of its
  instances wraps an instance of one of its ``children`` sources (a pool).
  The cache layer claims the child instance in the same transaction as the
  wrapper, and asks the layered source only which child to draw from
  (:meth:`LayeredSource.choose`), so it needs no backend methods at all.

Lifecycle
    Every crcache invocation is a process of its own (the agent forks one
    per command), and each one loads the whole configuration: it
    constructs one object per configured source, of every type, even for
    ``crcache status``. So ``__init__`` and :meth:`Source.validate` must
    be cheap and must not reach the backend (no connection, no file
    beyond ``source.conf``, no import of a heavy client library): do that
    lazily, in the methods that need it. Nothing kept on the object
    outlives the invocation; what must last belongs in the backend (its
    labels) or in the reference :meth:`BackendSource.provision` returns,
    which crcache stores and hands back to every later call.

Threads and processes
    Any method but ``__init__`` and :meth:`Source.validate` may be called
    from several threads of one process at once: crcache provisions up to
    8 instances in parallel threads, each thread calling ``provision``
    with one name, then ``concurrency`` on the new reference, and
    ``discard`` when one fails. :meth:`BackendSource.is_alive` runs
    ``run`` in a thread of its own. Several crcache processes may also
    use one instance at once (an instance with ``concurrency`` 4 serves 4
    test workers, each its own ``crcache run``). ``crcache run`` and
    ``crcache cp`` call ``run`` and the copies from the process's main
    thread; the probes (``concurrency``, ``is_alive``) and provisioning
    may call ``run`` from other threads, where no signal handler can be
    installed.

Errors
    Raise :class:`~crcache.exceptions.SourceError` (the source's name and
    a one-line reason) for a backend that refuses or fails,
    :class:`~crcache.exceptions.InstancePathError` (the path as the user
    gave it, and a reason) for a path on an instance that is missing or
    refused, and :class:`~crcache.exceptions.CopyError` for a local path.
    Any other exception is wrapped into one line (``source 'NAME':
    ACTION failed: ERROR``); nothing a driver raises reaches the user as
    a traceback.
    An operation over several items (``discard`` of several references)
    tries every one, then raises
    :class:`~crcache.exceptions.PartialFailure` naming the items that
    failed.

Configuration
    The class attribute :attr:`Source.opts` is what is enforced: crcache
    registers the common keys (:mod:`crcache.opts`) and these, and
    refuses any other key in the file. Name every key of a type with the
    type's name as prefix (``dirs_root`` for type ``dirs``): keys of all
    types share one namespace in the generated sample configuration. The
    ``oslo.config.opts`` entry point a package also declares (a function
    returning ``[(None, Class.opts)]``) feeds ``oslo-config-generator``
    only; it must return the very same options.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from crcache import exceptions
from crcache.transport import runner

#: The version of the contract this module describes. It changes only
#: when a driver written for the previous version could misbehave: a new
#: abstract method, a changed signature or meaning, a method called from
#: a context it was never called from before. Optional methods with a
#: default, new fields of :class:`Candidate` and new keyword arguments
#: with defaults do not change it. A plugin may check it at import time
#: and refuse to load (crcache then reports the type as failing to load,
#: with the plugin's message).
API_VERSION = 1

Ref = runner.Ref
"""A backend's reference to one resource; stored as JSON by the cache.

Whatever :meth:`BackendSource.provision` returned for an instance, handed
back to every later call about it. It must survive a JSON round trip
(strings, numbers, booleans, None, lists and dicts of those) and should be
small. It may be empty (``{}``): for an instance whose provisioning
failed or was interrupted before a reference was recorded, ``discard``
gets ``{}``.
"""


class Source(abc.ABC):
    """A configured, named provider of instances.

    Subclass :class:`BackendSource` or :class:`LayeredSource`, never this
    class directly: the cache tells the two kinds apart by those classes.
    """

    #: oslo.config options this type adds to the common ``source.conf``
    #: keys. This list is what crcache registers and enforces; name each
    #: key with the type's name as prefix (``dirs_root``).
    opts: ClassVar[list] = []
    #: Keys of ``opts`` that each machine or user may set its own way
    #: (credentials, paths of this machine, timeouts): left out of the
    #: definition's fingerprint, which every client of a shared store
    #: must agree on.
    local_keys: ClassVar[frozenset[str]] = frozenset()
    #: Whether instances see this machine's files at the same paths (so
    #: ``run --files`` has nothing to copy). Declare True only if that is
    #: always so. Such a source is bound to this machine: it cannot live
    #: in a store other machines share.
    shares_filesystem: ClassVar[bool] = False
    #: The ``maximum`` used when ``source.conf`` leaves it unset: 1 for a
    #: type whose instances are one machine, 0 (no limit) otherwise.
    default_maximum: ClassVar[int] = 0
    #: Modules the type's commands import when they first need them (its
    #: library, its connection code): the crcache agent imports them once,
    #: so that commands through it find them loaded. Names only; nothing
    #: is imported at start-up for them.
    warm_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, conf: Any,
                 get_source: Callable[[str], 'Source']) -> None:
        """Keep the definition; reach nothing.

        Called for every configured source on every crcache invocation,
        including those that never use it: no connection, no backend
        call, no import of a heavy library here (see the module's
        *Lifecycle*). A subclass that overrides it calls this first.

        :param name: the source's name, its directory under ``sources/``
            (letters, digits, ``.``, ``_`` and ``-``; at most 64).
        :param conf: the source's own ``oslo_config.cfg.ConfigOpts``,
            holding the common keys and :attr:`opts`, already parsed and
            checked one by one: read keys as attributes
            (``conf.dirs_root``).
        :param get_source: returns another configured source by name (for
            layered sources, whose children are sources too).
        """
        self.name = name
        self.conf = conf
        self.get_source = get_source

    @property
    def reserve(self) -> int:
        """Instances to keep cached instead of discarding on release."""
        return self.conf.reserve

    @property
    def maximum(self) -> int:
        """The most live instances this source may have; 0 is no limit.

        ``maximum`` left unset takes the type's ``default_maximum``; set
        to 0 it means no limit, whatever the type.
        """
        configured = self.conf.maximum
        return self.default_maximum if configured is None else configured

    @property
    def configured_concurrency(self) -> int:
        """The ``concurrency`` key; 0 asks the instance."""
        return self.conf.concurrency

    @property
    def children(self) -> list[str]:
        """The sources this one draws its instances from, in order.

        Empty (the default) for a source that makes its own instances;
        a :class:`LayeredSource` names them.
        """
        return []

    def validate(self) -> list[tuple[str, str]]:
        """Check keys against each other; return ``(key, problem)`` pairs.

        Values were already checked one by one by oslo.config; this is
        for rules that span keys, or that oslo.config cannot express (a
        key required for this type). It runs on every invocation, like
        ``__init__``: look at the configuration only, never the backend.
        Subclasses extend the list their superclass returns.

        :returns: one ``(key, problem)`` pair per problem found; the first
            is reported as ``PATH: KEY: PROBLEM`` and the source cannot be
            used until it is fixed (others stay usable).
        """
        problems = []
        maximum = self.conf.maximum
        if maximum and self.reserve > maximum:
            problems.append((
                'reserve',
                f'reserve={self.reserve} is greater than '
                f'maximum={maximum}'))
        return problems


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One of a layered source's sources, as it stands right now.

    Offered to :meth:`LayeredSource.choose` inside the acquisition's
    store transaction, so the counts cannot change until it commits.
    """

    #: The source's name.
    source: str
    #: Its instances cached now (a cached one is taken before a new one).
    cached: int
    #: Its instances in use now.
    in_use: int
    #: All its live instances, whatever their state.
    live: int
    #: Its ``maximum``; 0 is no limit.
    maximum: int
    #: Whether it could give an instance now (cached, or room for one).
    room: bool
    #: Whether an instance of it was just found dead in this acquisition:
    #: it may well be dead as a whole.
    avoid: bool


class LayeredSource(Source):
    """A source whose instances wrap instances of other sources.

    The cache claims the instance a new one wraps in the same store
    transaction as the new one itself; which source it comes from is this
    source's decision (:meth:`choose`), so a policy (in order, least
    loaded, round robin...) is a plugin like any other source type.
    Running commands and copying files on a layered instance go to the
    instance it wraps, so a layered source implements no backend
    methods. Releasing one either keeps it cached (its own ``reserve``)
    with what it wraps, or hands the wrapped instance back to its own
    source, whose ``reserve`` then decides.
    """

    @property
    @abc.abstractmethod
    def children(self) -> list[str]:
        """Names of the sources to draw from, in the configured order.

        Every name must be a configured source (crcache checks, and
        refuses cycles); read them from this type's own key.
        """

    def choose(self, candidates: list[Candidate],
               seq: int) -> list[Candidate]:
        """Order ``candidates`` by preference for a new instance.

        :param candidates: one per source in :attr:`children`, in that
            order.
        :param seq: the number of the instance being made (``pool-3``:
            3), for policies that rotate. Numbers are never reused, and
            nothing else survives from one acquisition to the next: the
            source object is made afresh by every invocation.
        :returns: the candidates to try, best first. The cache takes the
            first with ``room``: a cached instance of it if it has one,
            else a new instance of it. Candidates left out are not
            tried; returning a candidate that was not offered is an
            error.

        Called once per new instance (``acquire -n 3`` asks three
        times), not for the layered source's own cached instances, which
        are handed out first. Runs inside a store transaction: it must be
        quick and must not call a backend. The default prefers sources
        with a cached instance, then the sources in the order configured,
        and those marked ``avoid`` last.
        """
        return sorted(candidates,
                      key=lambda c: (c.cached == 0, c.avoid))


class BackendSource(Source):
    """A source that makes, uses and destroys real resources.

    A driver implements :meth:`provision`, :meth:`discard` and
    :meth:`run`; everything else has a default built on :meth:`run`.
    Streams are OS file descriptors: whatever the backend, bytes move
    between the caller's descriptors and the instance's command unchanged.
    """

    #: The state store's id, set by the cache on every backend source it
    #: loads, before any other call. Label what :meth:`provision` makes
    #: with it (and :attr:`name`, and the instance's name) so that
    #: :meth:`list_owned` can find this store's resources and no one
    #: else's; it is the same value crcache passes to :meth:`list_owned`.
    #: Empty when a source is used outside a cache.
    owner: str = ''

    @abc.abstractmethod
    def provision(self, names: list[str]) -> dict[str, Ref]:
        """Create one resource per crcache instance name.

        crcache calls it with one name at a time, from up to 8 threads
        at once (an ``acquire -n 8``); accept any number all the same.
        The instance's row is in the store before this is called, so a
        crash at any point leaves a trace that ``crcache gc`` follows up
        with :meth:`discard`.

        :param names: crcache instance names (``box-3``), each new: a
            name is never reused while the store remembers the source.
            Label each resource with its name, :attr:`name` and
            :attr:`owner` where the backend can (see :meth:`list_owned`).
        :returns: a :data:`Ref` for every name, in a dict keyed by name.
        :raises ~crcache.exceptions.SourceError: when the backend refuses
            or fails. There is no way to return references while raising:
            destroy what was made for the names before raising, or make
            sure :meth:`discard` finds it from the name alone, since
            crcache then calls ``discard({name: {}})`` for every name it
            got no reference for.
        """

    @abc.abstractmethod
    def discard(self, refs: dict[str, Ref]) -> None:
        """Destroy resources by name; one that is already gone is success.

        Called once per instance (``{name: ref}``), possibly from several
        threads at once, and called again by ``crcache gc`` for an
        instance whose discarding was interrupted: it must be idempotent.

        :param refs: instance name to the reference :meth:`provision`
            returned, or ``{}`` when none was recorded (provisioning
            failed, or crashed before it returned): then find what was
            made for the name by its labels, if the backend has them.
        :raises ~crcache.exceptions.SourceError: when a resource could not
            be destroyed (the instance stays ``discarding`` for gc to
            retry). With several references, try every one, then raise
            :class:`~crcache.exceptions.PartialFailure` for the failed.
        """

    @abc.abstractmethod
    def run(self, ref: Ref, argv: list[str], stdin: int, stdout: int,
            stderr: int) -> int:
        """Run ``argv`` on the resource and return its exit status.

        :param ref: the instance's reference.
        :param argv: a non-empty ``argv`` becomes one shell command line
            with :func:`crcache.transport.cmdline.join` (to be
            ``crcache.transport.cmdline.join``), run by a POSIX shell on
            the resource (``sh -c LINE``, or the login shell as ``ssh
            host LINE`` does): one word passes unchanged, several are
            quoted, leading ``NAME=value`` words stay assignments. An
            empty ``argv`` starts the resource's interactive shell,
            reading commands from ``stdin`` when it is not a terminal.
        :param stdin: a descriptor to read the command's input from until
            end of file; the command sees end of file when it does.
        :param stdout: a descriptor for the command's standard output.
        :param stderr: a descriptor for its standard error, kept apart
            from standard output.
        :returns: the command's exit status; 128+N when it was killed by
            signal N.
        :raises ~crcache.exceptions.SourceError: when the command could
            not be run at all (the resource is gone, the backend is
            unreachable); never for a command that ran and failed.

        The descriptors may be pipes, terminals, regular files (``cp``
        hands a file's own descriptor over, and watches its offset to
        show progress) or ``/dev/null``; they belong to the caller: do
        not close them. Bytes pass unchanged both ways, however many
        (gigabytes) and whatever they are; a reader that stops early
        (``crcache run x yes | head -1``) must end the command, not hang.

        Signals: ``crcache run`` calls this from its main thread. A
        SIGINT, SIGTERM, SIGHUP or SIGQUIT reaching crcache meanwhile
        must end the command on the resource, its whole process group,
        within a few seconds, and leave no process of it behind; return
        then (128+N), and crcache exits 128+N (130 for SIGINT, 143 for
        SIGTERM). Install handlers for the duration of the call (only the
        main thread can: ``signal.signal`` raises ValueError in others)
        and restore the previous ones before returning. Several calls
        may run at once on one resource, from several processes.
        """

    def concurrency(self, ref: Ref) -> int:
        """Return how many parallel jobs the resource can take.

        Called once, right after :meth:`provision`, unless the source's
        ``concurrency`` key is set; the result is stored with the
        instance. The default asks the resource for its CPU count over
        :meth:`run`.

        :returns: 1 or more.
        :raises ~crcache.exceptions.SourceError: when it cannot tell.
        """
        status, out, err = self.capture(
            ref, ['nproc 2>/dev/null || getconf _NPROCESSORS_ONLN'])
        try:
            return max(1, int(out.split()[0]))
        except (IndexError, ValueError):
            raise exceptions.SourceError(
                self.name, f'could not read the CPU count (exit {status}): '
                f'{err.decode(errors="replace").strip()[-200:]}')

    def is_alive(self, ref: Ref, timeout: float = 10.0) -> bool:
        """Whether the resource still answers; checked before reuse.

        A cached instance is checked before it is handed out again
        (unless its source sets ``verify_cached = false``); a dead one is
        discarded and replaced. Must not raise, and must not take much
        longer than ``timeout`` seconds.

        The default runs ``true`` in a thread of its own and waits at
        most ``timeout`` seconds.
        """
        result: list[int] = []

        def probe() -> None:
            try:
                result.append(self.capture(ref, ['true'])[0])
            except Exception:
                result.append(-1)

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout)
        return result == [0]

    def list_owned(self, store_id: str) -> dict[str, str | None] | None:
        """Backend resources labelled as this store's, if it can tell.

        ``crcache gc`` calls it on every pass to find leaks: resources
        that a crash left behind and that the store no longer knows.
        List only what carries both ``store_id`` and this source's
        :attr:`name`: other stores (another user, a deleted state file)
        and other sources may share the backend.

        :param store_id: the state store's id; always the value of
            :attr:`owner` when crcache calls it (it was an argument
            before :attr:`owner` existed; either may be used).
        :returns: ``{resource id: crcache instance name}`` (the name None
            when the label is missing), or None when the backend has no
            way to find them (so leaks cannot be looked for, the
            default). The ids are shown to the user and given back to
            :meth:`destroy_owned`.
        :raises ~crcache.exceptions.SourceError: when the backend cannot
            be asked (reported for this source; gc goes on).
        """
        return None

    def destroy_owned(self, resource_id: str) -> None:
        """Destroy a resource found by :meth:`list_owned` (a leak).

        Called by ``crcache gc --leaks`` for each resource whose instance
        the store does not know. One that is already gone is success.

        :param resource_id: an id :meth:`list_owned` returned.
        :raises ~crcache.exceptions.SourceError: when it cannot be
            destroyed.
        """
        raise NotImplementedError(
            f'{type(self).__name__} cannot list resources, so it has no '
            'leaks to destroy')

    def copy_in(self, ref: Ref, src: str, dst: str, recursive: bool) -> None:
        """Copy local ``src`` to ``dst`` on the resource (like ``cp -p``).

        :param src: a local path: a file, or with ``recursive`` a
            directory.
        :param dst: a path on the resource as the user wrote it; a
            relative one is relative to the directory :meth:`run`'s
            commands start in. An existing directory receives ``src``
            under its own name; anything else is the new name.
        :param recursive: whether directories may be copied (``-r``).
        :raises ~crcache.exceptions.InstancePathError: for a path on the
            resource (``dst``'s directory missing), with the path as
            given.
        :raises ~crcache.exceptions.CopyError: for a local path.

        Permission bits and modification times are kept, owners and
        set-id bits are not. The default streams a tar archive into ``tar
        -x`` run on the resource (``crcache.transport.tarcopy``), so every
        backend that can run commands can copy; override it where the
        backend has something faster, with the same results.
        """
        from crcache.transport import tarcopy
        tarcopy.copy_in(self, ref, src, dst, recursive)

    def copy_out(self, ref: Ref, src: str, dst: str,
                 recursive: bool) -> None:
        """Copy ``src`` on the resource to local ``dst`` (like ``cp -p``).

        :param src: a path on the resource as the user wrote it (relative
            to the directory :meth:`run`'s commands start in).
        :param dst: a local path: an existing directory receives ``src``
            under its own name; anything else is the new name.
        :param recursive: whether directories may be copied (``-r``).
        :raises ~crcache.exceptions.InstancePathError: for ``src``
            missing, or a directory without ``recursive`` (``is a
            directory (use -r to copy directories)``), or an archive
            member refused.
        :raises ~crcache.exceptions.CopyError: for a local path.

        What comes from the resource is untrusted: nothing may be
        written outside ``dst``, whatever links or names it holds. The
        default runs ``tar -c`` on the resource and extracts the stream
        locally with ``crcache.transport.tarcopy``, which refuses any
        member that would land outside ``dst``; an override must extract
        through the same code (or be as careful).
        """
        from crcache.transport import tarcopy
        tarcopy.copy_out(self, ref, src, dst, recursive)

    def capture(self, ref: Ref, argv: list[str],
                input: bytes = b'') -> tuple[int, bytes, bytes]:
        """Run ``argv`` with ``input`` on stdin; return (status, out, err).

        A convenience over :meth:`run` for short commands whose output
        fits in memory.
        """
        return runner.capture(
            lambda i, o, e: self.run(ref, argv, i, o, e), input)
