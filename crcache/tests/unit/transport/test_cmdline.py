"""Tests for transport.cmdline: what a POSIX shell makes of ``join``'s line.

Each line is run by ``/bin/sh -c`` with a command that prints the argv it
received one word per line (NUL-separated, so newlines in words survive),
which is what every source type's shell would pass on.
"""

from __future__ import annotations

import os
import subprocess

import fixtures
import testtools

from crcache import exceptions
from crcache.transport import cmdline

def shell(line: str, env: dict[str, str] | None = None) -> str:
    """Run ``line`` with /bin/sh -c and return its stdout."""
    return subprocess.run(
        ['/bin/sh', '-c', line], capture_output=True, check=True,
        env=env if env is not None else {'PATH': '/usr/bin:/bin'},
        text=True).stdout


def shell_argv(argv: list[str]) -> list[str]:
    """The argv ``printf`` receives when ``argv`` follows it."""
    line = cmdline.join(['printf', '%s\\0', *argv])
    out = shell(line)
    return out.split('\0')[:-1]


class TestJoin(testtools.TestCase):

    def test_plain_words(self) -> None:
        self.assertEqual(['a', 'b', 'c'], shell_argv(['a', 'b', 'c']))

    def test_words_with_spaces_tabs_and_newlines(self) -> None:
        words = ['two words', 'tab\there', 'new\nline', ' lead', 'trail ']
        self.assertEqual(words, shell_argv(words))

    def test_quotes(self) -> None:
        words = ["it's", '"double"', "'single'", 'mixed "\' quote']
        self.assertEqual(words, shell_argv(words))

    def test_shell_metacharacters_are_literal(self) -> None:
        words = ['$HOME', '${PATH}', '$(echo x)', '`echo y`', 'a;b',
                 'a&&b', 'a|b', '>out', '<in', '*', '?', '[a]', '~',
                 '#comment', '\\', '!', 'a=b']
        self.assertEqual(words, shell_argv(words))

    def test_empty_words_survive(self) -> None:
        self.assertEqual(['', 'x', ''], shell_argv(['', 'x', '']))

    def test_non_ascii(self) -> None:
        self.assertEqual(['héllo wörld', '日本'],
                         shell_argv(['héllo wörld', '日本']))

    def test_leading_assignments_stay_assignments(self) -> None:
        line = cmdline.join(['A=1', "B=x y", 'C=$HOME', 'sh', '-c',
                             'printf "%s\\0" "$A" "$B" "$C"'])
        self.assertEqual(['1', 'x y', '$HOME'],
                         shell(line).split('\0')[:-1])

    def test_assignments_do_not_leak_into_the_caller_shell(self) -> None:
        # They are the command's environment, not the shell's variables.
        line = cmdline.join(['A=1', 'sh', '-c', 'echo "[$A]"'])
        self.assertEqual('[1]\n[]\n', shell(line + '; echo "[$A]"'))

    def test_assignment_like_word_after_command_is_an_argument(
            self) -> None:
        self.assertEqual(['A=1', 'B=x y'], shell_argv(['A=1', 'B=x y']))

    def test_assignment_value_with_quotes_and_dollar(self) -> None:
        line = cmdline.join(["A=it's $x", 'sh', '-c', 'printf %s "$A"'])
        self.assertEqual("it's $x", shell(line))

    def test_invalid_assignment_name_is_a_command_word(self) -> None:
        # '1A=x' cannot be an assignment; it is the command name.
        line = cmdline.join(['1A=x', 'y'])
        proc = subprocess.run(['/bin/sh', '-c', line], capture_output=True,
                              env={'PATH': '/usr/bin:/bin'})
        self.assertEqual(127, proc.returncode)

    def test_single_word_is_passed_raw(self) -> None:
        self.assertEqual('echo a && echo b',
                         cmdline.join(['echo a && echo b']))
        self.assertEqual('a\nb\n', shell(cmdline.join(['echo a && echo b'])))

    def test_single_word_expands(self) -> None:
        out = shell(cmdline.join(['echo "$X"']), env={'X': 'from env',
                                                        'PATH': '/bin'})
        self.assertEqual('from env\n', out)

    def test_sh_c_script_keeps_its_arguments(self) -> None:
        # The module doc's example: sh gets exactly the words it was given.
        line = cmdline.join(['sh', '-c', 'printf "%s\\0" "$0" "$1"',
                             'zero arg', 'one $arg'])
        self.assertEqual(['zero arg', 'one $arg'],
                         shell(line).split('\0')[:-1])


class TestInDirectory(testtools.TestCase):

    def test_runs_there(self) -> None:
        directory = self.useFixture(fixtures.TempDir()).path
        odd = os.path.join(directory, "it's a $dir; `x`")
        os.mkdir(odd)
        self.assertEqual(odd + '\n', shell(cmdline.in_directory(odd, 'pwd')))

    def test_a_directory_that_cannot_be_entered_runs_nothing(self) -> None:
        # Not even after an || in the command line.
        proc = subprocess.run(
            ['/bin/sh', '-c', cmdline.in_directory(
                '/nonexistent', 'false || echo ran')],
            capture_output=True, text=True, env={'PATH': '/usr/bin:/bin'})
        self.assertNotEqual(0, proc.returncode)
        self.assertEqual('', proc.stdout)

    def test_refused(self) -> None:
        self.assertRaises(exceptions.InvalidName, cmdline.in_directory,
                          '', 'pwd')
        self.assertRaises(exceptions.InvalidName, cmdline.in_directory,
                          'a\0b', 'pwd')
        self.assertRaises(exceptions.InvalidName, cmdline.in_directory,
                          '/tmp', '')


class TestWithEnvironment(testtools.TestCase):

    def test_values_arrive_intact_and_the_rest_is_kept(self) -> None:
        values = {'A': "it's $HOME", 'B_2': 'two\nlines', 'C': ''}
        line = cmdline.with_environment(
            values, 'printf "%s|" "$A" "$B_2" "$C" "$KEPT"')
        self.assertEqual("it's $HOME|two\nlines||kept|", shell(
            line, env={'PATH': '/usr/bin:/bin', 'KEPT': 'kept'}))

    def test_exported_to_commands(self) -> None:
        line = cmdline.with_environment({'A': '1'}, 'sh -c \'echo "$A"\'')
        self.assertEqual('1\n', shell(line))

    def test_nothing_to_set(self) -> None:
        self.assertEqual('true', cmdline.with_environment({}, 'true'))

    def test_refused(self) -> None:
        for env in ({'1A': 'x'}, {'A B': 'x'}, {'A=B': 'x'}, {'': 'x'},
                    {'A': 'x\0y'}, {'A': 1}):
            self.assertRaises(exceptions.InvalidName,
                              cmdline.with_environment, env, 'true')
        self.assertRaises(exceptions.InvalidName, cmdline.with_environment,
                          {'A': '1'}, '')
