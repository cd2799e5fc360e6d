"""Unit tests for crcache.app: global options stop at the command."""

import testtools

from crcache import app


class TestGlobalParser(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.parser = app.CrcacheApp().parser

    def parse(self, *argv):
        options, rest = self.parser.parse_known_args(list(argv))
        return options, rest

    def test_global_source(self):
        options, rest = self.parse('-s', 'pool', 'acquire')
        self.assertEqual('pool', options.source)
        self.assertEqual(['acquire'], rest)

    def test_command_options_are_left_alone(self):
        options, rest = self.parse('run', '-s', 'pool-0', 'echo', 'foo')
        self.assertIsNone(options.source)
        self.assertEqual(['run', '-s', 'pool-0', 'echo', 'foo'], rest)
        options, rest = self.parse('status', '-v')
        self.assertEqual(0, options.verbose_level)
        self.assertEqual(['status', '-v'], rest)

    def test_forms_of_values(self):
        options, rest = self.parse('--source=pool', '-vv', 'status')
        self.assertEqual('pool', options.source)
        self.assertEqual(2, options.verbose_level)
        options, rest = self.parse('-spool', 'status')
        self.assertEqual('pool', options.source)

    def test_double_dash_ends_global_options(self):
        options, rest = self.parse('--debug', '--', '-s')
        self.assertTrue(options.debug)
        self.assertEqual(['-s'], rest)

    def test_unknown_global_option_is_an_error(self):
        self.assertRaises(SystemExit, self.parse, '--bogus', 'status')

    def test_quiet(self):
        options, rest = self.parse('-q', 'fill')
        self.assertTrue(options.quiet)
        self.assertEqual(0, options.verbose_level)
        options, rest = self.parse('fill')
        self.assertFalse(options.quiet)
        # Quiet and verbose at once makes no sense.
        self.assertRaises(SystemExit, self.parse, '-q', '-v', 'fill')


class TestUnknownCommand(testtools.TestCase):

    COMMANDS = ['acquire', 'complete', 'cp', 'fill', 'gc', 'help',
                'release', 'run', 'status']

    def test_messages(self):
        for word, expected in [
                ('frobnicate', "unknown command 'frobnicate'"),
                ('x', "unknown command 'x'"),
                ('stauts', "unknown command 'stauts' (did you mean "
                           "'status'?)"),
                ('relase', "unknown command 'relase' (did you mean "
                           "'release'?)"),
                ('c', "unknown command 'c' (did you mean 'complete' or "
                      "'cp'?)")]:
            self.assertEqual(expected,
                             app.unknown_command(word, self.COMMANDS))
