"""Tests for crcache.cache: acquisition, caching and release.

Each test builds a real :class:`~crcache.config.Config` from a temporary
configuration root and a real SQLite store, and checks what the store
holds afterwards. Backends that fail on purpose are ordinary ``type=local``
sources whose driver class the test swaps in (see :class:`DriverConfig`),
so their ``source.conf`` is loaded and checked like any other.
"""

from __future__ import annotations

import os
from typing import Any

import fixtures
import testtools

from crcache import cache
from crcache import config
from crcache import exceptions
from crcache.sources import base
from crcache.sources import local
from crcache.store import sqlite
from crcache.store.base import CACHED, DISCARDING, IN_USE


class Recording(local.LocalSource):
    """A local source that remembers what it was asked to do."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.provisioned: list[list[str]] = []
        self.discarded: list[list[str]] = []

    def provision(self, names: list[str]) -> dict[str, base.Ref]:
        self.provisioned.append(list(names))
        return {name: {'made': name} for name in names}

    def discard(self, refs: dict[str, base.Ref]) -> None:
        self.discarded.append(sorted(refs))


class FailingProvision(Recording):
    """Every provision fails after the backend was asked."""

    def provision(self, names: list[str]) -> dict[str, base.Ref]:
        self.provisioned.append(list(names))
        raise RuntimeError('backend exploded')


class FailingProvisionAndDiscard(FailingProvision):

    def discard(self, refs: dict[str, base.Ref]) -> None:
        self.discarded.append(sorted(refs))
        raise RuntimeError('cannot discard either')


class MissingReference(Recording):
    """Provisioning "succeeds" but returns no reference for anything."""

    def provision(self, names: list[str]) -> dict[str, base.Ref]:
        self.provisioned.append(list(names))
        return {}


class FailingConcurrency(Recording):

    def concurrency(self, ref: base.Ref) -> int:
        raise RuntimeError('nproc: not found')


class FailingDiscard(Recording):
    """Discarding any instance numbered 1 fails."""

    def discard(self, refs: dict[str, base.Ref]) -> None:
        self.discarded.append(sorted(refs))
        for name in refs:
            if name.endswith('-1'):
                raise RuntimeError(f'{name} is stuck')


class FailingConcurrencyAndDiscard(FailingConcurrency):
    """Made (a reference came back), then failed, then cannot be undone."""

    def discard(self, refs: dict[str, base.Ref]) -> None:
        raise exceptions.SourceError(self.name, 'discard broke too')


class DriverConfig(config.Config):
    """A Config whose named sources use test driver classes.

    The files are loaded and checked as usual (they say ``type=local``);
    the loaded source is then rebuilt with the test class.
    """

    def __init__(self, roots: list[str],
                 drivers: dict[str, type[base.Source]]) -> None:
        self.drivers = drivers
        super().__init__(roots=roots)

    def _load(self, definition: config.Definition) -> base.Source:
        source = super()._load(definition)
        cls = self.drivers.get(definition.name)
        if cls is None:
            return source
        return cls(source.name, source.conf, source.get_source)


class CacheTestCase(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        top = self.useFixture(fixtures.TempDir()).path
        self.root = os.path.join(top, 'config')
        self.store = sqlite.SQLiteStore(os.path.join(top, 'state',
                                                     'state.db'))
        self.addCleanup(self.store.close)
        self.holder = {'user': 'tester', 'pid': 1}

    def write_source(self, name: str, **keys: object) -> None:
        directory = os.path.join(self.root, 'sources', name)
        os.makedirs(directory)
        with open(os.path.join(directory, 'source.conf'), 'w') as f:
            f.write('[DEFAULT]\n')
            for key, value in keys.items():
                f.write(f'{key}={value}\n')

    def make_cache(self, **drivers: type[base.Source]) -> cache.Cache:
        return cache.Cache(DriverConfig([self.root], drivers), self.store)

    def acquire(self, c: cache.Cache, source: str, count: int = 1
                ) -> list[str]:
        return [i.name for i in c.acquire(source, count, self.holder)]

    def rows(self) -> dict[str, tuple[str, str | None, str | None]]:
        """Every instance the store holds: name -> (state, parent, child)."""
        with self.store.reading() as tx:
            return {i.name: (i.state, i.parent, i.child)
                    for i in tx.instances()}


class TestAcquire(CacheTestCase):

    def test_acquire_from_implicit_local(self) -> None:
        c = self.make_cache()
        [inst] = c.acquire('local', 1, self.holder)
        self.assertEqual(('local-0', IN_USE), (inst.name, inst.state))
        self.assertEqual(self.holder, inst.holder)
        self.assertGreaterEqual(inst.concurrency, 1)
        self.assertEqual({'local-0': (IN_USE, None, None)}, self.rows())

    def test_configured_concurrency(self) -> None:
        self.write_source('x', type='local', concurrency=7)
        [inst] = self.make_cache().acquire('x', 1, self.holder)
        self.assertEqual(7, inst.concurrency)

    def test_count_must_be_positive(self) -> None:
        c = self.make_cache()
        self.assertRaises(exceptions.CrcacheError, c.acquire, 'local', 0)
        self.assertEqual({}, self.rows())

    def test_unknown_source(self) -> None:
        c = self.make_cache()
        e = self.assertRaises(exceptions.UnknownSource, c.acquire, 'lcoal')
        self.assertIn("did you mean 'local'", str(e))

    def test_pool_over_two_sources_is_all_or_nothing(self) -> None:
        self.write_source('a', type='local')
        self.write_source('b', type='local')
        self.write_source('p', type='pool', sources='a,b')
        c = self.make_cache()
        e = self.assertRaises(exceptions.CapacityError, c.acquire, 'p', 3,
                              self.holder)
        self.assertIn("'p'", str(e))
        self.assertIn('maximum 2', str(e))
        self.assertIn('0 live', str(e))
        self.assertEqual({}, self.rows())
        # Two fit, and numbering did not skip because of the failure.
        self.assertEqual(['p-0', 'p-1'], self.acquire(c, 'p', 2))
        self.assertEqual({'p-0': (IN_USE, None, 'a-0'),
                          'p-1': (IN_USE, None, 'b-0'),
                          'a-0': (IN_USE, 'p-0', None),
                          'b-0': (IN_USE, 'p-1', None)}, self.rows())

    def test_pool_all_or_nothing_when_a_child_is_busy(self) -> None:
        self.write_source('a', type='local')
        self.write_source('b', type='local')
        self.write_source('p', type='pool', sources='a,b')
        c = self.make_cache()
        self.acquire(c, 'a')
        before = self.rows()
        e = self.assertRaises(exceptions.CapacityError, c.acquire, 'p', 2,
                              self.holder)
        self.assertIn("'p'", str(e))
        self.assertIn('a: maximum 1, 1 live', str(e))
        self.assertEqual(before, self.rows())

    def test_capacity_error_counts_live_instances(self) -> None:
        self.write_source('x', type='local', maximum=2, reserve=1)
        c = self.make_cache()
        self.acquire(c, 'x', 2)
        e = self.assertRaises(exceptions.CapacityError, c.acquire, 'x', 1,
                              self.holder)
        self.assertIn("'x'", str(e))
        self.assertIn('maximum 2', str(e))
        self.assertIn('2 live', str(e))

    def test_cached_instances_handed_out_first(self) -> None:
        self.write_source('c', type='local', maximum=3, reserve=3)
        c = self.make_cache(c=Recording)
        self.acquire(c, 'c', 2)
        c.release(['c-1'])
        self.assertEqual((CACHED, None, None), self.rows()['c-1'])
        self.assertEqual(['c-1', 'c-2'], self.acquire(c, 'c', 2))
        # Only the new instances were provisioned.
        self.assertEqual([['c-0'], ['c-1'], ['c-2']],
                         c.config.source('c').provisioned)
        self.assertEqual({IN_USE}, {r[0] for r in self.rows().values()})

    def test_pool_prefers_cached_child(self) -> None:
        self.write_source('a', type='local', maximum=2, reserve=2)
        self.write_source('b', type='local', reserve=1)
        self.write_source('p', type='pool', sources='a,b')
        c = self.make_cache(a=Recording, b=Recording)
        self.acquire(c, 'b')
        c.release(['b-0'])
        self.assertEqual(['p-0'], self.acquire(c, 'p'))
        # a is preferred, but b's cached instance is used before a new one.
        self.assertEqual((IN_USE, None, 'b-0'), self.rows()['p-0'])
        self.assertEqual([], c.config.source('a').provisioned)

    def test_failing_provision_leaves_nothing(self) -> None:
        self.write_source('f', type='local', maximum=2)
        c = self.make_cache(f=FailingProvision)
        e = self.assertRaises(exceptions.SourceError, c.acquire, 'f', 2,
                              self.holder)
        self.assertIn("'f'", str(e))
        self.assertIn('backend exploded', str(e))
        self.assertEqual({}, self.rows())
        # What the backend may have made was discarded.
        self.assertEqual(['f-0', 'f-1'],
                         sorted(sum(c.config.source('f').discarded, [])))

    def test_failing_provision_in_pool_puts_back_cached_child(self) -> None:
        self.write_source('a', type='local', reserve=1)
        self.write_source('f', type='local')
        self.write_source('p', type='pool', sources='a,f')
        c = self.make_cache(f=FailingProvision)
        self.acquire(c, 'a')
        c.release(['a-0'])
        before = self.rows()
        self.assertEqual({'a-0': (CACHED, None, None)}, before)
        self.assertRaises(exceptions.SourceError, c.acquire, 'p', 2,
                          self.holder)
        self.assertEqual(before, self.rows())

    def test_failed_undo_leaves_a_discarding_row(self) -> None:
        # A record that something exists, for crcache gc to retry.
        self.write_source('f', type='local')
        c = self.make_cache(f=FailingConcurrencyAndDiscard)
        self.assertRaises(exceptions.SourceError, c.acquire, 'f', 1,
                          self.holder)
        self.assertEqual({'f-0': (DISCARDING, None, None)}, self.rows())

    def test_unmade_instance_leaves_nothing(self) -> None:
        # The backend never returned it, and a failing driver cleans up
        # after itself: nothing to retry, even if discarding fails too.
        self.write_source('f', type='local')
        c = self.make_cache(f=FailingProvisionAndDiscard)
        self.assertRaises(exceptions.SourceError, c.acquire, 'f', 1,
                          self.holder)
        self.assertEqual({}, self.rows())

    def test_missing_reference_leaves_nothing(self) -> None:
        self.write_source('m', type='local')
        c = self.make_cache(m=MissingReference)
        e = self.assertRaises(exceptions.SourceError, c.acquire, 'm', 1,
                              self.holder)
        self.assertIn('m-0', str(e))
        self.assertEqual({}, self.rows())
        self.assertEqual([['m-0']], c.config.source('m').discarded)

    def test_failing_concurrency_probe_leaves_nothing(self) -> None:
        self.write_source('n', type='local')
        c = self.make_cache(n=FailingConcurrency)
        e = self.assertRaises(exceptions.SourceError, c.acquire, 'n', 1,
                              self.holder)
        self.assertIn('nproc', str(e))
        self.assertEqual({}, self.rows())

    def test_reference_recorded(self) -> None:
        self.write_source('r', type='local')
        c = self.make_cache(r=Recording)
        [inst] = c.acquire('r', 1, self.holder)
        self.assertEqual({'made': 'r-0'}, inst.ref)


class TestRelease(CacheTestCase):

    def test_reserve_keeps_the_last_instance(self) -> None:
        self.write_source('r', type='local', maximum=2, reserve=1)
        c = self.make_cache(r=Recording)
        self.acquire(c, 'r')
        c.release(['r-0'])
        self.assertEqual({'r-0': (CACHED, None, None)}, self.rows())
        self.assertEqual([], c.config.source('r').discarded)

    def test_reserve_discards_beyond_it(self) -> None:
        self.write_source('r', type='local', maximum=2, reserve=1)
        c = self.make_cache(r=Recording)
        self.acquire(c, 'r', 2)
        c.release(['r-0'])
        self.assertEqual({'r-1': (IN_USE, None, None)}, self.rows())
        self.assertEqual([['r-0']], c.config.source('r').discarded)
        c.release(['r-1'])
        self.assertEqual({'r-1': (CACHED, None, None)}, self.rows())

    def test_no_reserve_discards(self) -> None:
        c = self.make_cache()
        self.acquire(c, 'local')
        c.release(['local-0'])
        self.assertEqual({}, self.rows())
        # The number is not reused.
        self.assertEqual(['local-1'], self.acquire(c, 'local'))

    def test_release_cached_refused(self) -> None:
        self.write_source('r', type='local', reserve=1)
        c = self.make_cache()
        self.acquire(c, 'r')
        c.release(['r-0'])
        e = self.assertRaises(exceptions.InstanceStateError, c.release,
                              ['r-0'])
        self.assertIn('not acquired', str(e))
        self.assertEqual({'r-0': (CACHED, None, None)}, self.rows())

    def test_release_unknown(self) -> None:
        c = self.make_cache()
        self.acquire(c, 'local')
        e = self.assertRaises(exceptions.UnknownInstance, c.release,
                              ['local0'])
        self.assertIn("did you mean 'local-0'", str(e))

    def test_pool_release_returns_child_to_its_source(self) -> None:
        self.write_source('a', type='local', reserve=1)
        self.write_source('p', type='pool', sources='a')
        c = self.make_cache(a=Recording)
        self.acquire(c, 'p')
        c.release(['p-0'])
        self.assertEqual({'a-0': (CACHED, None, None)}, self.rows())
        self.assertEqual([], c.config.source('a').discarded)
        # The returned child serves its own source's next acquire.
        self.assertEqual(['a-0'], self.acquire(c, 'a'))
        self.assertEqual([['a-0']], c.config.source('a').provisioned)

    def test_pool_release_discards_child_without_reserve(self) -> None:
        self.write_source('a', type='local')
        self.write_source('p', type='pool', sources='a')
        c = self.make_cache(a=Recording)
        self.acquire(c, 'p')
        c.release(['p-0'])
        self.assertEqual({}, self.rows())
        self.assertEqual([['a-0']], c.config.source('a').discarded)

    def test_pool_reserve_keeps_child_held(self) -> None:
        self.write_source('a', type='local')
        self.write_source('p', type='pool', sources='a', reserve=1)
        c = self.make_cache()
        self.acquire(c, 'p')
        c.release(['p-0'])
        self.assertEqual({'p-0': (CACHED, None, 'a-0'),
                          'a-0': (IN_USE, 'p-0', None)}, self.rows())
        self.assertEqual(['p-0'], self.acquire(c, 'p'))
        self.assertEqual((IN_USE, None, 'a-0'), self.rows()['p-0'])

    def test_release_of_child_held_by_pool_refused(self) -> None:
        self.write_source('a', type='local')
        self.write_source('p', type='pool', sources='a')
        c = self.make_cache()
        self.acquire(c, 'p')
        before = self.rows()
        e = self.assertRaises(exceptions.InstanceStateError, c.release,
                              ['a-0'])
        self.assertIn("'p-0'", str(e))
        self.assertEqual(before, self.rows())

    def test_partial_failure_reported_after_trying_all(self) -> None:
        self.write_source('x', type='local', maximum=3)
        c = self.make_cache(x=FailingDiscard)
        self.acquire(c, 'x', 3)
        e = self.assertRaises(exceptions.PartialFailure, c.release,
                              ['x-0', 'x-1', 'x-2'])
        self.assertIn('1 of 3 instances failed to release', str(e))
        self.assertIn('x-1', str(e))
        self.assertIn('stuck', str(e))
        self.assertEqual([['x-0'], ['x-1'], ['x-2']],
                         c.config.source('x').discarded)
        self.assertEqual({'x-1': (DISCARDING, None, None)}, self.rows())

    def test_partial_failure_with_unknown_name(self) -> None:
        self.write_source('x', type='local', maximum=2)
        c = self.make_cache()
        self.acquire(c, 'x', 2)
        e = self.assertRaises(exceptions.PartialFailure, c.release,
                              ['x-0', 'nope-3', 'x-1'])
        self.assertIn('1 of 3 instances failed to release', str(e))
        self.assertIn('nope-3', str(e))
        self.assertEqual({}, self.rows())

    def test_duplicate_names_released_once(self) -> None:
        c = self.make_cache()
        self.acquire(c, 'local')
        c.release(['local-0', 'local-0'])
        self.assertEqual({}, self.rows())


class TestStatus(CacheTestCase):

    def test_counts(self) -> None:
        self.write_source('a', type='local', maximum=3, reserve=1)
        self.write_source('p', type='pool', sources='a')
        c = self.make_cache()
        self.acquire(c, 'a')
        c.release(['a-0'])
        self.acquire(c, 'p')
        self.acquire(c, 'a')
        by_name = {s.name: s for s in c.status()}
        self.assertEqual(['a', 'local', 'p'], sorted(by_name))
        a = by_name['a']
        self.assertEqual((0, 2, 3, 1), (a.cached, a.in_use, a.maximum,
                                        a.reserve))
        p = by_name['p']
        self.assertEqual((0, 1, 3, ['a']),
                         (p.cached, p.in_use, p.maximum, p.children))
