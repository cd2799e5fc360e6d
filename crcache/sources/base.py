"""The contract every source type implements.

A source type is a class registered in the ``crcache.sources`` entry point
group. crcache constructs one per configured source with the source's name,
its own ``oslo_config.cfg.ConfigOpts`` (the common keys plus the class's
``opts``) and a callback that returns other sources by name.

Two kinds exist:

* :class:`BackendSource` makes real resources (a process on this machine,
  an ssh host, a container). It provisions, discards, runs commands and
  copies files; it never touches crcache's state store, which the cache
  layer owns.
* :class:`LayeredSource` makes no resources of its own: each of its
  instances wraps an instance of one of its ``children`` sources (a pool).
  The cache layer claims the child instance in the same transaction as the
  wrapper, so a layered source needs no backend methods at all.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from crcache import exceptions

Ref = dict[str, Any]
"""A backend's reference to one resource; stored as JSON by the cache."""


class Source(abc.ABC):
    """A configured, named provider of instances."""

    #: oslo.config options this type adds to the common ``source.conf`` keys.
    opts: ClassVar[list] = []
    #: Keys of ``opts`` that each machine or user may set its own way
    #: (credentials, paths of this machine, timeouts): left out of the
    #: definition's fingerprint, which every client of a shared store
    #: must agree on.
    local_keys: ClassVar[frozenset[str]] = frozenset()
    #: Whether instances see this machine's files at the same paths (so
    #: ``run --files`` has nothing to copy). Such a source is bound to
    #: this machine: it cannot live in a store other machines share.
    shares_filesystem: ClassVar[bool] = False
    #: The ``maximum`` used when ``source.conf`` leaves it unset.
    default_maximum: ClassVar[int] = 0

    def __init__(self, name: str, conf: Any,
                 get_source: Callable[[str], 'Source']) -> None:
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

        None (the default) for a source that makes its own instances;
        a :class:`LayeredSource` names them.
        """
        return []

    def validate(self) -> list[tuple[str, str]]:
        """Check keys against each other; return ``(key, problem)`` pairs.

        Values were already checked one by one by oslo.config; this is for
        rules that span keys. Subclasses extend the list.
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
    """

    @property
    @abc.abstractmethod
    def children(self) -> list[str]:
        """Names of the sources to draw from."""

    def choose(self, candidates: list[Candidate],
               seq: int) -> list[Candidate]:
        """Order ``candidates`` by preference for a new instance.

        :param candidates: one per source in :attr:`children`, in that
            order.
        :param seq: the number of the instance being made (``pool-3``:
            3), for policies that rotate.
        :returns: the candidates to try, best first. The cache takes the
            first with ``room``: a cached instance of it if it has one,
            else a new instance of it. Candidates left out are not
            tried.

        Runs inside a store transaction: it must be quick and must not
        call a backend. The default prefers sources with a cached
        instance, then the sources in the order configured, and those
        marked ``avoid`` last.
        """
        return sorted(candidates,
                      key=lambda c: (c.cached == 0, c.avoid))


class BackendSource(Source):
    """A source that makes, uses and destroys real resources.

    Streams are OS file descriptors: whatever the backend, bytes move
    between the caller's descriptors and the instance's command unchanged.
    """

    #: A name unique to the state store, set by the cache, for backends
    #: that label what they make so that leaks can be found later.
    owner: str = ''

    @abc.abstractmethod
    def provision(self, names: list[str]) -> dict[str, Ref]:
        """Create one resource per crcache instance name.

        Label each resource with its name where the backend can, and return
        a reference per name. Raise :class:`~crcache.exceptions.SourceError`
        when the backend refuses; resources already made for some names
        must be reported through their references or cleaned up.
        """

    @abc.abstractmethod
    def discard(self, refs: dict[str, Ref]) -> None:
        """Destroy resources by name; one that is already gone is success."""

    @abc.abstractmethod
    def run(self, ref: Ref, argv: list[str], stdin: int, stdout: int,
            stderr: int) -> int:
        """Run ``argv`` on the resource and return its exit status.

        ``argv`` is made into one shell command line by
        :func:`crcache.cmdline.join` and run by the resource's shell; an
        empty ``argv`` starts an interactive shell. A command killed by
        signal N returns 128+N.
        """

    def concurrency(self, ref: Ref) -> int:
        """Return how many parallel jobs the resource can take.

        The default asks the resource for its CPU count.
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

        The default runs ``true`` and waits at most ``timeout`` seconds.
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

        Returns ``{resource id: crcache instance name}``, or None when the
        backend has no way to find them (so leaks cannot be looked for).
        """
        return None

    def destroy_owned(self, resource_id: str) -> None:
        """Destroy a resource found by :meth:`list_owned` (a leak)."""
        raise NotImplementedError(
            f'{type(self).__name__} cannot list resources, so it has no '
            'leaks to destroy')

    def copy_in(self, ref: Ref, src: str, dst: str, recursive: bool) -> None:
        """Copy local ``src`` to ``dst`` on the resource (like ``cp -p``).

        The default streams a tar archive into ``tar -x`` run on the
        resource, so every backend that can run commands can copy.
        """
        from crcache import tarcopy
        tarcopy.copy_in(self, ref, src, dst, recursive)

    def copy_out(self, ref: Ref, src: str, dst: str,
                 recursive: bool) -> None:
        """Copy ``src`` on the resource to local ``dst`` (like ``cp -p``).

        The default runs ``tar -c`` on the resource and extracts the stream
        locally, refusing any member that would land outside ``dst``.
        """
        from crcache import tarcopy
        tarcopy.copy_out(self, ref, src, dst, recursive)

    def capture(self, ref: Ref, argv: list[str],
                input: bytes = b'') -> tuple[int, bytes, bytes]:
        """Run ``argv`` with ``input`` on stdin; return (status, out, err)."""
        return capture(lambda i, o, e: self.run(ref, argv, i, o, e), input)


def capture(run: Callable[[int, int, int], int],
            input: bytes = b'') -> tuple[int, bytes, bytes]:
    """Call ``run(stdin, stdout, stderr)`` with pipes; collect the output.

    Readers and the writer are threads so that a command producing more
    than a pipe buffer never deadlocks against us.
    """
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        while data := os.read(fd, 65536):
            chunks[fd].append(data)

    def feed() -> None:
        try:
            view = memoryview(input)
            while view:
                view = view[os.write(in_w, view):]
        except BrokenPipeError:
            pass
        finally:
            os.close(in_w)

    threads = [threading.Thread(target=drain, args=(out_r,), daemon=True),
               threading.Thread(target=drain, args=(err_r,), daemon=True),
               threading.Thread(target=feed, daemon=True)]
    for t in threads:
        t.start()
    try:
        status = run(in_r, out_w, err_w)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        for t in threads:
            t.join()
        os.close(out_r)
        os.close(err_r)
    return status, b''.join(chunks[out_r]), b''.join(chunks[err_r])

