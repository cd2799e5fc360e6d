"""Sockets planted where crcache keeps its agent and ssh holder sockets.

Another local user who can put a socket where crcache looks for its
agent or a connection holder would be handed every command line, could
forge output and exit statuses, and would receive the command's open
descriptors. These tests plant such sockets, with a throwaway user made
for the test where a second uid is needed (root only; skipped otherwise,
saying why), and check that crcache refuses them saying so in one line,
still runs the command correctly, and hands the planted listener nothing
at all: no command line, no descriptors.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import tempfile

from crcache.tests.functional import hostile
from crcache.tests.functional.test_ssh import SSHTestCase


class TestPlantedSockets(SSHTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.fallback = os.path.join(self.home, '.cache', 'crcache', 'run')
        self.addCleanup(self._stop_elsewhere)
        # Learn the names crcache gives this installation's agent socket
        # and this source's holder socket (neither depends on the
        # directory), then stop those two.
        self.name = self.acquire()
        own = os.path.join(self.runtime, 'crcache')
        self.wait_for(lambda: glob.glob(f'{own}/agent-*.sock')
                      and self.holder_sockets(), what='agent and holder')
        self.agent_name = os.path.basename(
            glob.glob(f'{own}/agent-*.sock')[0])
        self.holder_name = os.path.basename(self.holder_sockets()[0])
        self._stop_helpers()
        self.wait_for(lambda: not self._pids(f'crcache.daemons.agent {own}')
                      and not self.holder_pids(), what='them to stop')
        shutil.rmtree(own)
        self.log = os.path.join(self.home, 'planted.log')

    def _stop_elsewhere(self) -> None:
        # Agents and holders in the fallback or a shared directory.
        pattern = r'crcache\.(agent|sshholder) (%s|%s)' % (
            re.escape(self.home), re.escape(tempfile.gettempdir()
                                            + '/crcache-shared.'))
        for pid in self._pids(pattern):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def shared_dir(self) -> str:
        """A directory every local user may create entries in, as /tmp."""
        path = tempfile.mkdtemp(prefix='crcache-shared.')
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        os.chmod(path, 0o1777)
        return path

    def plant(self, directory: str, **kwargs: object
              ) -> hostile.PlantedListener:
        """A listener on both socket names in ``directory``."""
        return self.useFixture(hostile.PlantedListener(
            [os.path.join(directory, self.agent_name),
             os.path.join(directory, self.holder_name)],
            self.log, **kwargs))

    def assertRanDirectlyOnce(self, directory: str, reason: str) -> None:
        """A command runs right, with one line saying the planted
        directory was passed over for the fallback, twice (the second
        time through crcache's own agent and holder)."""
        line = (f'crcache: not keeping sockets in {directory}: it '
                f'{reason}; using {self.fallback} instead\n')
        for attempt in ('first', 'second'):
            self.assertEqual(('ok\n', line), self._echo(), attempt)
            # crcache's own agent and holder start in the fallback.
            self.wait_for(lambda: os.path.exists(
                os.path.join(self.fallback, self.agent_name))
                and os.path.exists(
                    os.path.join(self.fallback, self.holder_name)),
                what='sockets in the fallback directory')
        self.assertTrue(self._pids(f'crcache.daemons.agent {self.fallback}'))
        self.assertTrue(self._pids(
            f'crcache.sources.ssh.holder {self.fallback}'))

    # -- no second user needed ------------------------------------------------

    def test_runtime_dir_open_to_others_is_not_used(self) -> None:
        # Our own directory, but mode 777: anyone could have planted a
        # socket in it (here, we did).
        shared = self.shared_dir()
        planted = os.path.join(shared, 'crcache')
        os.mkdir(planted)
        os.chmod(planted, 0o777)
        listener = self.plant(planted)
        self.env['XDG_RUNTIME_DIR'] = shared
        self.assertRanDirectlyOnce(
            planted, 'is open to other users (mode 777, not 700)')
        self.assertEqual([], listener.events())

    def test_no_private_directory_at_all(self) -> None:
        # Both the runtime directory and the fallback are unusable: no
        # agent, no holder, one line saying so, the command still runs.
        shared = self.shared_dir()
        for directory in (os.path.join(shared, 'crcache'), self.fallback):
            os.makedirs(directory)
            os.chmod(directory, 0o777)
        listener = self.plant(self.fallback)
        self.env['XDG_RUNTIME_DIR'] = shared
        line = ('crcache: no private directory for the crcache agent and '
                f'ssh connection holders ({shared}/crcache: it is open to '
                'other users (mode 777, not 700); '
                f'{self.fallback}: it is open to other users (mode 777, '
                'not 700)); running without them\n')
        before = self.server.accepted_logins()
        for _ in range(2):
            self.assertEqual(('ok\n', line), self._echo())
        self.assertEqual(2, self.server.accepted_logins() - before)
        self.assertEqual([], listener.events())
        self.assertEqual([self.agent_name, self.holder_name],
                         sorted(os.listdir(self.fallback)))
        self.assertEqual([], os.listdir(os.path.join(shared, 'crcache')))

    # -- another user ---------------------------------------------------------

    def test_other_users_runtime_dir_is_not_used(self) -> None:
        # XDG_RUNTIME_DIR is shared (as /tmp): another user made the
        # crcache directory in it first and listens on both names.
        hostile.require_root(self)
        user = self.useFixture(hostile.ThrowawayUser())
        shared = self.shared_dir()
        planted = os.path.join(shared, 'crcache')
        listener = self.plant(planted, user=user, mkdir=planted)
        self.env['XDG_RUNTIME_DIR'] = shared
        self.assertRanDirectlyOnce(
            planted,
            f'is owned by uid {user.uid}, not by you (uid {os.geteuid()})')
        self.assertEqual([], listener.events())

    def test_other_users_listener_in_our_directory_is_refused(self) -> None:
        # The socket files are ours, in our private directory, but the
        # process listening on them is another user's: SO_PEERCRED
        # tells.
        hostile.require_root(self)
        user = self.useFixture(hostile.ThrowawayUser())
        own = os.path.join(self.runtime, 'crcache')
        os.mkdir(own, 0o700)
        listener = self.plant(own, user=user, bind_first=True)
        agent, holder = listener.paths
        inodes = [os.stat(path).st_ino for path in listener.paths]
        served = (f'it is served by uid {user.uid} '
                  f'(pid {listener.proc.pid}), not by you '
                  f'(uid {os.geteuid()})')
        self.assertEqual(
            ('ok\n',
             f'crcache: ignoring agent socket {agent}: {served}; running '
             'directly\n'
             f'crcache: ignoring ssh connection holder socket {holder}: '
             f'{served}; connecting directly\n'),
            self._echo())
        self.wait_for(listener.all_hung_up, 10, 'the connections to end')
        self.assertEqual([], listener.received())
        # crcache's own agent and holder replace the planted sockets...
        self.wait_for(lambda: all(self._inode(p) not in (None, *inodes)
                                  for p in listener.paths),
                      what='the planted sockets to be replaced')
        self.wait_for(lambda: self._pids(f'crcache.daemons.agent {own}')
                      and self.holder_pids(), what='agent and holder')
        # ... and serve the next commands, with nothing more to say.
        self.assertEqual(('ok\n', ''), self._echo())
        logins = self.server.accepted_logins()
        self.assertEqual(('ok\n', ''), self._echo())
        self.assertEqual(logins, self.server.accepted_logins())
        self.assertEqual([], listener.received())

    def test_other_users_socket_file_is_refused(self) -> None:
        # A socket file of another user's in our directory: refused
        # before even connecting to it.
        hostile.require_root(self)
        user = self.useFixture(hostile.ThrowawayUser())
        own = os.path.join(self.runtime, 'crcache')
        os.mkdir(own, 0o700)
        listener = self.plant(own, chown=user.uid, bind_first=True)
        agent, holder = listener.paths
        owned = (f'it is owned by uid {user.uid}, not by you '
                 f'(uid {os.geteuid()})')
        self.assertEqual(
            ('ok\n',
             f'crcache: ignoring agent socket {agent}: {owned}; running '
             'directly\n'
             f'crcache: ignoring ssh connection holder socket {holder}: '
             f'{owned}; connecting directly\n'),
            self._echo())
        self.wait_for(lambda: all(self._owner(p) == os.geteuid()
                                  for p in listener.paths),
                      what='the planted sockets to be replaced')
        self.wait_for(lambda: self._pids(f'crcache.daemons.agent {own}')
                      and self.holder_pids(), what='agent and holder')
        self.assertEqual(('ok\n', ''), self._echo())
        self.assertEqual([], listener.events())

    # -- helpers --------------------------------------------------------------

    def _echo(self) -> tuple[str, str]:
        result = self.run_on(self.name, 'echo ok')
        return result.stdout, result.stderr

    @staticmethod
    def _inode(path: str) -> int | None:
        try:
            return os.stat(path).st_ino
        except OSError:
            return None

    @staticmethod
    def _owner(path: str) -> int | None:
        try:
            return os.stat(path).st_uid
        except OSError:
            return None

