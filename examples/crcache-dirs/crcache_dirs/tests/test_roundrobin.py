"""The ``roundrobin`` type: crcache's layered conformance suite, and the
order it draws in, through the real ``crcache`` command."""

from __future__ import annotations

import json
import os

import testtools

from crcache import testing


class TestRoundRobinConformance(testing.LayeredConformance,
                                testtools.TestCase):
    """What every layered source type must do."""

    opts_namespace = 'crcache_dirs.roundrobin'

    def pool_keys(self, children: list[str]) -> dict:
        return {'type': 'roundrobin',
                'roundrobin_sources': ','.join(children)}


class TestRoundRobin(testing.CrcacheMixin, testtools.TestCase):
    """Instance N starts with source N modulo their number."""

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(self.release_all)
        for name in ('a', 'b', 'c'):
            self.child(name)
        self.world.write_source('rr', {'type': 'roundrobin',
                                       'roundrobin_sources': 'a, b, c'})

    def child(self, name: str, **keys: object) -> None:
        self.world.write_source(name, dict(
            type='dirs', dirs_root=os.path.join(self.world.home, 'dirs'),
            **keys))

    def release_all(self) -> None:
        result = self.world.run('status', '-v', '-f', 'json')
        if result.returncode == 0:
            held = [row['name'] for row in json.loads(result.stdout)
                    if row['source'] == 'rr' and row['state'] == 'in-use']
            if held:
                self.release(*held)

    def drawn(self, names: list[str]) -> list[str]:
        return [self.wrapped(name)['source'] for name in names]

    def test_instances_go_round_the_sources(self) -> None:
        names = [self.acquire('rr')[0] for _ in range(6)]
        self.assertEqual([f'rr-{n}' for n in range(6)], names)
        self.assertEqual(['a', 'b', 'c', 'a', 'b', 'c'], self.drawn(names))
        # Each is a directory of the source it was drawn from.
        for name, source in zip(names, self.drawn(names)):
            path = self.run_on(name, 'pwd').stdout.strip()
            self.assertEqual(source, path.split('/')[-2], path)

    def test_several_at_once(self) -> None:
        names = self.acquire('rr', 3)
        self.assertEqual(['a', 'b', 'c'], self.drawn(names))

    def test_a_full_source_is_skipped(self) -> None:
        self.child('b', maximum=1)
        names = [self.acquire('rr')[0] for _ in range(6)]
        # rr-4 starts with b, which is full: c is next.
        self.assertEqual(['a', 'b', 'c', 'a', 'c', 'c'], self.drawn(names))

    def test_a_cached_instance_of_the_source_in_turn_is_used(self) -> None:
        self.child('a', reserve=1)
        [first] = self.acquire('rr')
        child = self.wrapped(first)['name']
        self.release(first)
        self.assertEqual('cached', self.instances('a')[child]['state'])
        names = [self.acquire('rr')[0] for _ in range(3)]
        self.assertEqual(['b', 'c', 'a'], self.drawn(names))
        self.assertEqual(child, self.wrapped(names[-1])['name'])

    def test_configuration_errors_name_the_key(self) -> None:
        for value, problem in (('', 'at least one source'),
                               ('a, a', "source 'a' is listed twice"),
                               ('a, nosuch', "unknown source 'nosuch'")):
            path = self.world.write_source(
                'rr', {'type': 'roundrobin', 'roundrobin_sources': value})
            result = self.crcache('acquire', '-s', 'rr', expect=None)
            self.assertOneLineError(result, path, 'roundrobin_sources' if
                                    'unknown' not in problem else 'sources',
                                    problem)
