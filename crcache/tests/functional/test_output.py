"""What crcache prints is a contract: errors on stderr, data on stdout.

Unknown commands, column selection, empty fields, time stamps, the tree
and query forms of ``status``: each as a script or a user meets it,
through the installed command.
"""

from __future__ import annotations

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
