"""Tests for crcache.tarcopy.extract: untrusted archives from an instance.

Each hostile archive is built in memory and extracted into ``dest`` inside
a scratch directory that also holds files the archive must not touch: a
sibling directory ``outside`` and a file ``dest/victim`` next to where
the copy lands (``crcache cp inst:base dir`` must only create
``dir/base``). After a refusal, everything but ``dest/base`` must be
exactly as before.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile

import fixtures
import testtools

from crcache import cmdline
from crcache import exceptions
from crcache import process
from crcache import tarcopy
from crcache.sources.base import BackendSource

BASE = 'base'


def member(name: str, type: bytes = tarfile.REGTYPE, mode: int = 0o644,
           linkname: str = '', mtime: int = 1_500_000_000
           ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type
    info.mode = mode
    info.linkname = linkname
    info.mtime = mtime
    return info


def archive(*entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]
            ) -> io.BytesIO:
    """A tar stream of ``entries``; a file entry is (info, data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w',
                      format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(entry)
    buf.seek(0)
    return buf


def directory(name: str, mode: int = 0o755) -> tarfile.TarInfo:
    return member(name, tarfile.DIRTYPE, mode)


def file(name: str, data: bytes = b'data', mode: int = 0o644
         ) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, mode=mode), data


def symlink(name: str, target: str) -> tarfile.TarInfo:
    return member(name, tarfile.SYMTYPE, 0o777, linkname=target)


def hardlink(name: str, target: str) -> tarfile.TarInfo:
    return member(name, tarfile.LNKTYPE, linkname=target)


class TarcopyTestCase(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.top = os.path.realpath(self.useFixture(fixtures.TempDir()).path)
        self.dest = os.path.join(self.top, 'dest')
        self.outside = os.path.join(self.top, 'outside')
        os.mkdir(self.dest)
        os.mkdir(self.outside)
        self.secret = os.path.join(self.outside, 'secret')
        self.victim = os.path.join(self.dest, 'victim')
        for path in (self.secret, self.victim):
            with open(path, 'w') as f:
                f.write('precious\n')
            os.chmod(path, 0o600)

    def extract(self, stream: io.BytesIO, recursive: bool = True) -> None:
        tarcopy.extract(stream, self.dest, BASE, recursive, 'inst:base')

    def snapshot(self) -> dict[str, tuple]:
        """Every path under top except dest/base, with what it holds."""
        result = {}
        skip = os.path.join(self.dest, BASE)
        for dirpath, dirnames, filenames in os.walk(self.top):
            if dirpath == self.dest and BASE in dirnames:
                dirnames.remove(BASE)
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if path == skip:
                    continue
                st = os.lstat(path)
                content = None
                links = None
                if stat.S_ISREG(st.st_mode):
                    links = st.st_nlink
                    with open(path, 'rb') as f:
                        content = f.read()
                elif stat.S_ISLNK(st.st_mode):
                    content = os.readlink(path)
                result[os.path.relpath(path, self.top)] = (
                    st.st_mode, links, content)
        return result


class TestHostileArchives(TarcopyTestCase):

    def assertRefused(self, stream: io.BytesIO,
                      recursive: bool = True) -> None:
        before = self.snapshot()
        self.assertRaises(exceptions.CopyError, self.extract, stream,
                          recursive)
        self.assertEqual(before, self.snapshot())

    def test_absolute_name(self) -> None:
        self.assertRefused(archive(
            file(os.path.join(self.outside, 'evil'))))
        self.assertFalse(os.path.lexists(os.path.join(self.outside, 'evil')))

    def test_absolute_name_under_base(self) -> None:
        self.assertRefused(archive(file('/' + BASE + '/evil')))

    def test_dotdot_out_of_destination(self) -> None:
        self.assertRefused(archive(
            directory(BASE), file(BASE + '/../../outside/evil')))
        self.assertFalse(os.path.lexists(os.path.join(self.outside, 'evil')))

    def test_dotdot_onto_a_sibling(self) -> None:
        self.assertRefused(archive(
            directory(BASE), file(BASE + '/../victim', b'pwned\n')))

    def test_member_outside_top_level_name(self) -> None:
        self.assertRefused(archive(directory(BASE), file('other/evil')))
        self.assertFalse(os.path.lexists(os.path.join(self.dest, 'other')))

    def test_member_overwriting_a_sibling_by_name(self) -> None:
        self.assertRefused(archive(file('victim', b'pwned\n')))

    def test_dot_slash_prefix_is_not_the_top_level_name(self) -> None:
        self.assertRefused(archive(file('./victim', b'pwned\n')))

    def test_symlink_outside_then_write_through_it(self) -> None:
        self.assertRefused(archive(
            directory(BASE), symlink(BASE + '/link', '../../outside'),
            file(BASE + '/link/evil')))
        self.assertFalse(os.path.lexists(os.path.join(self.outside, 'evil')))

    def test_absolute_symlink_then_write_through_it(self) -> None:
        self.assertRefused(archive(
            directory(BASE), symlink(BASE + '/link', self.outside),
            file(BASE + '/link/evil')))
        self.assertFalse(os.path.lexists(os.path.join(self.outside, 'evil')))

    def test_symlink_chain_out(self) -> None:
        # a -> b is harmless until b -> ../.. is added.
        self.assertRefused(archive(
            directory(BASE), symlink(BASE + '/a', 'b'),
            symlink(BASE + '/b', '../..'),
            file(BASE + '/a/outside/evil')))
        self.assertFalse(os.path.lexists(os.path.join(self.outside, 'evil')))

    def test_symlink_to_destination_then_write_through_it(self) -> None:
        # The link stays inside dest but leaves the copy: writing through
        # it would replace dest/victim, a file the user never copied.
        self.assertRefused(archive(
            directory(BASE), symlink(BASE + '/up', '..'),
            file(BASE + '/up/victim', b'pwned\n')))

    def test_top_level_symlink_to_destination(self) -> None:
        self.assertRefused(archive(
            symlink(BASE, '.'), file(BASE + '/victim', b'pwned\n')))

    def test_hard_link_to_outside(self) -> None:
        self.assertRefused(archive(
            directory(BASE), hardlink(BASE + '/hl', '../outside/secret')))
        self.assertEqual(1, os.stat(self.secret).st_nlink)

    def test_absolute_hard_link(self) -> None:
        self.assertRefused(archive(
            directory(BASE), hardlink(BASE + '/hl', self.secret)))
        self.assertEqual(1, os.stat(self.secret).st_nlink)

    def test_hard_link_through_outside_symlink(self) -> None:
        self.assertRefused(archive(
            directory(BASE), symlink(BASE + '/link', '../../outside'),
            hardlink(BASE + '/hl', BASE + '/link/secret')))
        self.assertEqual(1, os.stat(self.secret).st_nlink)

    def test_hard_link_to_sibling_then_overwrite(self) -> None:
        # A hard link to dest/victim followed by a file of the same name
        # would write into victim's inode (and chmod it).
        self.assertRefused(archive(
            directory(BASE), hardlink(BASE + '/hl', 'victim'),
            file(BASE + '/hl', b'pwned\n', mode=0o777)))
        self.assertEqual(1, os.stat(self.victim).st_nlink)

    def test_hard_link_to_sibling(self) -> None:
        # Even alone, the link would apply its mode to dest/victim.
        link = hardlink(BASE + '/hl', 'victim')
        link.mode = 0o777
        self.assertRefused(archive(directory(BASE), link))
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.victim).st_mode))

    def test_character_device(self) -> None:
        dev = member(BASE + '/null', tarfile.CHRTYPE, 0o666)
        dev.devmajor, dev.devminor = 1, 3
        self.assertRefused(archive(directory(BASE), dev))
        self.assertFalse(os.path.lexists(os.path.join(self.dest, BASE,
                                                      'null')))

    def test_block_device(self) -> None:
        dev = member(BASE + '/sda', tarfile.BLKTYPE, 0o660)
        dev.devmajor, dev.devminor = 8, 0
        self.assertRefused(archive(directory(BASE), dev))
        self.assertFalse(os.path.lexists(os.path.join(self.dest, BASE,
                                                      'sda')))

    def test_fifo(self) -> None:
        self.assertRefused(archive(
            directory(BASE), member(BASE + '/fifo', tarfile.FIFOTYPE)))
        self.assertFalse(os.path.lexists(os.path.join(self.dest, BASE,
                                                      'fifo')))

    def test_directory_without_recursive(self) -> None:
        self.assertRefused(archive(directory(BASE), file(BASE + '/f')),
                           recursive=False)
        self.assertFalse(os.path.lexists(os.path.join(self.dest, BASE)))

    def test_empty_archive(self) -> None:
        self.assertRefused(archive())

    def test_not_an_archive(self) -> None:
        self.assertRefused(io.BytesIO(b'this is not a tar archive' * 40))

    def test_truncated_archive(self) -> None:
        data = archive(file(BASE, b'x' * 10000)).getvalue()[:2048]
        self.assertRefused(io.BytesIO(data))


class TestGoodArchives(TarcopyTestCase):

    def mode(self, *parts: str) -> int:
        return stat.S_IMODE(os.lstat(os.path.join(self.dest, *parts))
                            .st_mode)

    def read(self, *parts: str) -> bytes:
        with open(os.path.join(self.dest, *parts), 'rb') as f:
            return f.read()

    def test_single_file(self) -> None:
        self.extract(archive(file(BASE, b'hello\n', 0o640)),
                     recursive=False)
        self.assertEqual(b'hello\n', self.read(BASE))
        self.assertEqual(0o640, self.mode(BASE))
        self.assertEqual(os.getuid(),
                         os.stat(os.path.join(self.dest, BASE)).st_uid)

    def test_modes_kept_including_group_and_other_write(self) -> None:
        self.extract(archive(
            directory(BASE, 0o775), file(BASE + '/gw', mode=0o664),
            file(BASE + '/ow', mode=0o666), directory(BASE + '/d', 0o777),
            file(BASE + '/x', mode=0o750)))
        self.assertEqual(0o775, self.mode(BASE))
        self.assertEqual(0o664, self.mode(BASE, 'gw'))
        self.assertEqual(0o666, self.mode(BASE, 'ow'))
        self.assertEqual(0o777, self.mode(BASE, 'd'))
        self.assertEqual(0o750, self.mode(BASE, 'x'))

    def test_set_id_bits_dropped(self) -> None:
        self.extract(archive(
            directory(BASE), file(BASE + '/suid', mode=0o4755),
            file(BASE + '/sgid', mode=0o2755),
            file(BASE + '/both', mode=0o6775)))
        self.assertEqual(0o755, self.mode(BASE, 'suid'))
        self.assertEqual(0o755, self.mode(BASE, 'sgid'))
        self.assertEqual(0o775, self.mode(BASE, 'both'))

    def test_read_only_directories(self) -> None:
        self.extract(archive(
            directory(BASE, 0o555), directory(BASE + '/sub', 0o500),
            file(BASE + '/sub/f', b'inside\n', 0o444),
            file(BASE + '/g', b'top\n', 0o400)))
        self.addCleanup(os.chmod, os.path.join(self.dest, BASE), 0o755)
        self.addCleanup(os.chmod, os.path.join(self.dest, BASE, 'sub'),
                        0o755)
        self.assertEqual(b'inside\n', self.read(BASE, 'sub', 'f'))
        self.assertEqual(b'top\n', self.read(BASE, 'g'))
        self.assertEqual(0o555, self.mode(BASE))
        self.assertEqual(0o500, self.mode(BASE, 'sub'))
        self.assertEqual(0o444, self.mode(BASE, 'sub', 'f'))
        self.assertEqual(0o400, self.mode(BASE, 'g'))

    def test_times_kept(self) -> None:
        d = directory(BASE)
        d.mtime = 1_000_000_000
        f, data = file(BASE + '/f')
        f.mtime = 1_200_000_000
        self.extract(archive(d, (f, data)))
        self.assertEqual(1_000_000_000, int(os.stat(
            os.path.join(self.dest, BASE)).st_mtime))
        self.assertEqual(1_200_000_000, int(os.stat(
            os.path.join(self.dest, BASE, 'f')).st_mtime))

    def test_links_inside_the_copy(self) -> None:
        self.extract(archive(
            directory(BASE), file(BASE + '/a', b'A'),
            symlink(BASE + '/s', 'a'), directory(BASE + '/sub'),
            symlink(BASE + '/sub/up', '../a'),
            hardlink(BASE + '/h', BASE + '/a')))
        self.assertEqual('a', os.readlink(os.path.join(self.dest, BASE,
                                                       's')))
        self.assertEqual(b'A', self.read(BASE, 'sub', 'up'))
        self.assertEqual(os.stat(os.path.join(self.dest, BASE, 'a')).st_ino,
                         os.stat(os.path.join(self.dest, BASE, 'h')).st_ino)

    def test_nothing_else_touched(self) -> None:
        before = self.snapshot()
        self.extract(archive(directory(BASE), file(BASE + '/f')))
        self.assertEqual(before, self.snapshot())


class ShellSource(BackendSource):
    """Runs commands with /bin/sh in a directory standing for a remote home.

    It has no copy methods of its own, so cp goes through tarcopy exactly
    as it does for ssh and docker instances.
    """

    def __init__(self, home: str, path: str) -> None:
        super().__init__('shell', None, lambda name: None)
        self.home = home
        self.path = path

    def provision(self, names):
        return {name: {} for name in names}

    def discard(self, refs):
        return None

    def run(self, ref, argv, stdin, stdout, stderr):
        env = dict(os.environ, PATH=self.path)
        return process.run(['/bin/sh', '-c', cmdline.join(argv)], stdin,
                           stdout, stderr, cwd=self.home, env=env)


class TestCopyOverRun(testtools.TestCase):
    """copy_in and copy_out through a shell, with GNU and busybox tar."""

    def setUp(self) -> None:
        super().setUp()
        self.local = self.useFixture(fixtures.TempDir()).path
        self.remote = self.useFixture(fixtures.TempDir()).path
        self.tree = os.path.join(self.local, 'tree')
        os.makedirs(os.path.join(self.tree, 'sub'))
        with open(os.path.join(self.tree, 'sub', 'x.sh'), 'w') as f:
            f.write('#!/bin/sh\necho x\n')
        os.chmod(os.path.join(self.tree, 'sub', 'x.sh'), 0o751)
        with open(os.path.join(self.tree, 'shared'), 'w') as f:
            f.write('group writable')
        os.chmod(os.path.join(self.tree, 'shared'), 0o664)
        os.symlink('sub/x.sh', os.path.join(self.tree, 'link'))

    def sources(self) -> list[ShellSource]:
        found = [ShellSource(self.remote, '/usr/bin:/bin')]
        busybox = '/bin/busybox'
        if os.path.exists(busybox):
            bin_dir = self.useFixture(fixtures.TempDir()).path
            for tool in ('tar', 'mktemp', 'dirname', 'basename', 'mv', 'rm'):
                os.symlink(busybox, os.path.join(bin_dir, tool))
            found.append(ShellSource(self.remote, bin_dir + ':/usr/bin:/bin'))
        return found

    def assertSameTree(self, left: str, right: str) -> None:
        for root, dirs, files in os.walk(left):
            rel = os.path.relpath(root, left)
            for name in dirs + files:
                a = os.path.join(root, name)
                b = os.path.join(right, rel, name)
                self.assertEqual(os.path.islink(a), os.path.islink(b), b)
                if os.path.islink(a):
                    self.assertEqual(os.readlink(a), os.readlink(b))
                    continue
                self.assertEqual(stat.S_IMODE(os.stat(a).st_mode),
                                 stat.S_IMODE(os.stat(b).st_mode), b)
                if os.path.isfile(a):
                    with open(a, 'rb') as fa, open(b, 'rb') as fb:
                        self.assertEqual(fa.read(), fb.read())

    def test_directory_round_trip(self) -> None:
        for i, source in enumerate(self.sources()):
            for d in os.listdir(self.remote):
                shutil.rmtree(os.path.join(self.remote, d))
            back = os.path.join(self.local, f'back-{i}')
            source.copy_in({}, self.tree, 'copied', recursive=True)
            self.assertSameTree(self.tree, os.path.join(self.remote,
                                                        'copied'))
            source.copy_out({}, 'copied', back, recursive=True)
            self.assertSameTree(self.tree, back)

    def test_into_existing_directory(self) -> None:
        for source in self.sources():
            os.makedirs(os.path.join(self.remote, 'dest'), exist_ok=True)
            source.copy_in({}, os.path.join(self.tree, 'shared'), 'dest',
                           recursive=False)
            with open(os.path.join(self.remote, 'dest', 'shared')) as f:
                self.assertEqual('group writable', f.read())
            out = os.path.join(self.local, 'out')
            os.makedirs(out, exist_ok=True)
            source.copy_out({}, 'dest/shared', out, recursive=False)
            self.assertEqual(0o664, stat.S_IMODE(os.stat(
                os.path.join(out, 'shared')).st_mode))

    def test_directory_needs_recursive(self) -> None:
        for source in self.sources():
            self.assertRaises(exceptions.CopyError, source.copy_in, {},
                              self.tree, 'x', False)
            os.makedirs(os.path.join(self.remote, 'adir'), exist_ok=True)
            err = self.assertRaises(exceptions.CopyError, source.copy_out,
                                    {}, 'adir', self.local, False)
            self.assertIn('use -r', str(err))

    def test_missing_remote_file(self) -> None:
        for source in self.sources():
            err = self.assertRaises(exceptions.CopyError, source.copy_out,
                                    {}, 'nosuch', self.local, False)
            self.assertIn('nosuch: no such file or directory', str(err))

    def test_missing_remote_parent(self) -> None:
        for source in self.sources():
            err = self.assertRaises(exceptions.CopyError, source.copy_in,
                                    {}, self.tree, 'no/such/dir', True)
            self.assertIn('no/such: no such directory', str(err))

    def test_link_named_without_r_is_followed(self) -> None:
        for source in self.sources():
            source.copy_in({}, os.path.join(self.tree, 'link'), 'followed',
                           recursive=False)
            target = os.path.join(self.remote, 'followed')
            self.assertFalse(os.path.islink(target))
            with open(target) as f:
                self.assertEqual('#!/bin/sh\necho x\n', f.read())
