"""The conformance suite: what every source type does, as a user sees it.

:class:`~crcache.testing.conformance.backend.SourceConformance` checks a
backend type (one that makes its own instances),
:class:`~crcache.testing.conformance.layered.LayeredConformance` a
layered one (a pool policy); :mod:`crcache.testing` hands both on. Each
is a mixin for a ``testtools.TestCase``: the test case supplies the
``source.conf`` keys (starting whatever server the type needs) and
declares what the type can do; every property is a test method of its
own, so a failure names the property. Everything goes through the real
``crcache`` command in a private environment
(:class:`~crcache.testing.environment.CrcacheEnvironment`), except the
few checks that can only be made on the driver itself (discarding what is
already gone, listing leaks), which load it exactly as crcache does, from
the same ``source.conf``.

The instances' side is only assumed to have a POSIX shell and the tools
``crcache cp`` needs anyway (``cat``, ``tar``, ``stat``, ``mktemp``),
plus ``find``, ``sort``, ``sha256sum``, ``wc``, ``kill`` and ``sleep``.

* :mod:`~crcache.testing.conformance.keys`: checks on a type's declared
  keys, shared by both suites;
* :mod:`~crcache.testing.conformance.kit`: what the backend suite's
  checks stand on: the hooks a test case supplies, set-up and helpers;
* :mod:`~crcache.testing.conformance.running`: ``crcache run``: command
  lines, exit status, streams and signals;
* :mod:`~crcache.testing.conformance.files`: ``crcache cp`` and ``run
  --files``;
* :mod:`~crcache.testing.conformance.driver`: discarding and leaks,
  through the driver itself;
* :mod:`~crcache.testing.conformance.backend`: the backend suite whole;
* :mod:`~crcache.testing.conformance.layered`: the layered suite.

Nothing is imported here.
"""
