"""The user's guide, example by example, for local and pool sources.

The guide's examples form one session: a pool over local with a reserve
of one, used by ``acquire``, ``run``, ``cp`` and ``release``. Each test
sets up the state the example starts from and checks what it prints.
"""

from __future__ import annotations

import json
import os

from crcache.tests.functional import base


class TestGuide(base.CLITestCase):

    def setUp(self) -> None:
        super().setUp()
        self.write_source('pool', type='pool', sources='local', reserve=1)

    def _warm_pool(self) -> None:
        # The guide's first status shows a pool holding a cached instance.
        name = self.crcache('-s', 'pool', 'acquire').stdout.strip()
        self.crcache('release', name)

    def _table(self, result: base.Result) -> list[list[str]]:
        return [line.split() for line in result.stdout.splitlines()]

    def test_status(self) -> None:
        self._warm_pool()
        self.assertEqual(
            [['source', 'cached', 'in-use', 'max'],
             ['local', '0', '1', '1'],
             ['pool', '1', '0', '1']],
            self._table(self.crcache('status')))

    def test_status_tree(self) -> None:
        self._warm_pool()
        self.assertEqual(
            [['source', 'cached', 'in-use', 'max'],
             ['pool', '1', '0', '1'],
             ['+', 'local'],
             ['local', '0', '1', '1']],
            self._table(self.crcache('status', '-t')))

    def test_status_verbose(self) -> None:
        self._warm_pool()
        out = self.crcache('status', '-v').stdout
        self.assertIn('pool    1       0       1', out)
        instances = {row['name']: row for row in json.loads(
            self.crcache('status', '-v', '-f', 'json').stdout)}
        self.assertEqual({'local-0', 'pool-0'}, set(instances))
        self.assertEqual('cached', instances['pool-0']['state'])
        self.assertEqual('in-use', instances['local-0']['state'])
        self.assertEqual('pool-0', instances['local-0']['held-by'])
        self.assertEqual(os.cpu_count() and len(os.sched_getaffinity(0)),
                         instances['pool-0']['concurrency'])

    def test_status_all(self) -> None:
        project_root = os.path.join(self.project, '.crcache')
        shadowed = self.write_source('pool', root=project_root, type='local')
        rows = json.loads(self.crcache('status', '-a', '-f', 'json').stdout)
        pool_rows = [r for r in rows if r['source'] == 'pool']
        self.assertEqual(2, len(pool_rows), rows)
        active, hidden = pool_rows
        self.assertFalse(active['shadowed'])
        self.assertTrue(active['path'].startswith(self.config_root))
        self.assertTrue(hidden['shadowed'])
        self.assertEqual(shadowed, hidden['path'])

    def test_acquire_from_pool(self) -> None:
        self._warm_pool()
        result = self.crcache('-s', 'pool', 'acquire')
        self.assertEqual('pool-0\n', result.stdout)
        self.assertEqual('', result.stderr)
        self.assertEqual(
            [['source', 'cached', 'in-use', 'max'], ['pool', '0', '1', '1']],
            self._table(self.crcache('status', 'pool')))

    def test_run(self) -> None:
        name = self.crcache('-s', 'pool', 'acquire').stdout.strip()
        result = self.crcache('run', '-s', name, 'echo', 'foo')
        self.assertEqual('foo\n', result.stdout)
        self.assertEqual('', result.stderr)

    def test_copy(self) -> None:
        name = self.crcache('-s', 'pool', 'acquire').stdout.strip()
        with open(os.path.join(self.project, 'foo'), 'w') as f:
            f.write('contents\n')
        os.chmod(os.path.join(self.project, 'foo'), 0o640)
        self.crcache('cp', f'{name}:foo', 'bar')
        with open(os.path.join(self.project, 'bar')) as f:
            self.assertEqual('contents\n', f.read())
        self.assertEqual(0o640, os.stat(
            os.path.join(self.project, 'bar')).st_mode & 0o777)

    def test_release(self) -> None:
        name = self.crcache('-s', 'pool', 'acquire').stdout.strip()
        result = self.crcache('release', name)
        self.assertEqual('', result.stdout)
        self.assertEqual(
            [['source', 'cached', 'in-use', 'max'], ['pool', '1', '0', '1']],
            self._table(self.crcache('status', 'pool')))

    def test_release_typo_suggests_the_name(self) -> None:
        self.crcache('-s', 'pool', 'acquire')
        result = self.crcache('release', 'pool0', expect=None)
        self.assertOneLineError(result, "'pool0'", "did you mean 'pool-0'")
        self.assertEqual(1, self.status('pool')['pool']['in-use'])


class TestDefaultConfiguration(base.CLITestCase):
    """With no configuration at all there is one source, local."""

    def test_status_shows_local(self) -> None:
        result = self.crcache('status')
        self.assertEqual('source  cached  in-use  max\n'
                         'local   0       0       1\n', result.stdout)

    def test_acquire_run_release(self) -> None:
        name = self.crcache('acquire').stdout
        self.assertEqual('local-0\n', name)
        result = self.crcache('run', 'local-0', '--', 'A=1', 'sh', '-c',
                              'echo $A')
        self.assertEqual('1\n', result.stdout)
        self.crcache('release', 'local-0')
        self.assertEqual({'source': 'local', 'cached': 0, 'in-use': 0,
                          'max': 1}, self.status()['local'])
