"""``crcache cp`` from an instance that sends a hostile tar stream.

The instance is a real OpenSSH server whose login PATH starts with a
directory holding a fake ``tar``: asked to create an archive (what the
ssh source's ``cp`` runs there), it prints the archive the test crafted
and records that it did; anything else goes to the real tar. The crafted
archives make symbolic links that are inside when made and lead outside
once another link they go through is re-pointed, then write at or through
them. Whatever they do, the user must see one line naming the instance,
the path and the member, and nothing outside the destination may change:
not a mode bit, an owner, a time or a byte.

Also here: instance paths that start with ``-``, both ways, through the
same scripts with the real tar.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid

from crcache.tests.functional import base
from crcache.tests.functional import sshd
from crcache.tests.unit.transport.test_tarcopy import archive
from crcache.tests.unit.transport.test_tarcopy import directory
from crcache.tests.unit.transport.test_tarcopy import escape
from crcache.tests.unit.transport.test_tarcopy import file
from crcache.tests.unit.transport.test_tarcopy import hardlink
from crcache.tests.unit.transport.test_tarcopy import symlink

FAKE_TAR = '''#!/bin/sh
# tar on the test's instance: archives come from the test.
case "$1" in
-c)
  echo "$*" >> {dir}/served
  exec cat {dir}/archive.tar
  ;;
esac
exec {real} "$@"
'''


def snapshot(root: str, skip: str) -> dict[str, tuple]:
    """Everything under ``root`` but ``skip`` and below: type, mode,
    owner, time, link count, contents or link target."""
    found = {}
    for directory_, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(directory_, d) != skip]
        for entry in dirs + files:
            path = os.path.join(directory_, entry)
            if path == skip:
                continue
            st = os.lstat(path)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    content = f.read()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            record = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                      st.st_nlink, content)
            if path == os.path.dirname(skip):
                # The destination's own time and link count change as the
                # copy lands in it.
                record = record[:3] + (None, None) + record[5:]
            found[os.path.relpath(path, root)] = record
    return found


def links_out(copy: str) -> list[str]:
    """Links in ``copy`` that lead outside it."""
    found = []
    for directory_, dirs, files in os.walk(copy):
        for entry in dirs + files:
            path = os.path.join(directory_, entry)
            real = os.path.realpath(path)
            if not (real == copy or real.startswith(copy + os.sep)):
                found.append(path)
    return found


class SSHCopyTestCase(base.CLITestCase):
    """The source ``host``: a real sshd whose login PATH is ``self.bin``
    first, and its instance ``self.name``."""

    def setUp(self) -> None:
        super().setUp()
        base.require_program(self, sshd.SSHD, 'openssh-server')
        self.runtime = os.path.join(self.home, 'run')
        os.mkdir(self.runtime, 0o700)
        self.env['XDG_RUNTIME_DIR'] = self.runtime
        self.addCleanup(self._stop_helpers)
        # The login user may not be root: it reads the fake tar and the
        # archive, and finds the "instance" directory, in here.
        self.shared = tempfile.mkdtemp(prefix='crcache-hostile.')
        self.addCleanup(shutil.rmtree, self.shared, True)
        os.chmod(self.shared, 0o755)
        self.bin = os.path.join(self.shared, 'bin')
        os.mkdir(self.bin, 0o755)
        self.server = self.useFixture(sshd.SSHServer(
            extra_config=f'SetEnv PATH={self.bin}:/usr/bin:/bin'))
        known_hosts = os.path.join(self.home, 'known_hosts')
        with open(known_hosts, 'w') as f:
            f.write(self.server.known_hosts_line() + '\n')
        self.write_source('host', **self.server.source_keys(known_hosts))
        self.name = self.crcache('acquire', '-s', 'host').stdout.strip()

    def _stop_helpers(self) -> None:
        # The agent and connection holders this test's commands started.
        out = subprocess.run(
            ['pgrep', '-f', f'crcache.(agent|sshholder) {self.runtime}'],
            capture_output=True, text=True).stdout
        for pid in out.split():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass


class TestHostileArchives(SSHCopyTestCase):
    """Crafted archives of issue 8 through ``crcache cp -r``."""

    def setUp(self) -> None:
        super().setUp()
        real_tar = shutil.which('tar', path='/usr/bin:/bin')
        self.assertIsNotNone(real_tar)
        fake = os.path.join(self.bin, 'tar')
        with open(fake, 'w') as f:
            f.write(FAKE_TAR.format(dir=self.shared, real=real_tar))
        os.chmod(fake, 0o755)
        self.served = os.path.join(self.shared, 'served')
        # What the instance is asked to copy: it exists there, the fake
        # tar sends something else.
        self.src = os.path.join(self.shared, 'remote', 'dir')
        os.makedirs(self.src)
        os.chmod(os.path.dirname(self.src), 0o755)
        # The user's side: the destination ``dl`` beside things the copy
        # must not touch.
        self.area = os.path.join(self.home, 'area')
        self.dl = os.path.join(self.area, 'dl')
        self.outside = os.path.join(self.area, 'outside')
        self.secret = os.path.join(self.outside, 'secret')
        self.sub = os.path.join(self.outside, 'sub')
        os.makedirs(self.dl)
        os.makedirs(self.sub, 0o700)
        for path in (self.secret, os.path.join(self.dl, 'victim')):
            self.write_file(path, 'precious\n', 0o600)
        for path in (self.outside, self.secret, self.sub):
            if os.geteuid() == 0:
                # As root, applying the archive's owners would show here.
                os.chown(path, 4321, 4321)
            os.utime(path, (1_000_000, 1_000_000))

    def serve(self, *entries) -> None:
        """Make the instance's tar send an archive of ``entries``."""
        with open(os.path.join(self.shared, 'archive.tar'), 'wb') as f:
            f.write(archive(*entries).getvalue())
        os.chmod(os.path.join(self.shared, 'archive.tar'), 0o644)

    def served_count(self) -> int:
        try:
            with open(self.served) as f:
                return len(f.read().splitlines())
        except FileNotFoundError:
            return 0

    def assertRefused(self, member: str, *entries, into: str | None = None,
                      reason: str = '') -> None:
        """``cp -r`` of the crafted archive fails naming ``member``, and
        nothing outside the destination changes."""
        self.serve(*entries)
        into = into or self.dl
        copy = os.path.join(into, 'dir') if os.path.isdir(into) else into
        before = snapshot(self.area, copy)
        links_before = links_out(copy)
        served = self.served_count()
        result = self.crcache('cp', '-r', f'{self.name}:{self.src}', into,
                              expect=None)
        # The fake tar did send the archive: the test is not vacuous.
        self.assertEqual(served + 1, self.served_count(), str(result))
        self.assertEqual(1, result.returncode, str(result))
        self.assertOneLineError(
            result, f'crcache: {self.name}:{self.src}: refused archive '
            f'member {member!r}: {reason}')
        self.assertEqual(before, snapshot(self.area, copy))
        # Nor does the copy hold a new link out.
        self.assertEqual(links_before, links_out(copy))

    def test_good_archive_through_the_fake_tar(self) -> None:
        # The same path with a harmless archive is copied: what the tests
        # below see is the refusal of what they craft, nothing else.
        self.serve(directory('dir', 0o750), file('dir/f', b'ok\n', 0o640),
                   symlink('dir/l', 'f'))
        self.crcache('cp', '-r', f'{self.name}:{self.src}', self.dl)
        self.assertEqual(1, self.served_count())
        with open(os.path.join(self.dl, 'dir', 'l')) as f:
            self.assertEqual('ok\n', f.read())
        self.assertEqual(0o750, stat.S_IMODE(os.stat(
            os.path.join(self.dl, 'dir')).st_mode))

    def test_directory_member_at_a_repointed_link(self) -> None:
        # The chain of the issue: dir/a is inside when made, leads to the
        # secret once dir/c is re-pointed, and a directory member of that
        # name would chmod, utime (and as root chown) the secret.
        self.assertRefused(
            'dir/a', directory('dir'), *escape('dir/a', 'dir/c'),
            directory('dir/a', 0o777),
            reason='a symbolic link of that name is already there')

    def test_directory_member_at_a_repointed_link_deep(self) -> None:
        self.assertRefused(
            'dir/d1/d2/d3/a', directory('dir'), directory('dir/d1'),
            directory('dir/d1/d2'), directory('dir/d1/d2/d3'),
            *escape('dir/d1/d2/d3/a', 'dir/d1/d2/d3/c'),
            directory('dir/d1/d2/d3/a', 0o777))

    def test_deep_link_through_a_link_repointed_at_the_top(self) -> None:
        self.assertRefused(
            'dir/d1/d2/a', directory('dir'), directory('dir/d1'),
            directory('dir/d1/d2'), *escape('dir/d1/d2/a', 'dir/c'),
            directory('dir/d1/d2/a', 0o777))

    def test_directory_member_through_a_link(self) -> None:
        # p leads to the real directory q; q/a is re-pointed out. The
        # parent p is a link: refused before q/a is ever reached.
        self.assertRefused(
            'dir/p/a', directory('dir'), directory('dir/q'),
            symlink('dir/p', 'q'), *escape('dir/q/a', 'dir/q/c'),
            directory('dir/p/a', 0o777),
            reason="'dir/p' is a symbolic link, not a directory")

    def test_link_to_an_outside_directory_then_a_file_in_it(self) -> None:
        self.assertRefused(
            'dir/a', directory('dir'),
            *escape('dir/a', 'dir/c', to='outside/sub'),
            directory('dir/a', 0o777), file('dir/a/evil'))
        self.assertEqual([], os.listdir(self.sub))

    def test_link_replaced_by_a_directory_and_back(self) -> None:
        self.assertRefused(
            'dir/c', directory('dir'), directory('dir/x'),
            symlink('dir/c', 'x'),
            symlink('dir/a', 'c/c/../../outside/secret'),
            directory('dir/c'), symlink('dir/c', '.'),
            directory('dir/a', 0o777))

    def test_hard_link_to_a_link(self) -> None:
        # A hard link to a symbolic link is that link read from another
        # directory: inside from d1/d2, outside from the top.
        link = hardlink('dir/h', 'dir/d1/d2/s')
        link.mode = 0o777
        self.assertRefused(
            'dir/h', directory('dir'), directory('dir/d1'),
            directory('dir/d1/d2'),
            symlink('dir/d1/d2/s', '../../outside/secret'), link,
            reason="it is a hard link to 'dir/d1/d2/s'")

    def test_hard_link_to_a_file_re_pointed_as_a_link(self) -> None:
        link = hardlink('dir/h', 'dir/d1/d2/s')
        link.mode = 0o777
        self.assertRefused(
            'dir/h', directory('dir'), directory('dir/d1'),
            directory('dir/d1/d2'), file('dir/d1/d2/s'),
            symlink('dir/d1/d2/s', '../../outside/secret'), link)
        self.assertEqual(1, os.stat(self.secret).st_nlink)

    def test_repointed_link_left_in_the_copy(self) -> None:
        self.assertRefused(
            'dir/a', directory('dir'), *escape('dir/a', 'dir/c'),
            file('dir/f'), reason="it is a symbolic link to "
            "'c/c/../../outside/secret', which leads outside the copy")
        self.assertFalse(os.path.lexists(os.path.join(self.dl, 'dir', 'a')))

    def test_link_already_in_the_destination(self) -> None:
        # Copying into a tree the user has, where dir/x is their link.
        os.mkdir(os.path.join(self.dl, 'dir'))
        os.symlink('../../outside/secret', os.path.join(self.dl, 'dir', 'x'))
        self.assertRefused('dir/x', directory('dir'),
                           directory('dir/x', 0o777))
        self.assertEqual('../../outside/secret',
                         os.readlink(os.path.join(self.dl, 'dir', 'x')))

    def test_to_a_new_name_leaves_nothing(self) -> None:
        # Extracted beside the target first: a refusal removes all of it.
        new = os.path.join(self.area, 'new')
        self.assertRefused('dir/a', directory('dir'),
                           *escape('dir/a', 'dir/c'),
                           directory('dir/a', 0o777), into=new)
        self.assertFalse(os.path.lexists(new))
        self.assertEqual([], glob.glob(os.path.join(self.area, '.crcache*')))

    def test_refusal_after_a_large_file(self) -> None:
        # The instance is still sending when the copy stops reading: the
        # user reads the refusal, not tar's broken pipe.
        self.assertRefused(
            'dir/a', directory('dir'), file('dir/big', b'x' * (16 << 20)),
            *escape('dir/a', 'dir/c'), directory('dir/a', 0o777),
            file('dir/after', b'y' * (16 << 20)))


class TestDashPaths(SSHCopyTestCase):
    """Instance paths that start with ``-`` are paths, not options."""

    def test_both_ways(self) -> None:
        # Relative paths are in the login's home: unique names, removed.
        word = f'-crcache-test-{uuid.uuid4().hex[:12]}'
        self.addCleanup(self.crcache, 'run', self.name, 'rm', '-rf', '--',
                        word, word + '.d', word + '.into', expect=None)
        src = os.path.join(self.project, 'f')
        self.write_file(src, 'data\n', 0o640)
        tree = os.path.join(self.project, 'tree')
        os.makedirs(os.path.join(tree, 'sub'))
        self.write_file(os.path.join(tree, 'sub', 'run.sh'), '#!/bin/sh\n',
                        0o750)
        self.crcache('run', self.name, 'mkdir', '--', word + '.into')

        self.crcache('cp', src, f'{self.name}:{word}')
        self.crcache('cp', src, f'{self.name}:{word}.into')
        self.crcache('cp', '-r', tree, f'{self.name}:{word}.d')
        self.crcache('cp', '-r', tree, f'{self.name}:{word}.into')
        listing = self.run_on(
            self.name, f'cd ./{word}.into && cat f && cat ../{word} && '
            f'stat -c %a f tree/sub/run.sh ../{word}.d/sub/run.sh')
        self.assertEqual('data\ndata\n640\n750\n750\n', listing.stdout)

        back = os.path.join(self.home, 'back')
        os.mkdir(back)
        self.crcache('cp', f'{self.name}:{word}', back)
        self.crcache('cp', '-r', f'{self.name}:{word}.d', back)
        self.crcache('cp', '-r', f'{self.name}:{word}.into/tree',
                     os.path.join(back, 'tree'))
        with open(os.path.join(back, word)) as f:
            self.assertEqual('data\n', f.read())
        self.assertEqual(0o640, stat.S_IMODE(os.stat(
            os.path.join(back, word)).st_mode))
        for copy in (word + '.d', 'tree'):
            self.assertEqual(0o750, stat.S_IMODE(os.stat(
                os.path.join(back, copy, 'sub', 'run.sh')).st_mode))

        result = self.crcache('cp', f'{self.name}:{word}.nosuch', back,
                              expect=None)
        self.assertOneLineError(result, f'{word}.nosuch',
                                'no such file or directory')

