"""``crcache cp`` through the CLI, on local and pool instances."""

from __future__ import annotations

import os
import stat

from crcache.tests.functional import base


class TestCopy(base.CLITestCase):

    def setUp(self) -> None:
        super().setUp()
        self.write_source('pool', type='pool', sources='local')
        self.name = self.crcache('acquire', '-s', 'pool').stdout.strip()
        self.tree = os.path.join(self.project, 'dir')
        os.makedirs(os.path.join(self.tree, 'sub'))
        with open(os.path.join(self.tree, 'sub', 'run.sh'), 'w') as f:
            f.write('#!/bin/sh\n')
        os.chmod(os.path.join(self.tree, 'sub', 'run.sh'), 0o750)
        self.target = os.path.join(self.home, 'target')
        os.mkdir(self.target)

    def _mode(self, *parts: str) -> int:
        return stat.S_IMODE(os.stat(os.path.join(*parts)).st_mode)

    def test_directory_into_instance_directory(self) -> None:
        # The form the issue gives: options after the operands.
        self.crcache('cp', './dir', f'{self.name}:{self.target}', '-r')
        self.assertEqual(0o750, self._mode(self.target, 'dir', 'sub',
                                           'run.sh'))

    def test_directory_out_of_instance(self) -> None:
        self.crcache('cp', '-r', f'{self.name}:dir', self.target)
        self.assertTrue(os.path.isfile(
            os.path.join(self.target, 'dir', 'sub', 'run.sh')))

    def test_directory_needs_r(self) -> None:
        result = self.crcache('cp', './dir', f'{self.name}:{self.target}',
                              expect=None)
        self.assertOneLineError(result, 'is a directory', '-r')
        self.assertEqual([], os.listdir(self.target))

    def test_between_two_instances(self) -> None:
        self.write_source('other', type='local')
        other = self.crcache('acquire', '-s', 'other').stdout.strip()
        self.crcache('cp', '-r', f'{self.name}:dir',
                     f'{other}:{self.target}/copied')
        self.assertEqual(0o750, self._mode(self.target, 'copied', 'sub',
                                           'run.sh'))

    def test_neither_side_is_an_instance(self) -> None:
        result = self.crcache('cp', 'a', 'b', expect=None)
        self.assertOneLineError(result, 'INSTANCE:PATH')

    def test_instance_not_acquired(self) -> None:
        result = self.crcache('cp', 'dir', 'nosuch-0:x', expect=None)
        self.assertOneLineError(result, "unknown instance 'nosuch-0'")

    def test_missing_instance_paths_name_the_instance(self) -> None:
        # The local source's instances are this machine; the paths are
        # still named as the instance's, as the user wrote them.
        self.write_source('other', type='local')
        other = self.crcache('acquire', '-s', 'other').stdout.strip()
        nosuch = os.path.join(self.home, 'no', 'such')
        dst = os.path.join(self.home, 'dst')
        for name in (self.name, other):
            for flags in ((), ('-r',)):
                for path in (f'{nosuch}/file', 'no/such/file'):
                    result = self.crcache('cp', *flags, f'{name}:{path}',
                                          dst, expect=None)
                    self.assertEqual(
                        (1, '', f'crcache: {name}:{path}: no such file or '
                         'directory\n'),
                        (result.returncode, result.stdout, result.stderr))
                    result = self.crcache('cp', *flags, './dir/sub/run.sh',
                                          f'{name}:{path}', expect=None)
                    self.assertEqual(
                        f'crcache: {name}:{os.path.dirname(path)}: no such '
                        'directory\n', result.stderr)
        self.assertFalse(os.path.lexists(dst))
        result = self.crcache('cp', f'{self.name}:dir', dst, expect=None)
        self.assertEqual(f'crcache: {self.name}:dir: is a directory (use -r '
                         'to copy directories)\n', result.stderr)

    def test_missing_local_paths_are_named_alone(self) -> None:
        result = self.crcache('cp', 'nosuch', f'{self.name}:{self.target}',
                              expect=None)
        self.assertEqual('crcache: nosuch: no such file or directory\n',
                         result.stderr)
        result = self.crcache('cp', f'{self.name}:dir/sub/run.sh',
                              'no/such/x', expect=None)
        self.assertEqual('crcache: no/such: no such directory\n',
                         result.stderr)
