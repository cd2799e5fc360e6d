"""The client: configuration and state stores, as the command line
finds them, and everything done through them."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from crcache import exceptions
from crcache.api.instances import Acquisition, Instance, PathLike
from crcache.api.results import CaptureInfo, GcAction, InstanceInfo
from crcache.api.results import SourceInfo

if TYPE_CHECKING:
    from crcache.cache import Cache


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

    def fill(self, sources: Iterable[str] | None = None, *,
             replace: Iterable[str] | None = None) -> list[InstanceInfo]:
        """Provision cached instances until sources hold their
        ``reserve`` (default: every source with one), as ``crcache
        fill``. Returns the instances made; failures are raised together
        once every other instance was tried. ``replace`` names cached
        instances to discard first, for fresh ones to take their place
        (``crcache fill --replace``; then only their sources, and
        ``sources``, are filled)."""
        selected = _names(sources)
        return [InstanceInfo._of(i)
                for i in self._opened().fill(selected or None,
                                             replace=_names(replace))]

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

    def captures(self, sources: Iterable[str] | str | None = None, *,
                 check: bool = False) -> list[CaptureInfo]:
        """The captures of sources with ``snapshot = provisioned``, as
        ``crcache snapshot list`` (of ``sources`` only, if given). With
        ``check``, each says whether its source would start from it now
        (asking the backend)."""
        return [CaptureInfo(row.source, row.state, row.fingerprint,
                            row.capture, row.created, current)
                for row, current in self._opened().captures(
                    _names(sources) or None, check=check)]

    def drop_snapshot(self, source: str) -> list[GcAction]:
        """Remove every capture of ``source``, as ``crcache snapshot
        drop``: its next instance runs provision.d and is captured
        again. A capture being made by a live process is left (a
        ``kept`` action says so)."""
        return [GcAction(a.instance, a.source, a.action, a.reason)
                for a in self._opened().drop_snapshot(source)]


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
