"""The conformance suite (:mod:`crcache.testing`) against ``local``.

The whole suite runs through the agent (the default when stdin is not a
terminal); the checks of ``crcache run`` run again with every command run
directly, as the two take different paths to the command's streams and
signals (the rest is the same code either way).
"""

from __future__ import annotations

import testtools

from crcache import testing
from crcache.testing.conformance.running import RunChecks


class TestLocal(testing.SourceConformance, testtools.TestCase):
    """The local machine, through the agent."""

    opts_namespace = 'crcache.sources.local'

    def source_keys(self) -> dict:
        return {'type': 'local'}


class TestLocalDirect(RunChecks, testtools.TestCase):
    """The local machine, with the agent turned off."""

    extra_env = {'CRCACHE_AGENT': '0'}

    def source_keys(self) -> dict:
        return {'type': 'local'}
