"""The ``roundrobin`` source type: a pool that draws from its sources in turn.

crcache's own ``pool`` prefers cached instances, then its sources in the
order configured, so a lightly used pool keeps landing on its first
source. A round-robin pool spreads its instances instead: instance N
(``rr-N``) starts with source N modulo their number and takes the first,
from there on round the list, that has room. A cached instance of the
source chosen is used before a new one is made.

Which source a new instance comes from is the only thing a layered type
decides (:meth:`crcache.sources.base.LayeredSource.choose`); claiming,
running commands, copying and releasing are crcache's. The choice is
made from the instance's number, not from state kept between calls: the
source object lives for one invocation only.
"""

from __future__ import annotations

from oslo_config import cfg

from crcache.sources import base


class RoundRobinPool(base.LayeredSource):
    """Draws instances from other sources, each in turn."""

    opts = [
        cfg.ListOpt(
            'roundrobin_sources',
            default=[],
            help='For roundrobin: the sources to draw instances from in '
                 'turn (comma-separated source names). Instance N starts '
                 'with source N modulo their number, and takes the next '
                 'one with room if that one has none.'),
    ]

    @property
    def children(self) -> list[str]:
        return [name.strip() for name in self.conf.roundrobin_sources
                if name.strip()]

    @property
    def maximum(self) -> int:
        """The configured maximum, capped by what the sources can give."""
        total = 0
        for child in self.children:
            child_max = self.get_source(child).maximum
            if not child_max:
                total = 0
                break
            total += child_max
        configured = self.conf.maximum
        if configured and total:
            return min(configured, total)
        return configured or total

    def validate(self) -> list[tuple[str, str]]:
        problems = super().validate()
        children = self.children
        if not children:
            problems.append(('roundrobin_sources',
                             'a roundrobin pool needs at least one source'))
        for name in sorted({c for c in children if children.count(c) > 1}):
            problems.append(('roundrobin_sources',
                             f"source '{name}' is listed twice"))
        return problems

    def choose(self, candidates: list[base.Candidate],
               seq: int) -> list[base.Candidate]:
        if not candidates:
            return []
        start = seq % len(candidates)
        turn = candidates[start:] + candidates[:start]
        # A source whose instance was just found dead goes last, whatever
        # its turn: it may well be dead as a whole (sorted() is stable).
        return sorted(turn, key=lambda c: c.avoid)


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point: the keys of type ``roundrobin``."""
    return [(None, RoundRobinPool.opts)]
