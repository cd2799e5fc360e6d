"""Unit tests for crcache.cmd.run."""

import testtools

from crcache.cmd import run
from crcache import exceptions


class TestSplitCommand(testtools.TestCase):

    def test_first_word_is_the_instance(self):
        self.assertEqual(('pool-0', ['echo', 'foo']),
                         run.split_command(None, ['pool-0', 'echo', 'foo']))

    def test_double_dash_after_the_instance_is_dropped(self):
        self.assertEqual(('x-1', ['A=1', 'sh', '-c', 'echo $A']),
                         run.split_command(None, ['x-1', '--', 'A=1', 'sh',
                                                  '-c', 'echo $A']))

    def test_instance_option(self):
        self.assertEqual(('pool-0', ['echo', 'foo']),
                         run.split_command('pool-0', ['echo', 'foo']))
        self.assertEqual(('pool-0', ['--', 'x']),
                         run.split_command('pool-0', ['--', '--', 'x']))

    def test_no_command_is_an_interactive_shell(self):
        self.assertEqual(('x-1', []), run.split_command(None, ['x-1']))

    def test_no_instance(self):
        self.assertRaises(exceptions.CrcacheError, run.split_command,
                          None, [])
