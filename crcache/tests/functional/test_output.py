"""What crcache prints is a contract: errors on stderr, data on stdout.

Unknown commands, column selection, empty fields, time stamps, the tree
and query forms of ``status``: each as a script or a user meets it,
through the installed command.
"""

from __future__ import annotations

import datetime
import json
import re
import time

from crcache.tests.functional import base


class TestUnknownCommand(base.CLITestCase):

    def assertUnknown(self, result: base.Result, expected: str) -> None:
        self.assertEqual((2, '', f'crcache: {expected}\n'),
                         (result.returncode, result.stdout, result.stderr),
                         str(result))

    def test_far_from_any_command(self) -> None:
        # No suggestion at all: 'complete' is the least far, but far.
        self.assertUnknown(self.crcache('frobnicate', expect=None),
                           "unknown command 'frobnicate'")

    def test_typo_suggests_the_command(self) -> None:
        self.assertUnknown(
            self.crcache('stauts', '-v', expect=None),
            "unknown command 'stauts' (did you mean 'status'?)")

    def test_ambiguous_abbreviation_names_the_candidates(self) -> None:
        self.assertUnknown(
            self.crcache('r', expect=None),
            "unknown command 'r' (did you mean 'release' or 'run'?)")

    def test_unique_abbreviation_is_the_command(self) -> None:
        self.assertEqual(self.crcache('status').stdout,
                         self.crcache('stat').stdout)

    def test_help_for_an_unknown_command(self) -> None:
        self.assertUnknown(self.crcache('help', 'frobnicate', expect=None),
                           "unknown command 'frobnicate'")
        self.assertUnknown(
            self.crcache('help', 'stauts', expect=None),
            "unknown command 'stauts' (did you mean 'status'?)")
        self.assertUnknown(
            self.crcache('--help', 'stauts', expect=None),
            "unknown command 'stauts' (did you mean 'status'?)")

    def test_help_for_a_command(self) -> None:
        result = self.crcache('help', 'status')
        self.assertIn('usage: crcache status', result.stdout)
        self.assertEqual('', result.stderr)


#: How every moment is printed: ISO 8601, UTC, milliseconds, Z.
STAMP = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z')


def stamp_time(stamp: str) -> float:
    return datetime.datetime.strptime(
        stamp, '%Y-%m-%dT%H:%M:%S.%f%z').timestamp()


class TestFields(base.CLITestCase):

    def test_value_prints_an_empty_field_for_null(self) -> None:
        self.crcache('acquire')
        out = self.crcache('status', '-v', '-f', 'value', '-c', 'name',
                           '-c', 'lease-expires', '-c', 'command').stdout
        self.assertEqual('local-0  ', out[:len('local-0  ')])
        out = self.crcache('status', '-a', '-f', 'value').stdout
        self.assertEqual('local 0 1 1  false local\n', out)
        self.assertNotIn('None', self.crcache('status', '-v', '-f',
                                              'value').stdout)

    def test_csv_prints_an_empty_field_for_null(self) -> None:
        self.crcache('acquire')
        out = self.crcache('status', '-v', '-f', 'csv', '-c', 'name',
                           '-c', 'lease-expires', '--quote', 'minimal')
        self.assertEqual('name,lease-expires\nlocal-0,\n', out.stdout)
        out = self.crcache('status', '-a', '-f', 'csv', '--quote',
                           'minimal')
        self.assertEqual('source,cached,in-use,max,path,shadowed,store\n'
                         'local,0,1,1,,false,local\n', out.stdout)

    def test_acquire_still_prints_bare_names(self) -> None:
        self.write_source('box', type='local', maximum=2)
        result = self.crcache('acquire', '-s', 'box', '-n', '2')
        self.assertEqual('box-0\nbox-1\n', result.stdout)

    def test_columns_as_printed(self) -> None:
        self.crcache('acquire', '--lease', '1h')
        self.assertEqual(
            [{'in-use': 1, 'max': 1}],
            json.loads(self.crcache('status', '-f', 'json', '-c', 'in-use',
                                    '-c', 'max').stdout))
        # Other spellings of the same key work too.
        self.assertEqual(
            'in-use\n1\n',
            self.crcache('status', '-f', 'csv', '-c', 'IN_USE', '--quote',
                         'minimal').stdout)
        [row] = json.loads(self.crcache(
            'status', '-v', '-f', 'json', '-c', 'lease-expires', '-c',
            'held-by', '-c', 'since').stdout)
        self.assertEqual(['held-by', 'since', 'lease-expires'], list(row))

    def test_unknown_column_is_an_error(self) -> None:
        result = self.crcache('status', '-c', 'in-use', '-c', 'in-sue',
                              expect=None)
        self.assertEqual(
            (1, '', "crcache: unknown column 'in-sue' (did you mean "
             "'in-use'?); columns: source, cached, in-use, max\n"),
            (result.returncode, result.stdout, result.stderr))


class TestTimes(base.CLITestCase):

    def test_status_stamps_are_utc(self) -> None:
        # Whatever the local time zone, the same stamp, in UTC.
        before = time.time()
        self.crcache('acquire', '--lease', '1h')
        after = time.time()
        for tz in ('UTC', 'America/New_York', 'Asia/Kolkata'):
            [row] = json.loads(self.crcache(
                'status', '-v', '-f', 'json', env={'TZ': tz}).stdout)
            self.assertRegex(row['since'], STAMP)
            self.assertRegex(row['lease-expires'], STAMP)
            self.assertLessEqual(before - 0.001, stamp_time(row['since']))
            self.assertLessEqual(stamp_time(row['since']), after)
            self.assertAlmostEqual(stamp_time(row['since']) + 3600,
                                   stamp_time(row['lease-expires']),
                                   delta=5)
            table = self.crcache('status', '-v', env={'TZ': tz}).stdout
            self.assertIn(row['since'], table)

    def test_gc_reason_stamp_is_the_lease_shown(self) -> None:
        self.crcache('acquire', '--lease', '1')
        [row] = json.loads(self.crcache('status', '-v', '-f',
                                        'json').stdout)
        expires = row['lease-expires']
        self.assertRegex(expires, STAMP)
        time.sleep(max(0.0, stamp_time(expires) + 0.1 - time.time()))
        [row] = json.loads(self.crcache('gc', '-f', 'json').stdout)
        self.assertEqual(
            {'name': 'local-0', 'source': 'local', 'action': 'discarded',
             'reason': f'lease expired at {expires}'}, row)


class TestStatusForms(base.CLITestCase):
    """A pool over local holding a cached instance, and a pool of it."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('pool', type='pool', sources='local', reserve=1)
        self.write_source('outer', type='pool', sources='pool')
        name = self.crcache('-s', 'pool', 'acquire').stdout.strip()
        self.crcache('release', name)

    def json(self, *args: str) -> object:
        return json.loads(self.crcache(*args, '-f', 'json').stdout)

    def test_tree_as_data(self) -> None:
        def row(source, cached, in_use, parent, depth):
            return {'source': source, 'cached': cached, 'in-use': in_use,
                    'max': 1, 'parent': parent, 'depth': depth}
        self.assertEqual(
            [row('outer', 0, 0, None, 0),
             row('pool', 1, 0, 'outer', 1),
             row('local', 0, 1, 'pool', 2),
             row('pool', 1, 0, None, 0),
             row('local', 0, 1, 'pool', 1),
             row('local', 0, 1, None, 0)],
            self.json('status', '-t'))
        # The sources named, with what they draw on beneath them.
        self.assertEqual(
            [row('pool', 1, 0, None, 0), row('local', 0, 1, 'pool', 1)],
            self.json('status', '-t', 'pool'))
        self.assertNotIn('+', self.crcache('status', '-t', '-f',
                                           'csv').stdout)

    def test_tree_as_drawn(self) -> None:
        self.assertEqual(
            'source     cached  in-use  max\n'
            'outer      0       0       1\n'
            '+ pool\n'
            '  + local\n'
            'pool       1       0       1\n'
            '+ local\n'
            'local      0       1       1\n',
            self.crcache('status', '-t').stdout)
        # Columns picked: the data, undrawn.
        self.assertEqual(
            'source  parent  depth\n'
            'pool            0\n'
            'local   pool    1\n',
            self.crcache('status', '-t', 'pool', '-c', 'source', '-c',
                         'parent', '-c', 'depth').stdout)

    def test_query_counts_each_instance_once(self) -> None:
        # pool-0 (cached) wraps local-0 (in use by the pool): one
        # instance, cached, whose source is local.
        figures = {what: self.crcache('status', '--query', what).stdout
                   for what in ('cached', 'in-use', 'max', 'available')}
        self.assertEqual({'cached': '1\n', 'in-use': '0\n', 'max': '1\n',
                          'available': '1\n'}, figures)
        self.assertEqual('1\n', self.crcache('status', '--query', 'in-use',
                                             'local').stdout)
        self.assertEqual('1\n', self.crcache('status', '--query', 'max',
                                             'pool').stdout)
        # local-0 acquired directly: the pools have nothing to give.
        self.write_source('pool', type='pool', sources='local')
        self.crcache('-s', 'pool', 'acquire')
        self.crcache('release', 'pool-0')  # no reserve now: all discarded
        self.crcache('acquire')
        self.assertEqual('0\n', self.crcache('status', '--query',
                                             'available', 'outer').stdout)

    def test_query_in_machine_formats(self) -> None:
        self.assertEqual({'query': 'available', 'value': 1},
                         self.json('status', '--query', 'available'))
        self.assertEqual({'value': 1},
                         self.json('status', '--query', 'max', '-c',
                                   'value'))
        self.assertEqual(
            'query,value\nin-use,0\n',
            self.crcache('status', '--query', 'in-use', '-f', 'csv',
                         '--quote', 'minimal').stdout)
        self.write_source('any', type='local', maximum=0)
        self.assertEqual({'query': 'available', 'value': 'unlimited'},
                         self.json('status', '--query', 'available'))
        self.assertEqual('unlimited\n', self.crcache(
            'status', '--query', 'available', 'any').stdout)

    def test_query_is_one_figure(self) -> None:
        for option in ('-v', '-t', '-a'):
            result = self.crcache('status', '--query', 'max', option,
                                  expect=None)
            self.assertEqual(
                (1, '', 'crcache: --query prints one figure: it cannot be '
                 'combined with -v, -t or -a\n'),
                (result.returncode, result.stdout, result.stderr))
