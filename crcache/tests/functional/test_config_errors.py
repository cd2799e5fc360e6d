"""Bad configuration, as a user meets it through the real command.

Every mistake in a source's definition is one line on stderr that names
the file at fault and the key (with the closest valid key or the
installed types where that helps), a non-zero exit status, nothing on
stdout and no traceback unless ``--debug`` asks for one, from any command
that uses the source; commands about other sources work as if it were
not there, and ``status`` lists it with its error. The search path rules
(first definition wins whole, ``local`` replaces the implicit local,
``CRCACHE_CONFIG_PATH`` replaces the default roots) are checked here too.
"""

from __future__ import annotations

import json
import os
import time

from crcache.tests.functional import base


class TestConfigErrors(base.CLITestCase):

    def source_dir(self, name: str, root: str | None = None) -> str:
        return os.path.join(root or self.config_root, 'sources', name)

    def write_raw(self, name: str, data: bytes) -> str:
        """Write ``source.conf`` for ``name`` byte for byte."""
        directory = self.source_dir(name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, 'source.conf')
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def assertConfigError(self, *fragments: str, source: str = 'x',
                          args: tuple[str, ...] | None = None
                          ) -> base.Result:
        """Acquire from ``source`` (or run ``args``); expect one clean
        error line holding ``fragments``. Then check that the broken
        definition stops nothing else: another source works and status
        lists this one with the same error."""
        result = self.crcache(*(args or ('acquire', '-s', source)),
                              expect=None)
        self.assertOneLineError(result, *fragments)
        self.assertEqual('', result.stdout, str(result))
        error = result.stderr.strip()[len('crcache: '):]
        [name] = self.crcache('acquire', '-s', 'local').stdout.split()
        self.run_on(name, 'true')
        self.crcache('release', name)
        status = self.crcache('status', '-f', 'json', expect=1)
        rows = {row['source']: row for row in json.loads(status.stdout)}
        self.assertEqual(error, rows[source]['error'])
        self.assertIsNone(rows['local']['error'])
        self.assertIn(error, status.stderr)
        return result

    # -- keys and values --------------------------------------------------

    def test_unknown_key_names_closest_valid_key(self) -> None:
        path = self.write_source('x', type='local', reserv=1)
        self.assertConfigError(path, "'reserv'", "'reserve'")

    def test_deprecated_key_names_work_with_a_warning(self) -> None:
        # docker's first-release names, before every key carried its
        # type's name; nothing here reaches an engine.
        path = self.write_source('box', type='docker', image='busybox',
                                 pull='never',
                                 docker_host='unix:///nonexistent.sock')
        for _ in range(2):
            result = self.crcache('status', '-f', 'json')
            [row] = [row for row in json.loads(result.stdout)
                     if row['source'] == 'box']
            self.assertIsNone(row.get('error'))
            self.assertEqual(
                [f"crcache: {path}: key 'image' is deprecated: use "
                 "'docker_image'",
                 f"crcache: {path}: key 'pull' is deprecated: use "
                 "'docker_pull'"],
                sorted(result.stderr.splitlines()), str(result))

    def test_deprecated_key_beside_its_new_name(self) -> None:
        path = self.write_source('x', type='docker', image='busybox',
                                 docker_image='debian')
        self.assertConfigError(path, "'image'", "'docker_image'",
                               'deprecated')

    def test_value_not_a_number(self) -> None:
        path = self.write_source('x', type='local', reserve='abc')
        self.assertConfigError(path, "'reserve'", 'abc')

    def test_empty_value(self) -> None:
        # An empty reserve must not load as None (release would then
        # fail comparing an int with None and leave the instance stuck).
        path = self.write_source('x', type='local', reserve='')
        self.assertConfigError(path, "'reserve'")

    def test_negative_maximum(self) -> None:
        path = self.write_source('x', type='local', maximum=-1)
        self.assertConfigError(path, "'maximum'", '-1')

    def test_missing_type_lists_installed_types(self) -> None:
        path = self.write_source('x', reserve=1)
        self.assertConfigError(path, "'type'", 'local', 'pool')

    def test_unknown_type_lists_installed_types(self) -> None:
        path = self.write_source('x', type='nosuch')
        result = self.assertConfigError(path, "'nosuch'", 'installed types')
        installed = result.stderr.split('installed types:')[1]
        installed = [t.strip() for t in installed.split(',')]
        self.assertIn('local', installed)
        self.assertIn('pool', installed)

    def test_reserve_greater_than_maximum(self) -> None:
        path = self.write_source('x', type='local', reserve=3, maximum=2)
        self.assertConfigError(path, 'reserve', 'maximum')

    def test_unknown_section(self) -> None:
        path = self.write_source('x', '''\
            [DEFAULT]
            type=local
            [foo]
            reserve=1
            ''')
        self.assertConfigError(path, '[foo]')

    # -- pools -------------------------------------------------------------

    def test_pool_naming_unknown_source(self) -> None:
        path = self.write_source('p', type='pool', sources='local,nosuch')
        self.assertConfigError(path, 'sources', "'nosuch'", source='p')

    def test_pool_cycle_shows_the_cycle(self) -> None:
        path_a = self.write_source('a', type='pool', sources='b')
        self.write_source('b', type='pool', sources='a')
        self.assertConfigError(path_a, 'sources', 'a -> b -> a',
                               source='a')

    def test_pool_with_empty_sources(self) -> None:
        path = self.write_source('p', type='pool', sources='')
        self.assertConfigError(path, 'sources', source='p')

    def test_pool_without_sources_key(self) -> None:
        path = self.write_source('p', type='pool')
        self.assertConfigError(path, 'sources', source='p')

    # -- files and directories --------------------------------------------

    def test_unreadable_file(self) -> None:
        if os.geteuid() == 0:
            self.skipTest('running as root: mode 000 does not stop reads '
                          '(test_source_conf_is_a_directory covers it)')
        path = self.write_source('x', type='local')
        os.chmod(path, 0)
        self.addCleanup(os.chmod, path, 0o600)
        self.assertConfigError(path, 'cannot read')

    def test_source_conf_is_a_directory(self) -> None:
        path = os.path.join(self.source_dir('x'), 'source.conf')
        os.makedirs(path)
        self.assertConfigError(path, 'not a regular file', 'a directory')

    def test_source_conf_is_a_fifo(self) -> None:
        # Opening a FIFO waits for a writer: it must be refused unopened.
        path = os.path.join(self.source_dir('x'), 'source.conf')
        os.makedirs(self.source_dir('x'))
        os.mkfifo(path)
        started = time.monotonic()
        self.assertConfigError(path, 'not a regular file', 'named pipe')
        self.assertLess(time.monotonic() - started, 20)

    def test_binary_garbage(self) -> None:
        path = self.write_raw('x', b'\x89PNG\r\n\x1a\n\xff\xfe\x00\x81' * 8)
        self.assertConfigError(path)

    def test_text_without_section_header(self) -> None:
        path = self.write_raw('x', b'type=local\n')
        self.assertConfigError(path, 'ini')

    def test_text_without_section_header_quotes_the_line(self) -> None:
        # The error should show the offending line, not an empty ''.
        path = self.write_raw('x', b'type=local\n')
        result = self.assertConfigError(path, 'line 1')
        self.assertNotIn(": ''", result.stderr)

    def test_directory_without_source_conf(self) -> None:
        directory = self.source_dir('x')
        os.makedirs(directory)
        result = self.assertConfigError(directory, 'source.conf')
        self.assertNotIn(os.path.join(directory, 'source.conf'),
                         result.stderr)

    def test_invalid_source_directory_name(self) -> None:
        directory = self.source_dir('my source')
        os.makedirs(directory)
        with open(os.path.join(directory, 'source.conf'), 'w') as f:
            f.write('[DEFAULT]\ntype=local\n')
        self.assertConfigError(directory, 'invalid source name',
                               source='my source')

    def test_error_from_fill_and_status_too(self) -> None:
        path = self.write_source('x', type='local', reserv=1)
        self.assertConfigError(path, "'reserv'", args=('fill', 'x'))

    def test_a_pool_over_a_broken_source_is_broken(self) -> None:
        path = self.write_source('x', type='local', reserv=1)
        pool = self.write_source('p', type='pool', sources='x')
        self.assertConfigError(pool, "source 'x' cannot be used", path,
                               "'reserv'", source='p')

    def test_status_table_shows_the_error_column(self) -> None:
        path = self.write_source('x', type='local', reserv=1)
        result = self.crcache('status', expect=1)
        lines = result.stdout.splitlines()
        self.assertEqual(['source', 'cached', 'in-use', 'max', 'error'],
                         lines[0].split())
        self.assertTrue(lines[1].startswith('local '), result)
        self.assertTrue(lines[2].startswith('x '), result)
        self.assertIn(path, lines[2])
        self.assertEqual(1, len(result.stderr.splitlines()), result)
        # Sources named explicitly: only theirs count.
        self.crcache('status', 'local', expect=0)

    def test_debug_shows_traceback(self) -> None:
        path = self.write_source('x', type='local', reserv=1)
        result = self.crcache('--debug', 'acquire', '-s', 'x', expect=None)
        self.assertNotEqual(0, result.returncode, str(result))
        self.assertIn('Traceback', result.stderr)
        self.assertIn('ConfigError', result.stderr)
        self.assertIn(path, result.stderr)
        self.assertEqual('', result.stdout, str(result))


class TestSearchPath(base.CLITestCase):

    def setUp(self) -> None:
        super().setUp()
        self.root1 = os.path.join(self.home, 'root1')
        self.root2 = os.path.join(self.home, 'root2')
        os.mkdir(self.root1)
        os.mkdir(self.root2)
        self.env['CRCACHE_CONFIG_PATH'] = f'{self.root1}:{self.root2}'

    def test_missing_root_is_an_error_naming_it(self) -> None:
        missing = os.path.join(self.home, 'nosuch')
        self.env['CRCACHE_CONFIG_PATH'] = f'{self.root1}::{missing}'
        result = self.crcache('status', expect=None)
        self.assertOneLineError(result, missing, 'no such directory',
                                'CRCACHE_CONFIG_PATH')

    def test_first_definition_wins_whole(self) -> None:
        # root2 sets a maximum that root1 does not: keys must not merge.
        self.write_source('x', root=self.root1, type='local')
        self.write_source('x', root=self.root2, type='local', maximum=3)
        self.assertEqual(1, self.status('x')['x']['max'])
        self.crcache('acquire', '-s', 'x')
        result = self.crcache('acquire', '-s', 'x', expect=None)
        self.assertOneLineError(result, "'x'", 'maximum 1')

    def test_first_definition_wins_over_another_type(self) -> None:
        self.write_source('x', root=self.root1, type='local', maximum=2)
        self.write_source('x', root=self.root2, type='pool',
                          sources='local')
        rows = json.loads(self.crcache('status', '-a', '-f', 'json').stdout)
        x_rows = [r for r in rows if r['source'] == 'x']
        self.assertEqual(
            [(os.path.join(self.root1, 'sources', 'x', 'source.conf'),
              False, 2),
             (os.path.join(self.root2, 'sources', 'x', 'source.conf'),
              True, None)],
            [(r['path'], r['shadowed'], r['max']) for r in x_rows])

    def test_local_replaces_implicit_local(self) -> None:
        result = self.crcache('acquire', '-n', '2', expect=None)
        self.assertOneLineError(result, "'local'", 'maximum 1')
        self.write_source('local', root=self.root1, type='local', maximum=2)
        result = self.crcache('acquire', '-n', '2')
        self.assertEqual('local-0\nlocal-1\n', result.stdout)
        self.assertEqual(2, self.status('local')['local']['max'])

    def test_config_path_replaces_default_roots(self) -> None:
        # Both default roots define sources that must not be seen.
        self.write_source('home', type='local')
        self.write_source('project', root=os.path.join(
            self.project, '.crcache'), type='local')
        self.write_source('mine', root=self.root2, type='local')
        self.assertEqual({'local', 'mine'}, set(self.status()))

    def test_config_path_ignores_broken_default_roots(self) -> None:
        self.write_source('home', type='local', reserv=1)
        self.assertEqual({'local'}, set(self.status()))
