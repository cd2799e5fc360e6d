"""The conformance checks of ``crcache cp`` and ``run --files``.

Files and trees both ways keep their content, modes and links; relative
instance paths mean what they mean to ``run``; errors name the path as
the user wrote it; directories need ``-r``.
"""

from __future__ import annotations

import hashlib
import os
import uuid

from crcache.testing.conformance.kit import (
    BackendKit, file_mode, local_listing, write_file)


class FileChecks(BackendKit):
    """The checks of copying files; part of the backend suite."""

    # -- files -------------------------------------------------------------

    def test_run_files_places_files_at_the_same_path(self) -> None:
        """``run --files`` (testr's ``$FILES``) and shares_filesystem."""
        name = self.acquire_one()
        path = os.path.join(self.world.home, 'ids', 'list.txt')
        os.mkdir(os.path.dirname(path))
        write_file(path, 'test.one\ntest.two\n', 0o644)
        result = self.crcache('run', f'--files={path}', name, 'cat', path)
        self.assertEqual('test.one\ntest.two\n', result.stdout)
        if self.load_source().shares_filesystem:
            # Declared: the instance sees this machine's files as they are.
            write_file(path, 'changed\n', 0o644)
            self.assertEqual('changed\n', self.run_on(name, 'cat',
                                                      path).stdout)

    def test_file_in_keeps_content_and_mode(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        src = os.path.join(self.world.project, 'run.sh')
        write_file(src, '#!/bin/sh\necho ran\n', 0o751)
        self.crcache('cp', src, f'{name}:{scratch}/copy.sh')
        result = self.run_on(name, f'stat -c %a {scratch}/copy.sh; '
                             f'{scratch}/copy.sh')
        self.assertEqual('751\nran\n', result.stdout)
        # Into an existing directory, under its own name.
        self.run_on(name, f'mkdir {scratch}/into')
        self.crcache('cp', src, f'{name}:{scratch}/into')
        result = self.run_on(name, f'stat -c %a {scratch}/into/run.sh')
        self.assertEqual('751\n', result.stdout)

    def test_file_out_keeps_content_and_mode(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        self.run_on(name, f"printf 'one\\ntwo\\n' > {scratch}/f; "
                    f'chmod 640 {scratch}/f')
        dst = os.path.join(self.world.home, 'f.copy')
        self.crcache('cp', f'{name}:{scratch}/f', dst)
        with open(dst) as f:
            self.assertEqual('one\ntwo\n', f.read())
        self.assertEqual(0o640, file_mode(dst))
        into = os.path.join(self.world.home, 'into')
        os.mkdir(into)
        self.crcache('cp', f'{name}:{scratch}/f', into)
        self.assertEqual(0o640, file_mode(os.path.join(into, 'f')))

    def test_binary_file_round_trip(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        src = os.path.join(self.world.home, 'random.bin')
        data = os.urandom(3 << 20) + bytes(range(256))
        write_file(src, data, 0o600)
        self.crcache('cp', src, f'{name}:{scratch}/random.bin')
        dst = os.path.join(self.world.home, 'random.back')
        self.crcache('cp', f'{name}:{scratch}/random.bin', dst)
        with open(dst, 'rb') as f:
            self.assertEqual(hashlib.sha256(data).hexdigest(),
                             hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(0o600, file_mode(dst))

    def test_tree_round_trip_keeps_modes(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        tree = self.local_tree()
        expected = local_listing(tree)
        self.crcache('cp', '-r', tree, f'{name}:{scratch}')
        self.assertEqual(expected,
                         self.remote_listing(name, f'{scratch}/tree'))
        target = os.path.join(self.world.home, 'target')
        os.mkdir(target)
        self.crcache('cp', '-r', f'{name}:{scratch}/tree', target)
        self.assertEqual(expected,
                         local_listing(os.path.join(target, 'tree')))
        # To a new name: the tree lands as that name.
        renamed = os.path.join(self.world.home, 'renamed')
        self.crcache('cp', '-r', f'{name}:{scratch}/tree', renamed)
        self.assertEqual(expected, local_listing(renamed))

    def test_links_inside_a_tree_are_kept(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        tree = os.path.join(self.world.project, 't')
        os.mkdir(tree)
        write_file(os.path.join(tree, 'f'), 'ok\n', 0o644)
        os.symlink('f', os.path.join(tree, 'link'))
        self.crcache('cp', '-r', tree, f'{name}:{scratch}')
        self.assertEqual('f\nok\n', self.run_on(
            name, f'readlink {scratch}/t/link; cat {scratch}/t/link').stdout)
        back = os.path.join(self.world.home, 'back')
        self.crcache('cp', '-r', f'{name}:{scratch}/t', back)
        self.assertEqual('f', os.readlink(os.path.join(back, 'link')))

    def test_relative_paths_are_where_commands_run(self) -> None:
        """A relative instance path in cp means what it means to run."""
        name = self.acquire_one()
        relative = f'crcache-kit-{uuid.uuid4().hex}'
        self.addCleanup(self.world.run, 'run', name, 'rm', '-f', relative)
        src = os.path.join(self.world.home, 'data.txt')
        write_file(src, 'data\n', 0o640)
        self.crcache('cp', src, f'{name}:{relative}')
        self.assertEqual('data\n640\n', self.run_on(
            name, f'cat {relative}; stat -c %a {relative}').stdout)
        dst = os.path.join(self.world.home, 'back.txt')
        self.crcache('cp', f'{name}:{relative}', dst)
        with open(dst) as f:
            self.assertEqual('data\n', f.read())

    def test_missing_paths_name_the_instance(self) -> None:
        """``crcache: INSTANCE:PATH: reason``, as the user wrote it."""
        name = self.acquire_one()
        scratch = self.scratch(name)
        dst = os.path.join(self.world.home, 'dst')
        for path in (f'{scratch}/nosuch', 'crcache-kit-nosuch',
                     '-crcache-kit-nosuch'):
            for flags in ((), ('-r',)):
                result = self.crcache('cp', *flags, f'{name}:{path}', dst,
                                      expect=None)
                self.assertEqual(
                    (1, f'crcache: {name}:{path}: no such file or '
                     'directory\n'),
                    (result.returncode, result.stderr), str(result))
        self.assertFalse(os.path.lexists(dst))
        src = os.path.join(self.world.home, 'data.txt')
        write_file(src, 'data\n', 0o644)
        tree = self.local_tree()
        for flags, what in (((), src), (('-r',), tree)):
            for parent in (f'{scratch}/no/such', 'crcache-kit-no/such',
                           '-crcache-kit-no'):
                result = self.crcache('cp', *flags, what,
                                      f'{name}:{parent}/x', expect=None)
                self.assertEqual(
                    (1, f'crcache: {name}:{parent}: no such directory\n'),
                    (result.returncode, result.stderr), str(result))

    def test_directories_need_r(self) -> None:
        name = self.acquire_one()
        scratch = self.scratch(name)
        tree = self.local_tree()
        result = self.crcache('cp', tree, f'{name}:{scratch}', expect=None)
        self.assertOneLineError(result, tree, '-r')
        self.assertEqual('', self.run_on(name, f'ls -A {scratch}').stdout)
        self.run_on(name, f'mkdir {scratch}/d && echo x > {scratch}/d/f')
        dst = os.path.join(self.world.home, 'd')
        result = self.crcache('cp', f'{name}:{scratch}/d', dst, expect=None)
        self.assertEqual(
            (1, f'crcache: {name}:{scratch}/d: is a directory (use -r to '
             'copy directories)\n'),
            (result.returncode, result.stderr), str(result))
        self.assertFalse(os.path.lexists(dst))
