"""Configurations prepared ahead by the agent (crcache.config.prepared).

Each test has its own configuration root under a temporary HOME; the
"racy" settling time is turned off (``SETTLE = 0``) except where a test
checks it, so that files written a moment ago can be prepared.
"""

from __future__ import annotations

import os
import tempfile

import fixtures
import testtools

from crcache.config import prepared


class TestPrepared(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.home = self.useFixture(fixtures.TempDir()).path
        self.env = {'HOME': self.home,
                    'XDG_CONFIG_HOME': os.path.join(self.home, 'config'),
                    'PATH': os.environ.get('PATH', '/usr/bin:/bin')}
        self.root = os.path.join(self.home, 'config', 'crcache')
        self.cwd = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MonkeyPatch(
            'crcache.config.prepared._prepared', {}))
        self.useFixture(fixtures.MonkeyPatch(
            'crcache.config.prepared._refused', {}))
        self.useFixture(fixtures.MonkeyPatch(
            'crcache.config.prepared.SETTLE', 0))
        cwd = os.getcwd()
        os.chdir(self.cwd)
        self.addCleanup(os.chdir, cwd)
        self.write('box', 'type = local\nmaximum = 2\n')

    def write(self, name: str, body: str) -> None:
        directory = os.path.join(self.root, 'sources', name)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, 'source.conf'), 'w') as f:
            f.write('[DEFAULT]\n' + body)

    def take(self):
        return prepared.take(dict(self.env))

    def test_prepared_configuration_is_taken_while_unchanged(self) -> None:
        self.assertIsNone(self.take())
        self.assertIsNotNone(prepared.prepare(dict(self.env), self.cwd))
        config = self.take()
        self.assertIsNotNone(config)
        self.assertEqual(['box', 'local'], sorted(config.definitions))
        self.assertIs(config, self.take())

    def test_other_environment_or_directory_is_not_served(self) -> None:
        prepared.prepare(dict(self.env), self.cwd)
        self.assertIsNone(prepared.take(dict(self.env, EXTRA='1')))
        os.chdir(tempfile.gettempdir())
        self.assertIsNone(self.take())

    def test_edit_add_and_remove_are_seen(self) -> None:
        prepared.prepare(dict(self.env), self.cwd)
        # Same size, other value: the file's times tell.
        self.write('box', 'type = local\nmaximum = 3\n')
        self.assertIsNone(self.take())
        prepared.prepare(dict(self.env), self.cwd)
        self.write('more', 'type = local\n')
        self.assertIsNone(self.take())
        prepared.prepare(dict(self.env), self.cwd)
        os.unlink(os.path.join(self.root, 'sources', 'more', 'source.conf'))
        self.assertIsNone(self.take())

    def test_recently_changed_files_are_not_prepared(self) -> None:
        self.useFixture(fixtures.MonkeyPatch(
            'crcache.config.prepared.SETTLE', 3600))
        self.assertIsNone(prepared.prepare(dict(self.env), self.cwd))
        self.assertIsNone(self.take())

    def test_configuration_that_warns_is_not_prepared(self) -> None:
        # A deprecated key: the user must see its warning, so every
        # worker loads this one itself.
        self.write('ship', 'type = docker\nimage = debian\n')
        self.assertIsNone(prepared.prepare(dict(self.env), self.cwd))
        self.assertIsNone(self.take())

    def test_one_that_warns_is_not_read_again_until_it_changes(
            self) -> None:
        from crcache import config as config_module
        loads = []
        real = config_module.Config

        def counting(*args, **kwargs):
            loads.append(1)
            return real(*args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch('crcache.config.Config',
                                             counting))
        self.write('ship', 'type = docker\nimage = debian\n')
        for _ in range(3):
            self.assertIsNone(prepared.prepare(dict(self.env), self.cwd))
        self.assertEqual(1, len(loads))
        self.write('ship', 'type = docker\ndocker_image = debian\n')
        self.assertIsNotNone(prepared.prepare(dict(self.env), self.cwd))
        self.assertEqual(2, len(loads))

    def test_broken_configuration_is_prepared_with_its_errors(self) -> None:
        self.write('bad', 'type = local\nmaximum = many\n')
        self.assertIsNotNone(prepared.prepare(dict(self.env), self.cwd))
        self.assertIn('bad', self.take().errors)

    def test_the_agent_keeps_a_few(self) -> None:
        for n in range(prepared.MOST + 2):
            prepared.prepare(dict(self.env, N=str(n)), self.cwd)
        self.assertEqual(prepared.MOST, len(prepared._prepared))
        self.assertIsNone(prepared.take(dict(self.env, N='0')))
        self.assertIsNotNone(prepared.take(
            dict(self.env, N=str(prepared.MOST + 1))))
