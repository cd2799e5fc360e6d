"""The ``dirs`` type: crcache's conformance suite, and its own behaviour.

Both drive the real ``crcache`` command in a private home
(:mod:`crcache.testing`), with this package installed beside crcache.
"""

from __future__ import annotations

import glob
import os
import shutil

import testtools

from crcache import testing


class TestDirsConformance(testing.SourceConformance, testtools.TestCase):
    """What every source type must do."""

    lists_leaks = True
    opts_namespace = 'crcache_dirs.dirs'

    def source_keys(self) -> dict:
        self.root = os.path.join(self.world.home, 'instances')
        return {'type': 'dirs', 'dirs_root': self.root}

    def unreachable_keys(self) -> dict:
        # Nothing can be made below a regular file.
        return {'type': 'dirs', 'dirs_root': '/dev/null/instances'}

    def break_instance(self, name: str) -> bool:
        [path] = glob.glob(os.path.join(self.root, '*', self.source_name,
                                        name))
        shutil.rmtree(path)
        return True


class TestDirs(testing.CrcacheMixin, testtools.TestCase):
    """What is particular to ``dirs``."""

    def setUp(self) -> None:
        super().setUp()
        self.root = os.path.join(self.world.home, 'instances')
        self.write(dirs_root=self.root)

    def write(self, **keys: object) -> str:
        return self.world.write_source('d', dict(type='dirs', **keys))

    def directories(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.root, '*', 'd', '*')))

    def test_each_instance_is_a_fresh_directory(self) -> None:
        self.write(dirs_root=self.root, maximum=2)
        first, second = self.acquire('d', 2)
        self.addCleanup(self.crcache, 'release', first, second)
        where = [self.run_on(name, 'pwd; ls -A').stdout for name in
                 (first, second)]
        self.assertEqual([f'{path}\n' for path in self.directories()],
                         where)
        for name, path in zip((first, second), self.directories()):
            # DIRS_ROOT/STORE_ID/SOURCE/INSTANCE: the labels gc reads.
            self.assertEqual(name, os.path.basename(path))

    def test_release_removes_everything(self) -> None:
        [name] = self.acquire('d')
        self.run_on(name, 'mkdir -p a/b && touch a/b/f && chmod 0 a/b && '
                    'chmod 500 a && ln -s / link')
        self.release(name)
        self.assertEqual([], self.directories())

    def test_template_fills_new_instances(self) -> None:
        template = os.path.join(self.world.home, 'template')
        os.makedirs(os.path.join(template, 'bin'))
        with open(os.path.join(template, 'bin', 'hello'), 'w') as f:
            f.write('#!/bin/sh\necho hello\n')
        os.chmod(os.path.join(template, 'bin', 'hello'), 0o750)
        self.write(dirs_root=self.root, dirs_template=template)
        [name] = self.acquire('d')
        self.addCleanup(self.crcache, 'release', name)
        self.assertEqual('hello\n750\n', self.run_on(
            name, 'bin/hello; stat -c %a bin/hello').stdout)

    def test_a_failed_provision_leaves_nothing(self) -> None:
        missing = os.path.join(self.world.home, 'no-template')
        self.write(dirs_root=self.root, dirs_template=missing)
        result = self.crcache('acquire', '-s', 'd', expect=None)
        self.assertOneLineError(result, "source 'd'", missing)
        self.assertEqual([], self.directories())
        self.assertEqual({}, self.instances('d'))

    def test_default_root_is_in_the_cache_directory(self) -> None:
        self.write()
        [name] = self.acquire('d')
        self.addCleanup(self.crcache, 'release', name)
        where = self.run_on(name, 'pwd').stdout.strip()
        self.assertEqual(
            os.path.join(self.world.env['XDG_CACHE_HOME'], 'crcache-dirs'),
            os.path.dirname(os.path.dirname(os.path.dirname(where))))
