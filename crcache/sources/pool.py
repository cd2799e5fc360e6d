"""The ``pool`` source type: instances drawn from other sources.

A pool instance (``pool-0``) wraps one instance of one of the pool's
``sources``, tried in order and preferring their cached instances. Running
commands and copying files go to the wrapped instance. Releasing a pool
instance either keeps it (with its wrapped instance) in the pool's reserve
or hands the wrapped instance back to its own source, whose reserve then
decides its fate. The claiming itself is done by the cache layer, in the
same transaction as the pool instance, so pools need no backend code.
"""

from __future__ import annotations

from oslo_config import cfg

from crcache.sources import base


class PoolSource(base.LayeredSource):
    """Draws instances from other sources, in order of preference."""

    opts = [
        cfg.ListOpt(
            'sources',
            default=[],
            help='For pools: the sources to draw instances from, in order '
                 'of preference (comma-separated source names). Cached '
                 'instances of any of them are used before new ones are '
                 'made.'),
    ]

    @property
    def children(self) -> list[str]:
        return [name.strip() for name in self.conf.sources if name.strip()]

    @property
    def maximum(self) -> int:
        """The configured maximum, capped by what the sources can give.

        With no ``maximum`` set, a pool can hold as many instances as its
        sources together: the sum of their maxima when all are bounded.
        """
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
        if not self.children:
            problems.append(
                ('sources', 'a pool needs at least one source in sources='))
        seen = set()
        for child in self.children:
            if child in seen:
                problems.append(
                    ('sources', f"source '{child}' is listed twice"))
            seen.add(child)
        return problems


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point for the pool's own keys."""
    return [(None, PoolSource.opts)]
