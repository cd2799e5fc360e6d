"""The conformance suite for a layered source type (a pool policy).

An instance wraps one of its sources' instances; every source is drawn
on while any has room; several at once; release hands the wrapped
instance back, whose own source's reserve decides what stays cached.
"""

from __future__ import annotations

import json
from typing import Any

from crcache.testing.conformance.keys import TypeChecks
from crcache.testing.environment import CrcacheMixin


class LayeredConformance(TypeChecks, CrcacheMixin):
    """The conformance suite for a layered source type (a pool policy).

    Mix into a ``testtools.TestCase`` and supply :meth:`pool_keys`::

        class TestMyPool(crcache.testing.LayeredConformance,
                         testtools.TestCase):
            def pool_keys(self, children):
                return {'type': 'mypool',
                        'mypool_sources': ','.join(children)}

    The sources it draws from are ``local`` ones by default
    (:meth:`child_keys`), which cost nothing to make.
    """

    #: The layered source's name in the test configuration.
    pool_name = 'kitpool'

    def pool_keys(self, children: list[str]) -> dict[str, Any]:
        """``source.conf`` keys of the layered source over ``children``."""
        raise NotImplementedError('pool_keys() must return the keys')

    def child_keys(self, name: str, maximum: int,
                   reserve: int = 0) -> dict[str, Any]:
        """Keys of one source it draws from."""
        return {'type': 'local', 'maximum': maximum, 'reserve': reserve}

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(self._release_pool)

    def checked_source(self) -> str:
        self.make_pool({'kita': 1})
        return self.pool_name

    def make_pool(self, children: dict[str, int],
                  reserve: dict[str, int] | None = None) -> None:
        """Define ``children`` (name: maximum) and the pool over them."""
        for child, maximum in children.items():
            self.world.write_source(child, self.child_keys(
                child, maximum, (reserve or {}).get(child, 0)))
        self.world.write_source(self.pool_name,
                                self.pool_keys(list(children)))

    def _release_pool(self) -> None:
        result = self.world.run('status', '-v', '-f', 'json',
                                self.pool_name)
        if result.returncode == 0:
            held = [row['name'] for row in json.loads(result.stdout)
                    if row['state'] == 'in-use']
            if held:
                self.world.run('release', *held)

    def test_an_instance_wraps_one_of_its_sources(self) -> None:
        self.make_pool({'kita': 2, 'kitb': 2})
        [name] = self.acquire(self.pool_name)
        self.assertTrue(name.startswith(f'{self.pool_name}-'), name)
        child = self.wrapped(name)
        self.assertIn(child['source'], ('kita', 'kitb'))
        self.assertEqual('in-use', child['state'])
        self.assertEqual('ok\n', self.run_on(name, 'echo ok').stdout)
        self.release(name)
        status = self.status(self.pool_name, 'kita', 'kitb')
        self.assertEqual([0, 0, 0], [status[s]['in-use'] for s in
                                     (self.pool_name, 'kita', 'kitb')])

    def test_every_source_is_drawn_on_when_others_are_full(self) -> None:
        """An instance is given while any source has room; none beyond."""
        self.make_pool({'kita': 1, 'kitb': 1, 'kitc': 1})
        names = [self.acquire(self.pool_name)[0] for _ in range(3)]
        self.assertEqual(['kita', 'kitb', 'kitc'],
                         sorted(self.wrapped(n)['source'] for n in names))
        result = self.crcache('acquire', '-s', self.pool_name, expect=None)
        self.assertOneLineError(result, f"'{self.pool_name}'")
        self.assertEqual(3, self.status(self.pool_name)[
            self.pool_name]['in-use'])

    def test_several_at_once(self) -> None:
        self.make_pool({'kita': 2, 'kitb': 2})
        names = self.acquire(self.pool_name, 3)
        self.assertEqual(3, len(set(names)))
        drawn = [self.wrapped(n)['source'] for n in names]
        for child in ('kita', 'kitb'):
            self.assertLessEqual(drawn.count(child), 2, drawn)

    def test_release_hands_the_child_back(self) -> None:
        """The child's own reserve decides whether it stays cached."""
        self.make_pool({'kita': 1}, reserve={'kita': 1})
        [name] = self.acquire(self.pool_name)
        child = self.wrapped(name)['name']
        self.release(name)
        self.assertEqual({child: 'cached'},
                         {n: row['state'] for n, row in
                          self.instances('kita').items()})
        [again] = self.acquire(self.pool_name)
        self.assertEqual(child, self.wrapped(again)['name'])
