"""The conformance suite (:mod:`crcache.testing`) against ``local``.

Run twice: through the agent (the default when stdin is not a terminal)
and with every command run directly, as the two take different paths to
the command's signals.
"""

from __future__ import annotations

import testtools

from crcache import testing


class TestLocal(testing.SourceConformance, testtools.TestCase):
    """The local machine, through the agent."""

    opts_namespace = 'crcache.sources.local'

    def source_keys(self) -> dict:
        return {'type': 'local'}


class TestLocalDirect(TestLocal):
    """The local machine, with the agent turned off."""

    extra_env = {'CRCACHE_AGENT': '0'}
