"""Unit tests for crcache.cache.report: the --query figures."""

import types

import testtools

from crcache.cache import report
from crcache.cache.report import Node


def inst(name, state, parent=None):
    return types.SimpleNamespace(name=name, source=name.rsplit('-', 1)[0],
                                 state=state, parent=parent)


class TestQuery(testtools.TestCase):

    def q(self, what, selected, nodes, instances=()):
        return report.query(what, selected, nodes, instances)

    def test_independent_sources_add_up(self):
        nodes = {'a': Node(5), 'b': Node(2)}
        rows = [inst('a-0', 'cached'), inst('a-1', 'in-use'),
                inst('a-2', 'in-use'), inst('b-0', 'in-use')]
        self.assertEqual(1, self.q('cached', ['a', 'b'], nodes, rows))
        self.assertEqual(3, self.q('in-use', ['a', 'b'], nodes, rows))
        self.assertEqual(7, self.q('max', ['a', 'b'], nodes, rows))
        # a: 1 cached + room for 2 more; b: room for 1.
        self.assertEqual(4, self.q('available', ['a', 'b'], nodes, rows))

    def test_no_limit(self):
        nodes = {'a': Node(None), 'b': Node(3)}
        self.assertEqual(0, self.q('max', ['a', 'b'], nodes))
        self.assertEqual('unlimited', self.q('available', ['a', 'b'], nodes))
        self.assertEqual(3, self.q('max', ['b'], nodes))

    def test_a_pool_instance_and_what_it_wraps_count_once(self):
        nodes = {'pool': Node(None, ['local']), 'local': Node(1)}
        rows = [inst('pool-0', 'cached'),
                inst('local-0', 'in-use', parent='pool-0')]
        both = ['pool', 'local']
        self.assertEqual(1, self.q('cached', both, nodes, rows))
        self.assertEqual(0, self.q('in-use', both, nodes, rows))
        self.assertEqual(1, self.q('max', both, nodes, rows))
        self.assertEqual(1, self.q('available', both, nodes, rows))
        # Alone, each source counts its own.
        self.assertEqual(1, self.q('in-use', ['local'], nodes, rows))
        self.assertEqual(0, self.q('available', ['local'], nodes, rows))
        self.assertEqual(1, self.q('available', ['pool'], nodes, rows))

    def test_nested_pools(self):
        nodes = {'outer': Node(None, ['inner']),
                 'inner': Node(None, ['local']), 'local': Node(2)}
        rows = [inst('outer-0', 'in-use'),
                inst('inner-0', 'in-use', parent='outer-0'),
                inst('local-0', 'in-use', parent='inner-0'),
                inst('local-1', 'in-use')]
        self.assertEqual(2, self.q('in-use', ['outer', 'local'], nodes,
                                   rows))
        self.assertEqual(2, self.q('max', ['outer', 'local'], nodes, rows))
        self.assertEqual(1, self.q('in-use', ['inner'], nodes, rows))
        self.assertEqual(2, self.q('max', ['outer'], nodes, rows))

    def test_a_pool_capped_below_its_sources(self):
        nodes = {'pool': Node(1, ['local', 'ssh']), 'local': Node(4),
                 'ssh': Node(1)}
        self.assertEqual(1, self.q('max', ['pool'], nodes))
        # The pool can take the ssh host while local's 4 are acquired
        # directly; its own maximum still holds it to 1.
        self.assertEqual(5, self.q('max', ['pool', 'local'], nodes))
        self.assertEqual(5, self.q('max', ['pool', 'local', 'ssh'], nodes))

    def test_pools_sharing_a_source_count_it_once(self):
        nodes = {'p1': Node(1, ['box']), 'p2': Node(5, ['box']),
                 'box': Node(3)}
        self.assertEqual(3, self.q('max', ['p1', 'p2'], nodes))
        self.assertEqual(1, self.q('max', ['p1'], nodes))

    def test_available_sees_what_a_pool_draws_on(self):
        nodes = {'pool': Node(None, ['local']), 'local': Node(1)}
        # local-0 acquired directly: the pool cannot get one now.
        rows = [inst('local-0', 'in-use')]
        self.assertEqual(0, self.q('available', ['pool'], nodes, rows))
        self.assertEqual(1, self.q('max', ['pool'], nodes, rows))
        # Cached, the pool can take it: once, however it is counted.
        rows = [inst('local-0', 'cached')]
        self.assertEqual(1, self.q('available', ['pool'], nodes, rows))
        self.assertEqual(1, self.q('available', ['pool', 'local'], nodes,
                                   rows))
        # Instances being made or destroyed take room too.
        rows = [inst('local-0', 'discarding')]
        self.assertEqual(0, self.q('available', ['pool', 'local'], nodes,
                                   rows))

    def test_a_broken_source_can_make_nothing(self):
        nodes = {'pool': Node(None, ['gone']), 'gone': Node(0)}
        rows = [inst('gone-0', 'in-use')]
        self.assertEqual(0, self.q('available', ['pool'], nodes, rows))
        self.assertEqual(1, self.q('in-use', ['gone'], nodes, rows))
