"""The layered conformance suite (:mod:`crcache.testing`) against
crcache's own ``pool``, drawing from ``local`` sources."""

from __future__ import annotations

import testtools

from crcache import testing


class TestPool(testing.LayeredConformance, testtools.TestCase):

    opts_namespace = 'crcache.sources.pool'
    # The user's guide names a pool's children ``sources=``.
    unprefixed_keys = ('sources',)

    def pool_keys(self, children: list[str]) -> dict:
        return {'type': 'pool', 'sources': ','.join(children)}
