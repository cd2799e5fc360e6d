"""Layered sources: instances that wrap instances of other sources.

A :class:`LayeredSource` (a pool policy) makes no resources of its own;
the cache claims the instance each new one wraps, and asks the source
only which of its ``children`` to draw from, offering each as a
:class:`Candidate`. Plugins import both from :mod:`crcache.sources.base`.
"""

from __future__ import annotations

import abc
import dataclasses

from crcache.sources.source import Source


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

    def validate(self) -> list[tuple[str, str]]:
        problems = super().validate()
        for key in ('snapshot', 'reset'):
            # conf['reset']: conf.reset is ConfigOpts's own method.
            if self.conf[key] != 'none':
                problems.append((
                    key, f'{key}={self.conf[key]}: a '
                    f'{self.conf.type} source makes no instances of its '
                    'own to capture or reset; set it on the sources it '
                    'draws from'))
        return problems

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
