"""Tests for transport.localcopy.copy: ``cp -p`` and ``cp -rp`` locally."""

from __future__ import annotations

import os
import stat

import fixtures
import testtools

from crcache import exceptions
from crcache.transport import localcopy
from crcache import progress

MTIME = 1_300_000_000


class TestCopy(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.top = os.path.realpath(self.useFixture(fixtures.TempDir()).path)

    def path(self, *parts: str) -> str:
        return os.path.join(self.top, *parts)

    def write(self, rel: str, data: str = 'data\n', mode: int = 0o644
              ) -> str:
        path = self.path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(data)
        os.chmod(path, mode)
        os.utime(path, (MTIME, MTIME))
        return path

    def read(self, *parts: str) -> str:
        with open(self.path(*parts)) as f:
            return f.read()

    def mode(self, *parts: str) -> int:
        return stat.S_IMODE(os.lstat(self.path(*parts)).st_mode)

    def make_tree(self) -> str:
        """src/{f, sub/g, link -> f, dangling -> nowhere, abs -> /etc}."""
        src = self.path('src')
        self.write('src/f', 'f\n', 0o664)
        self.write('src/sub/g', 'g\n', 0o600)
        os.symlink('f', self.path('src', 'link'))
        os.symlink('nowhere', self.path('src', 'dangling'))
        os.symlink('/etc', self.path('src', 'abs'))
        os.chmod(self.path('src', 'sub'), 0o750)
        os.chmod(src, 0o775)
        return src

    # -- files ---------------------------------------------------------------

    def test_file_to_new_name(self) -> None:
        src = self.write('a', 'hello\n', 0o640)
        localcopy.copy(src, self.path('b'), recursive=False)
        self.assertEqual('hello\n', self.read('b'))
        self.assertEqual(0o640, self.mode('b'))
        self.assertEqual(MTIME, int(os.stat(self.path('b')).st_mtime))

    def test_file_into_existing_directory(self) -> None:
        src = self.write('a', 'hello\n')
        os.mkdir(self.path('dir'))
        localcopy.copy(src, self.path('dir'), recursive=False)
        self.assertEqual('hello\n', self.read('dir', 'a'))

    def test_file_replaces_existing_file(self) -> None:
        src = self.write('a', 'new\n', 0o600)
        self.write('b', 'old\n', 0o644)
        localcopy.copy(src, self.path('b'), recursive=False)
        self.assertEqual('new\n', self.read('b'))
        self.assertEqual(0o600, self.mode('b'))

    def test_modes_kept(self) -> None:
        for name, mode in (('gw', 0o664), ('ow', 0o666), ('x', 0o755),
                           ('ro', 0o400)):
            localcopy.copy(self.write(name, mode=mode), self.path(
                name + '.copy'), recursive=False)
            self.assertEqual(mode, self.mode(name + '.copy'), name)

    def test_missing_source(self) -> None:
        e = self.assertRaises(exceptions.CopyError, localcopy.copy,
                              self.path('nope'), self.path('b'), False)
        self.assertIn('nope', str(e))
        self.assertFalse(os.path.lexists(self.path('b')))

    def test_same_file(self) -> None:
        src = self.write('a')
        self.assertRaises(exceptions.CopyError, localcopy.copy, src,
                          self.top, False)
        self.assertEqual('data\n', self.read('a'))

    def test_missing_destination_directory(self) -> None:
        src = self.write('a')
        self.assertRaises(exceptions.CopyError, localcopy.copy, src,
                          self.path('no', 'such', 'b'), False)

    # -- directories -------------------------------------------------------

    def test_directory_needs_recursive(self) -> None:
        src = self.make_tree()
        e = self.assertRaises(exceptions.CopyError, localcopy.copy, src,
                              self.path('dst'), False)
        self.assertIn('-r', str(e))
        self.assertFalse(os.path.lexists(self.path('dst')))

    def test_directory_to_new_name(self) -> None:
        src = self.make_tree()
        localcopy.copy(src, self.path('dst'), recursive=True)
        self.assertEqual('f\n', self.read('dst', 'f'))
        self.assertEqual('g\n', self.read('dst', 'sub', 'g'))
        self.assertEqual(0o775, self.mode('dst'))
        self.assertEqual(0o750, self.mode('dst', 'sub'))
        self.assertEqual(0o664, self.mode('dst', 'f'))
        self.assertEqual(0o600, self.mode('dst', 'sub', 'g'))

    def test_directory_into_existing_directory(self) -> None:
        src = self.make_tree()
        os.mkdir(self.path('dst'))
        localcopy.copy(src, self.path('dst'), recursive=True)
        self.assertEqual('f\n', self.read('dst', 'src', 'f'))
        self.assertEqual('g\n', self.read('dst', 'src', 'sub', 'g'))

    def test_directory_merges_into_existing_copy(self) -> None:
        src = self.make_tree()
        self.write('dst/src/keep', 'kept\n')
        localcopy.copy(src, self.path('dst'), recursive=True)
        self.assertEqual('kept\n', self.read('dst', 'src', 'keep'))
        self.assertEqual('f\n', self.read('dst', 'src', 'f'))

    def test_symlinks_copied_as_links(self) -> None:
        src = self.make_tree()
        localcopy.copy(src, self.path('dst'), recursive=True)
        for name, target in (('link', 'f'), ('dangling', 'nowhere'),
                             ('abs', '/etc')):
            path = self.path('dst', name)
            self.assertTrue(os.path.islink(path), name)
            self.assertEqual(target, os.readlink(path))

    def test_directory_into_itself(self) -> None:
        src = self.make_tree()
        before = sorted(os.listdir(src))
        e = self.assertRaises(exceptions.CopyError, localcopy.copy, src,
                              self.path('src', 'sub'), True)
        self.assertIn('into itself', str(e))
        self.assertFalse(os.path.lexists(self.path('src', 'sub', 'src')))
        self.assertEqual(before, sorted(os.listdir(src)))

    def test_directory_onto_itself(self) -> None:
        src = self.make_tree()
        self.assertRaises(exceptions.CopyError, localcopy.copy, src,
                          src, True)
        self.assertFalse(os.path.lexists(self.path('src', 'src')))

    def test_directory_into_itself_by_new_name(self) -> None:
        src = self.make_tree()
        self.assertRaises(exceptions.CopyError, localcopy.copy, src,
                          self.path('src', 'copy'), True)
        self.assertFalse(os.path.lexists(self.path('src', 'copy')))

    def test_directory_into_itself_through_a_symlink(self) -> None:
        src = self.make_tree()
        os.symlink(src, self.path('alias'))
        self.assertRaises(exceptions.CopyError, localcopy.copy,
                          self.path('alias'), self.path('src', 'sub'), True)
        self.assertFalse(os.path.lexists(self.path('src', 'sub', 'alias')))

    def test_similar_prefix_is_not_itself(self) -> None:
        # src2 starts with "src" but is not inside it.
        src = self.make_tree()
        localcopy.copy(src, self.path('src2'), recursive=True)
        self.assertEqual('f\n', self.read('src2', 'f'))

    def test_directory_over_a_file(self) -> None:
        src = self.make_tree()
        os.mkdir(self.path('into'))
        self.write('into/src', 'file\n')
        self.assertRaises(exceptions.CopyError, localcopy.copy, src,
                          self.path('into'), True)
        self.assertEqual('file\n', self.read('into', 'src'))

    def test_read_only_directory(self) -> None:
        self.write('ro/f', 'f\n', 0o444)
        os.chmod(self.path('ro'), 0o555)
        self.addCleanup(os.chmod, self.path('ro'), 0o755)
        localcopy.copy(self.path('ro'), self.path('dst'), recursive=True)
        self.addCleanup(os.chmod, self.path('dst'), 0o755)
        self.assertEqual('f\n', self.read('dst', 'f'))
        self.assertEqual(0o555, self.mode('dst'))
        self.assertEqual(0o444, self.mode('dst', 'f'))

    def test_trailing_slash_on_source(self) -> None:
        src = self.make_tree()
        os.mkdir(self.path('dst'))
        localcopy.copy(src + '/', self.path('dst'), recursive=True)
        self.assertEqual('f\n', self.read('dst', 'src', 'f'))

    def test_copies_are_metered(self) -> None:
        big = self.write('big', 'x' * 100_000)
        with progress.metering(progress.Meter()) as meter:
            localcopy.copy(big, self.path('big2'), recursive=False)
        self.assertEqual((100_000, 100_000), (meter.done, meter.total))
        src = self.make_tree()
        with progress.metering(progress.Meter()) as meter:
            localcopy.copy(src, self.path('tree'), recursive=True)
        # The files' bytes (f and sub/g); links are not files.
        self.assertEqual(4, meter.done)
