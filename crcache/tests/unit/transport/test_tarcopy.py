"""Tests for transport.untar.extract: untrusted archives from an instance.

Each hostile archive is built in memory and extracted into ``dest`` inside
a scratch directory that also holds files the archive must not touch: a
sibling directory ``outside`` (with a file ``secret`` and a directory
``sub``) and a file ``dest/victim`` next to where the copy lands
(``crcache cp inst:base dir`` must only create ``dir/base``). After a
refusal, everything but ``dest/base`` must be exactly as before: contents,
modes, owners and times.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile

import fixtures
import testtools

from crcache.transport import cmdline
from crcache import exceptions
from crcache.transport import process
from crcache import progress
from crcache.transport import tarcopy
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
        self.sub = os.path.join(self.outside, 'sub')
        os.mkdir(self.sub, 0o700)
        for path in (self.secret, self.victim):
            with open(path, 'w') as f:
                f.write('precious\n')
            os.chmod(path, 0o600)
        for path in (self.secret, self.sub, self.outside):
            if os.geteuid() == 0:
                # Someone else's: an extraction applying owners as root
                # would make them root's.
                os.chown(path, 4321, 4321)
            os.utime(path, (1_000_000, 1_000_000))

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
                # dest's own time changes as the copy lands in it.
                mtime = None if path == self.dest else st.st_mtime_ns
                result[os.path.relpath(path, self.top)] = (
                    st.st_mode, st.st_uid, st.st_gid, mtime, links, content)
        return result

    def links_out(self) -> list[str]:
        """Links in the copy that lead outside it."""
        root = os.path.join(self.dest, BASE)
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if os.path.islink(path) and not (
                        real == root or real.startswith(root + os.sep)):
                    found.append(path)
        return found


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


def escape(at: str, via: str,
           to: str = 'outside/secret') -> list[tarfile.TarInfo]:
    """Links that re-point: ``at`` ends up leading to ``to`` outside.

    ``at`` -> ``[../]via/via/../../to`` (as many ``via`` as ``..``) reads
    as inside, and resolves inside when it is made, as ``via`` points
    deeper into the copy then; ``via`` is then re-pointed to ``.``,
    inside too, and ``at`` climbs out to ``to``, a path relative to the
    directory holding ``dest``.
    """
    at_dir, via_dir = at.rsplit('/', 1)[0], via.rsplit('/', 1)[0]
    assert (at_dir + '/').startswith(via_dir + '/'), (at, via)
    prefix = '../' * (at_dir.count('/') - via_dir.count('/'))
    up = via_dir.count('/') + 2  # from via's directory to dest's parent
    hops = '/'.join([via.rsplit('/', 1)[-1]] * up)
    climb = '/'.join(['..'] * up)
    return [symlink(via, 'x/y'),
            symlink(at, f'{prefix}{hops}/{climb}/{to}'),
            symlink(via, '.')]


class TestRepointedLinks(TarcopyTestCase):
    """Links re-pointed after their check must not lead a write out.

    The archives of issue 8: each makes a link that is inside when made
    and leads outside once another link it goes through is re-pointed
    (or starts from a link already in the destination, or hard-links a
    link), then has a member written at or through it.
    """

    def assertRefused(self, stream: io.BytesIO, name: str,
                      *reasons: str) -> exceptions.InstancePathError:
        before = self.snapshot()
        links_before = self.links_out()
        err = self.assertRaises(exceptions.InstancePathError, self.extract,
                                stream)
        self.assertThat(str(err), testtools.matchers.StartsWith(
            f'inst:base: refused archive member {name!r}: '))
        for reason in reasons:
            self.assertIn(reason, str(err))
        self.assertEqual(before, self.snapshot())
        # Including none the archive made: the copy is no way out.
        self.assertEqual(links_before, self.links_out())
        return err

    def test_escape_chain_really_leads_out(self) -> None:
        # The archives below are only as good as this chain: made by hand,
        # it does lead to the secret, and looks inside until re-pointed.
        os.makedirs(os.path.join(self.dest, BASE, 'd1', 'd2', 'd3'))
        for at, via in ((BASE + '/a', BASE + '/c'),
                        (BASE + '/d1/d2/d3/a', BASE + '/d1/d2/d3/c'),
                        (BASE + '/d1/d2/a', BASE + '/c'),
                        (BASE + '/d1/d2/a', BASE + '/d1/c')):
            first, made, repointed = escape(at, via)
            a, c = (os.path.join(self.dest, name) for name in (at, via))
            os.symlink(first.linkname, c)
            os.symlink(made.linkname, a)
            self.assertTrue(os.path.realpath(a).startswith(
                os.path.join(self.dest, BASE) + os.sep), made.linkname)
            os.unlink(c)
            os.symlink(repointed.linkname, c)
            self.assertEqual(self.secret, os.path.realpath(a),
                             made.linkname)
            os.unlink(a)
            os.unlink(c)

    def test_directory_member_at_a_repointed_link(self) -> None:
        self.assertRefused(archive(
            directory(BASE), *escape(BASE + '/a', BASE + '/c'),
            directory(BASE + '/a', 0o777)), BASE + '/a', 'symbolic link')

    def test_directory_member_at_a_repointed_link_deep(self) -> None:
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/d1'),
            directory(BASE + '/d1/d2'), directory(BASE + '/d1/d2/d3'),
            *escape(BASE + '/d1/d2/d3/a', BASE + '/d1/d2/d3/c'),
            directory(BASE + '/d1/d2/d3/a', 0o777)), BASE + '/d1/d2/d3/a')

    def test_link_deep_through_a_repointed_link_at_the_top(self) -> None:
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/d1'),
            directory(BASE + '/d1/d2'),
            *escape(BASE + '/d1/d2/a', BASE + '/c'),
            directory(BASE + '/d1/d2/a', 0o777)), BASE + '/d1/d2/a')

    def test_repointed_link_to_an_outside_directory(self) -> None:
        self.assertRefused(archive(
            directory(BASE),
            *escape(BASE + '/a', BASE + '/c', to='outside/sub'),
            directory(BASE + '/a', 0o777), file(BASE + '/a/evil')),
            BASE + '/a')
        self.assertEqual([], os.listdir(self.sub))

    def test_file_member_through_a_repointed_link(self) -> None:
        self.assertRefused(archive(
            directory(BASE),
            *escape(BASE + '/a', BASE + '/c', to='outside/sub'),
            file(BASE + '/a/evil')), BASE + '/a/evil', f"'{BASE}/a' is")
        self.assertEqual([], os.listdir(self.sub))

    def test_directory_member_under_a_link_to_a_repointed_link(self) -> None:
        # p leads to the real directory q, inside; q/a escapes. Writing
        # p/a must not follow p, nor q/a.
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/q'),
            symlink(BASE + '/p', 'q'),
            *escape(BASE + '/q/a', BASE + '/q/c'),
            directory(BASE + '/p/a', 0o777)), BASE + '/p/a',
            f"'{BASE}/p' is a symbolic link")

    def test_repointed_link_left_behind(self) -> None:
        # Nothing is written through it, but the copy would hold a link
        # out: the check at the end finds it.
        self.assertRefused(archive(
            directory(BASE), *escape(BASE + '/a', BASE + '/c'),
            file(BASE + '/f')), BASE + '/a', 'leads outside the copy')
        self.assertFalse(os.path.lexists(os.path.join(self.dest, BASE,
                                                      'a')))

    def test_repointed_link_left_behind_deep(self) -> None:
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/d1'),
            directory(BASE + '/d1/d2'),
            *escape(BASE + '/d1/d2/a', BASE + '/d1/c')),
            BASE + '/d1/d2/a', 'leads outside the copy')

    def test_link_replaced_by_a_directory_and_back(self) -> None:
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/x'),
            symlink(BASE + '/c', 'x'),
            symlink(BASE + '/a', 'c/c/../../outside/secret'),
            directory(BASE + '/c'), symlink(BASE + '/c', '.'),
            directory(BASE + '/a', 0o777)), BASE + '/c', 'symbolic link')

    def test_directory_replaced_by_a_link(self) -> None:
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/d'),
            symlink(BASE + '/d', '.'), file(BASE + '/d/f')), BASE + '/d',
            'a directory of that name')

    def test_hard_link_to_a_link(self) -> None:
        # A hard link to a symbolic link is that link, read from another
        # directory: '../../outside/secret' from d1/d2 is inside, from
        # the top it is not.
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/d1'),
            directory(BASE + '/d1/d2'),
            symlink(BASE + '/d1/d2/s', '../../outside/secret'),
            hardlink(BASE + '/h', BASE + '/d1/d2/s')), BASE + '/h',
            'not a file written earlier')
        self.assertEqual(1, os.stat(self.secret).st_nlink)

    def test_hard_link_to_a_file_replaced_by_a_link(self) -> None:
        link = hardlink(BASE + '/h', BASE + '/d1/d2/s')
        link.mode = 0o777
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/d1'),
            directory(BASE + '/d1/d2'), file(BASE + '/d1/d2/s'),
            symlink(BASE + '/d1/d2/s', '../../outside/secret'), link),
            BASE + '/h')

    def test_hard_link_to_a_repointed_link(self) -> None:
        self.assertRefused(archive(
            directory(BASE), file(BASE + '/f'),
            *escape(BASE + '/a', BASE + '/c'),
            hardlink(BASE + '/h', BASE + '/a')), BASE + '/h')

    def test_hard_link_through_a_repointed_link(self) -> None:
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/q'), file(BASE + '/q/f'),
            symlink(BASE + '/p', 'q'),
            hardlink(BASE + '/h', BASE + '/p/f')), BASE + '/h')

    def test_file_over_a_hard_link_writes_a_new_file(self) -> None:
        # Not refused: the file replaces the link instead of writing into
        # the inode it shares.
        self.extract(archive(
            directory(BASE), file(BASE + '/f', b'first'),
            hardlink(BASE + '/h', BASE + '/f'),
            file(BASE + '/h', b'second', mode=0o777)))
        with open(os.path.join(self.dest, BASE, 'f'), 'rb') as f:
            self.assertEqual(b'first', f.read())
        self.assertEqual(0o644, stat.S_IMODE(os.stat(
            os.path.join(self.dest, BASE, 'f')).st_mode))

    def test_directory_member_at_a_link_already_in_destination(self) -> None:
        base = os.path.join(self.dest, BASE)
        os.mkdir(base)
        os.symlink('../../outside/secret', os.path.join(base, 'x'))
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/x', 0o777)), BASE + '/x')

    def test_destination_copy_is_a_link_already(self) -> None:
        # dest/base itself is the user's link to a directory elsewhere.
        os.symlink('../outside/sub', os.path.join(self.dest, BASE))
        before = self.snapshot()
        err = self.assertRaises(exceptions.InstancePathError, self.extract,
                                archive(directory(BASE, 0o777),
                                        file(BASE + '/evil')))
        self.assertIn(f'refused archive member {BASE!r}', str(err))
        self.assertEqual(before, self.snapshot())
        self.assertEqual([], os.listdir(self.sub))

    def test_file_under_a_link_already_in_destination(self) -> None:
        base = os.path.join(self.dest, BASE)
        os.mkdir(base)
        os.symlink('../../outside/sub', os.path.join(base, 'x'))
        self.assertRefused(archive(
            directory(BASE), file(BASE + '/x/evil')), BASE + '/x/evil')
        self.assertEqual([], os.listdir(self.sub))

    def test_symlink_over_a_directory(self) -> None:
        self.assertRefused(archive(
            directory(BASE), directory(BASE + '/d'),
            symlink(BASE + '/d', '.')), BASE + '/d')

    def test_top_level_link_to_itself_then_directory(self) -> None:
        self.assertRefused(archive(
            symlink(BASE, BASE), directory(BASE, 0o777),
            file(BASE + '/f')), BASE)

    def test_relative_link_through_two_dots_in_parent(self) -> None:
        # 'x/..' reads as inside; with x -> '.' it is the destination.
        self.assertRefused(archive(
            directory(BASE), symlink(BASE + '/y', 'x/..'),
            symlink(BASE + '/x', '.')), BASE + '/y',
            'leads outside the copy')


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

    def test_merges_into_an_existing_copy(self) -> None:
        # As cp -r does: what is there stays, what the archive has wins,
        # and the directories take the archive's modes.
        base = os.path.join(self.dest, BASE)
        os.makedirs(os.path.join(base, 'sub'))
        for name in ('keep', 'sub/old', 'f'):
            with open(os.path.join(base, name), 'w') as f:
                f.write('mine')
        os.chmod(os.path.join(base, 'sub'), 0o500)
        self.addCleanup(os.chmod, os.path.join(base, 'sub'), 0o755)
        self.extract(archive(
            directory(BASE, 0o750), file(BASE + '/f', b'new'),
            directory(BASE + '/sub', 0o550),
            file(BASE + '/sub/g', b'g')))
        self.assertEqual(b'mine', self.read(BASE, 'keep'))
        self.assertEqual(b'mine', self.read(BASE, 'sub', 'old'))
        self.assertEqual(b'new', self.read(BASE, 'f'))
        self.assertEqual(b'g', self.read(BASE, 'sub', 'g'))
        self.assertEqual(0o750, self.mode(BASE))
        self.assertEqual(0o550, self.mode(BASE, 'sub'))

    def test_missing_parents_are_made(self) -> None:
        self.extract(archive(file(BASE + '/a/b/f', b'deep')))
        self.assertEqual(b'deep', self.read(BASE, 'a', 'b', 'f'))

    def test_link_replaced_by_a_file_is_not_written_through(self) -> None:
        self.extract(archive(
            directory(BASE), file(BASE + '/a', b'A'),
            symlink(BASE + '/s', 'a'), file(BASE + '/s', b'S', 0o600)))
        self.assertEqual(b'A', self.read(BASE, 'a'))
        self.assertEqual(0o644, self.mode(BASE, 'a'))
        self.assertFalse(os.path.islink(os.path.join(self.dest, BASE, 's')))
        self.assertEqual(b'S', self.read(BASE, 's'))

    def test_link_already_in_destination_is_replaced(self) -> None:
        # A file member replaces the user's link by the archive's file; it
        # never writes through it.
        base = os.path.join(self.dest, BASE)
        os.mkdir(base)
        os.symlink('../../outside/secret', os.path.join(base, 's'))
        before = self.snapshot()
        self.extract(archive(directory(BASE),
                             file(BASE + '/s', b'S', 0o777)))
        self.assertEqual(before, self.snapshot())
        self.assertFalse(os.path.islink(os.path.join(base, 's')))
        self.assertEqual(b'S', self.read(BASE, 's'))

    def test_hard_link_keeps_the_file_it_was_made_to(self) -> None:
        # A later file of the first name is a new file; the link keeps
        # the inode it joined.
        self.extract(archive(
            directory(BASE), file(BASE + '/f', b'one'),
            hardlink(BASE + '/h', BASE + '/f'), file(BASE + '/f', b'two'),
            hardlink(BASE + '/h2', BASE + '/f')))
        self.assertEqual(b'one', self.read(BASE, 'h'))
        self.assertEqual(b'two', self.read(BASE, 'h2'))
        self.assertEqual(
            os.stat(os.path.join(self.dest, BASE, 'f')).st_ino,
            os.stat(os.path.join(self.dest, BASE, 'h2')).st_ino)

    def test_nested_directory_times_kept(self) -> None:
        members = []
        for i, name in enumerate((BASE, BASE + '/a', BASE + '/a/b')):
            d = directory(name, 0o555)
            d.mtime = 1_000_000_000 + i
            members.append(d)
        self.extract(archive(*members, file(BASE + '/a/b/f'),
                             file(BASE + '/a/g')))
        for i, parts in enumerate(((BASE,), (BASE, 'a'),
                                   (BASE, 'a', 'b'))):
            path = os.path.join(self.dest, *parts)
            self.addCleanup(os.chmod, path, 0o755)
            self.assertEqual(1_000_000_000 + i, int(os.stat(path).st_mtime))
            self.assertEqual(0o555, self.mode(*parts))


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
            for tool in ('tar', 'mktemp', 'dirname', 'basename', 'mv', 'rm',
                         'cat', 'stat', 'chmod', 'touch'):
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

    def test_remote_paths_starting_with_a_dash(self) -> None:
        # Relative paths on the instance that tools could read as options.
        for i, source in enumerate(self.sources()):
            for entry in os.scandir(self.remote):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            os.mkdir(os.path.join(self.remote, '-into'))
            shared = os.path.join(self.tree, 'shared')
            source.copy_in({}, shared, '-f', recursive=False)
            source.copy_in({}, shared, '-into', recursive=False)
            source.copy_in({}, self.tree, '-tree', recursive=True)
            source.copy_in({}, self.tree, '-into', recursive=True)
            source.copy_in({}, self.tree, '-into/-deeper', recursive=True)
            for path in ('-f', '-into/shared'):
                with open(os.path.join(self.remote, path)) as f:
                    self.assertEqual('group writable', f.read())
            for path in ('-tree', '-into/tree', '-into/-deeper'):
                self.assertSameTree(self.tree,
                                    os.path.join(self.remote, path))
            back = os.path.join(self.local, f'back-{i}')
            os.mkdir(back)
            source.copy_out({}, '-f', os.path.join(back, 'f'), False)
            source.copy_out({}, '-into/shared', back, False)
            source.copy_out({}, '-tree', os.path.join(back, 't'), True)
            source.copy_out({}, '-into/-deeper', back, True)
            source.copy_out({}, '-tree/', os.path.join(back, 'u'), True)
            self.assertEqual(0o664, stat.S_IMODE(os.stat(
                os.path.join(back, 'f')).st_mode))
            self.assertEqual(0o664, stat.S_IMODE(os.stat(
                os.path.join(back, 'shared')).st_mode))
            for path in ('t', '-deeper', 'u'):
                self.assertSameTree(self.tree, os.path.join(back, path))
            err = self.assertRaises(exceptions.CopyError, source.copy_out,
                                    {}, '-nosuch', back, False)
            self.assertIn('-nosuch: no such file or directory', str(err))

    def test_copies_are_metered(self) -> None:
        big = os.path.join(self.tree, 'sub', 'big')
        with open(big, 'wb') as f:
            f.write(os.urandom(3 << 20))
        file_bytes = (3 << 20) + len('#!/bin/sh\necho x\n') + len(
            'group writable')
        for i, source in enumerate(self.sources()):
            # A file, read by the instance's side through our descriptor.
            with progress.metering(progress.Meter()) as meter:
                source.copy_in({}, big, f'big-{i}', recursive=False)
            self.assertEqual((3 << 20, 3 << 20), (meter.done, meter.total))
            # Written by it through our descriptor.
            back = os.path.join(self.local, f'big-{i}')
            with progress.metering(progress.Meter()) as meter:
                source.copy_out({}, f'big-{i}', back, recursive=False)
            self.assertEqual((3 << 20, 3 << 20), (meter.done, meter.total))
            # Trees: the archive sent (headers too), the files received.
            with progress.metering(progress.Meter()) as meter:
                source.copy_in({}, self.tree, f'tree-{i}', recursive=True)
            self.assertGreater(meter.done, file_bytes)
            self.assertLess(meter.done, file_bytes + 20 * 1024)
            self.assertIsNone(meter.total)
            with progress.metering(progress.Meter()) as meter:
                source.copy_out({}, f'tree-{i}', os.path.join(
                    self.local, f'tree-{i}'), recursive=True)
            self.assertEqual(file_bytes, meter.done)
        # Nothing counts outside a copy the cache reports.
        self.assertIs(progress.IDLE, progress.meter())

    def test_archive_stream_is_metered(self) -> None:
        with progress.metering(progress.Meter()) as meter:
            stream = tarcopy.archive_stream(self.tree, 'tree', follow=False)
        # Counted as it is read, wherever it is read.
        data = b''.join(stream)
        self.assertEqual(len(data), meter.done)
        dest = os.path.join(self.local, 'extracted')
        os.mkdir(dest)
        with progress.metering(progress.Meter()) as meter:
            tarcopy.extract(io.BytesIO(data), dest, 'tree', True, 'tree')
        self.assertEqual(len('#!/bin/sh\necho x\n') + len('group writable'),
                         meter.done)
