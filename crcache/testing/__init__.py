"""crcache's public test kit, for source types and for crcache itself.

A third-party source type proves it keeps the contract of
:mod:`crcache.sources.base` by running the conformance suite against
itself, the way crcache runs it against its own types::

    import testtools
    from crcache import testing

    class TestMyType(testing.SourceConformance, testtools.TestCase):
        lists_leaks = True

        def source_keys(self):
            return {'type': 'mytype', 'mytype_url': '...'}

Every check drives the real ``crcache`` command (the console script next
to ``sys.executable``) in a private home and configuration, and is a test
method of its own. :class:`CrcacheMixin` gives the same private world and
helpers to a type's own behaviour tests. The kit needs ``testtools`` and
``fixtures``, which crcache itself does not: list them in the test
requirements of the package using it.

``doc/source/plugins.rst`` explains what each check holds a type to.
"""

from crcache.testing.conformance.backend import SourceConformance
from crcache.testing.conformance.kit import local_listing
from crcache.testing.conformance.layered import LayeredConformance
from crcache.testing.environment import CRCACHE
from crcache.testing.environment import CrcacheEnvironment
from crcache.testing.environment import CrcacheMixin
from crcache.testing.environment import Result

__all__ = ['CRCACHE', 'CrcacheEnvironment', 'CrcacheMixin',
           'LayeredConformance', 'Result', 'SourceConformance',
           'local_listing']
