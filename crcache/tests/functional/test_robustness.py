"""Bad names, vanished sources, damaged rows and a locked store.

What a careless (or unlucky) user can do to crcache's inputs and state,
through the real command: names with a trailing newline, a source whose
definition was removed or broken while its instances lived, rows of the
state store edited by hand, and a store another process keeps locked.
None of it may wedge crcache, leave an instance in use for ever, or
print anything but one clear line naming what is at fault.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import threading
import time

from crcache.tests.functional import base


class RobustnessTestCase(base.HookTestCase):

    def json(self, *args: str, expect: int = 0) -> list[dict]:
        return json.loads(self.crcache(*args, '-f', 'json',
                                       expect=expect).stdout)

    def instances(self) -> list[dict]:
        return self.json('status', '-v')

    @property
    def db(self) -> str:
        return os.path.join(self.cache_dir, 'state.db')

    def sql(self, statement: str, *args: object) -> None:
        with sqlite3.connect(self.db) as conn:
            conn.execute(statement, args)


class TestNames(RobustnessTestCase):
    """Names are matched whole: a trailing newline is not a name."""

    def test_instance_name_with_a_trailing_newline(self) -> None:
        [name] = self.crcache('acquire').stdout.split()
        for command in (('release', name + '\n'),
                        ('run', name + '\n', 'true'),
                        ('cp', name + '\n:/etc/hostname', self.home)):
            result = self.crcache(*command, expect=None)
            self.assertOneLineError(result, 'invalid instance name',
                                    repr(name + '\n'))
        self.crcache('release', name)

    def test_source_directory_with_a_trailing_newline(self) -> None:
        directory = os.path.join(self.config_root, 'sources', 'foo\n')
        os.makedirs(directory)
        with open(os.path.join(directory, 'source.conf'), 'w') as f:
            f.write('[DEFAULT]\ntype=local\n')
        result = self.crcache('acquire', '-s', 'foo\n', expect=None)
        self.assertOneLineError(result, 'invalid source name')
        # Nothing was made that could never be released.
        self.assertEqual([], self.json('status', '-v', expect=1))
        result = self.crcache('acquire', '-s', 'foo', expect=None)
        self.assertOneLineError(result, "unknown source 'foo'")

    def test_value_with_a_newline(self) -> None:
        self.write_source('x', '[DEFAULT]\ntype = local\nmaximum = 1\n'
                          '  2\n')
        result = self.crcache('acquire', '-s', 'x', expect=None)
        self.assertOneLineError(result, "'maximum'", "'1\\n2'")


class TestVanishedSources(RobustnessTestCase):
    """A source removed or broken while its instances live."""

    def test_removed_source(self) -> None:
        self.write_source('x', type='local')
        self.hook('x', 'discard.d', '10-log', 'echo "discard $1" >> {log}')
        self.crcache('acquire', '-s', 'x')
        shutil.rmtree(os.path.join(self.config_root, 'sources', 'x'))
        result = self.crcache('release', 'x-0')
        self.assertEqual(1, len(result.stderr.splitlines()), str(result))
        self.assertIn("source 'x' is no longer configured",
                      result.stderr)
        self.assertIn('crcache gc --forget x', result.stderr)
        # Nothing else warns about it, ever.
        for args in (('acquire',), ('release', 'local-0'), ('status',),
                     ('fill',)):
            result = self.crcache(*args)
            self.assertEqual('', result.stderr, str(result))
        rows = {r['source']: r for r in self.json('status')}
        self.assertEqual("source 'x' is no longer configured",
                         rows['x']['error'])
        [row] = self.json('gc')
        self.assertEqual(('x-0', 'kept'), (row['name'], row['action']))
        self.assertIn('--forget x', row['reason'])
        [row] = self.json('gc', '--forget', 'x')
        self.assertEqual(('x-0', 'x', 'forgotten'),
                         (row['name'], row['source'], row['action']))
        self.assertIn('was discarding', row['reason'])
        self.assertEqual([], self.instances())
        self.assertEqual([], self.json('gc'))
        self.assertEqual([], self.logged())

    def test_broken_source_is_discarded_once_fixed(self) -> None:
        path = self.write_source('x', type='local')
        self.hook('x', 'discard.d', '10-log', 'echo "discard $1" >> {log}')
        self.crcache('acquire', '-s', 'x')
        self.write_source('x', type='nosuch')
        result = self.crcache('release', 'x-0')
        self.assertIn("source 'x' has a configuration error", result.stderr)
        self.assertIn(path, result.stderr)
        [row] = self.json('gc')
        self.assertEqual('kept', row['action'])
        result = self.crcache('gc', '--forget', 'local', expect=None)
        self.assertOneLineError(result, "source 'local' is configured")
        self.write_source('x', type='local')
        [row] = self.json('gc')
        self.assertEqual(('x-0', 'discarded'),
                         (row['name'], row['action']))
        self.assertEqual(['discard x-0'], self.logged())
        self.assertEqual([], self.instances())

    def test_pool_over_a_removed_source(self) -> None:
        self.write_source('x', type='local')
        self.write_source('p', type='pool', sources='x')
        self.crcache('acquire', '-s', 'p')
        shutil.rmtree(os.path.join(self.config_root, 'sources', 'p'))
        self.crcache('release', 'p-0')
        forgotten, discarded = self.json('gc', '--forget', 'p')
        self.assertEqual(('p-0', 'forgotten'),
                         (forgotten['name'], forgotten['action']))
        self.assertIn('it held x-0', forgotten['reason'])
        # x-0, which it held, was left in an unknown state: discarded.
        self.assertEqual(('x-0', 'discarded'),
                         (discarded['name'], discarded['action']))
        self.assertEqual([], self.instances())
        self.assertEqual('x-1\n', self.crcache('acquire', '-s',
                                               'x').stdout)


class TestDamagedRows(RobustnessTestCase):
    """Rows edited by hand (or by a crcache that knows more states)."""

    def test_unknown_state_still_counts_and_gc_clears_it(self) -> None:
        self.write_source('box', type='local', maximum=1)
        self.hook('box', 'discard.d', '10-log',
                  'echo "discard $1" >> {log}')
        self.crcache('acquire', '-s', 'box')
        self.sql("UPDATE instances SET state = 'frozen' WHERE name = ?",
                 'box-0')
        result = self.crcache('acquire', '-s', 'box', expect=None)
        self.assertOneLineError(result, "'box'", 'maximum 1')
        result = self.crcache('status', 'box')
        self.assertIn(f"{self.db}: instance row 'box-0'", result.stderr)
        self.assertIn("state 'frozen' is unknown", result.stderr)
        self.assertEqual(1, len(result.stderr.splitlines()), str(result))
        [row] = self.json('gc')
        self.assertEqual(('box-0', 'discarded'),
                         (row['name'], row['action']))
        self.assertIn("state 'frozen' is unknown", row['reason'])
        self.assertEqual(['discard box-0'], self.logged())
        self.assertEqual('box-1\n', self.crcache('acquire', '-s',
                                                 'box').stdout)

    def test_unreadable_column(self) -> None:
        self.write_source('box', type='local', maximum=1)
        self.crcache('acquire', '-s', 'box')
        self.sql("UPDATE instances SET holder = '{oops' WHERE name = ?",
                 'box-0')
        result = self.crcache('status', '-v')
        self.assertIn("instance row 'box-0': its holder column is not "
                      'valid JSON', result.stderr)
        [row] = self.json('gc')
        self.assertEqual(('box-0', 'discarded'),
                         (row['name'], row['action']))
        self.assertEqual([], self.instances())


class TestLockedStore(RobustnessTestCase):
    """Waiting for a store another process holds costs no CPU."""

    def hold_store(self, seconds: float) -> threading.Thread:
        self.crcache('status')  # creates the store
        ready = threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(self.db, isolation_level=None)
            conn.execute('BEGIN IMMEDIATE')
            ready.set()
            time.sleep(seconds)
            conn.execute('ROLLBACK')
            conn.close()

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        ready.wait(5)
        self.addCleanup(thread.join)
        return thread

    def cpu_of(self, *args: str) -> tuple[float, base.Result]:
        """CPU seconds a direct (agent-less) crcache run uses."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = self.crcache(*args, env={'CRCACHE_AGENT': '0'})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ((after.ru_utime - before.ru_utime)
                + (after.ru_stime - before.ru_stime)), result

    def test_waiting_backs_off(self) -> None:
        idle, _ = self.cpu_of('acquire')
        self.crcache('release', 'local-0')
        self.hold_store(3)
        started = time.monotonic()
        busy, result = self.cpu_of('acquire')
        waited = time.monotonic() - started
        self.assertGreater(waited, 2.5, str(result))
        # A spinning waiter burns ~18% of a core: 0.5 s over 3 s.
        self.assertLess(busy - idle, 0.25, str(result))

    def test_the_wait_is_said_on_a_terminal(self) -> None:
        # The wait is said after 1 s; on a loaded machine, starting the
        # command in a terminal can take most of a second or two.
        self.hold_store(4)
        status, output = self.in_terminal('acquire')
        self.assertEqual(0, status, output)
        self.assertIn(b'waiting for the state store', output)
        self.assertIn(self.db.encode(), output)
