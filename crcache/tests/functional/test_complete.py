"""``crcache complete``: the bash script, run by a real bash.

The script is sourced into ``bash`` and its completion function called
the way bash calls it (``COMP_WORDS``, ``COMP_CWORD``), and what it puts
in ``COMPREPLY`` is compared with what a user should be offered: the
names of configured sources and of acquired instances among them, read
from the configuration and the state store of the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from crcache.tests.functional import base


class TestBashCompletion(base.CLITestCase):

    def setUp(self) -> None:
        super().setUp()
        base.require_program(self, 'bash', 'bash')
        self.write_source('alpha', type='local', maximum=2)
        self.write_source('beta-pool', type='pool', sources='alpha')
        self.script = os.path.join(self.home, 'crcache.bash')
        with open(self.script, 'w') as f:
            f.write(self.crcache('complete').stdout)

    def complete(self, *words: str, script: str | None = None,
                 name: str = 'crcache') -> list[str]:
        """What completing the last of ``words`` offers, in order."""
        program = (
            f'source {script or self.script} || exit 99\n'
            'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))\n'
            f'_{name.replace("-", "_")}\n'
            'printf "%s\\n" "${COMPREPLY[@]}"\n')
        proc = subprocess.run(
            ['bash', '--norc', '--noprofile', '-c', program, 'bash',
             *words], capture_output=True, text=True, env=self.env,
            cwd=self.project, timeout=60)
        self.assertEqual(0, proc.returncode, proc.stderr)
        return [line for line in proc.stdout.splitlines() if line]

    def test_commands_and_options(self) -> None:
        commands = self.complete('crcache', '')
        for command in ('acquire', 'complete', 'cp', 'fill', 'gc', 'help',
                        'release', 'run', 'status', 'stores'):
            self.assertIn(command, commands)
        self.assertEqual(['release', 'run'], self.complete('crcache', 'r'))
        self.assertEqual(['--count'], self.complete('crcache', 'acquire',
                                                    '--cou'))
        self.assertIn('--quiet', self.complete('crcache', '--'))
        # The option only the script uses is not offered.
        self.assertNotIn('--list', self.complete('crcache', 'complete',
                                                  '--'))
        self.assertEqual(['json'], self.complete('crcache', 'status', '-f',
                                                 'j'))
        self.assertEqual(['in-use'], self.complete(
            'crcache', 'status', '--query', 'in'))
        self.assertEqual(['release'], self.complete('crcache', 'help',
                                                    'rel'))

    def test_source_names(self) -> None:
        sources = ['alpha', 'beta-pool', 'local']
        self.assertEqual(sources, self.complete('crcache', 'acquire', '-s',
                                                ''))
        self.assertEqual(['beta-pool'], self.complete(
            'crcache', 'acquire', '--source', '=', 'b'))
        self.assertEqual(sources, self.complete('crcache', '-s', ''))
        self.assertEqual(sources, self.complete('crcache', 'status', ''))
        self.assertEqual(sources, self.complete('crcache', 'status',
                                                'alpha', ''))
        self.assertEqual(['alpha'], self.complete('crcache', 'fill', 'a'))
        self.assertEqual(sources, self.complete('crcache', 'gc',
                                                '--forget', ''))
        # After the global -s and its value comes the command.
        self.assertIn('acquire', self.complete('crcache', '-s', 'alpha',
                                               ''))

    def test_instance_names(self) -> None:
        self.assertEqual([], self.complete('crcache', 'release', ''))
        first = self.crcache('acquire', '-s', 'beta-pool').stdout.strip()
        second = self.crcache('acquire', '-s', 'alpha').stdout.strip()
        self.assertEqual(['beta-pool-0', 'alpha-1'], [first, second])
        # Not alpha-0: beta-pool-0 holds it.
        names = [first, second]
        self.assertEqual(sorted(names), sorted(self.complete(
            'crcache', 'release', '')))
        self.assertEqual(['beta-pool-0'], self.complete(
            'crcache', 'run', 'b'))
        self.assertEqual(['alpha-1'], self.complete('crcache', 'run', '-s',
                                                    'al'))
        self.assertEqual(['alpha-1:'], self.complete('crcache', 'cp',
                                                     'alpha-'))
        os.mkdir(os.path.join(self.project, 'alpha-dir'))
        self.assertEqual(['alpha-1:', 'alpha-dir'], sorted(self.complete(
            'crcache', 'cp', 'a')))
        # After the instance, run's words are the command's: files.
        with open(os.path.join(self.project, 'script.sh'), 'w'):
            pass
        self.assertEqual(['script.sh'], self.complete(
            'crcache', 'run', first, 'scr'))
        # A path on an instance: nothing to offer.
        self.assertEqual([], self.complete('crcache', 'cp', first, ':', ''))
        self.crcache('release', first)
        self.assertEqual([second], self.complete('crcache', 'release', ''))

    def test_names_are_listed_quietly(self) -> None:
        self.crcache('acquire', '-s', 'alpha')
        result = self.crcache('complete', '--list', 'instances')
        self.assertEqual(('alpha-0\n', ''), (result.stdout, result.stderr))
        result = self.crcache('complete', '--list', 'sources')
        self.assertEqual('alpha\nbeta-pool\nlocal\n', result.stdout)
        # A configuration that cannot be read: nothing, and no noise.
        result = self.crcache('complete', '--list', 'sources',
                              env={'CRCACHE_CONFIG_PATH': '/nonexistent'})
        self.assertEqual(('', ''), (result.stdout, result.stderr))
        help_text = self.crcache('complete', '--help').stdout
        self.assertNotIn('--list', help_text)
        self.assertIn('source <(crcache complete)', help_text)

    def test_other_name_and_data_only(self) -> None:
        other = os.path.join(self.home, 'other.bash')
        with open(other, 'w') as f:
            f.write(self.crcache('complete', '--name', 'my-crcache').stdout)
        with open(other) as f:
            self.assertIn('complete -F _my_crcache my-crcache', f.read())
        # The command typed runs the listing: here, a link to crcache.
        link = os.path.join(self.home, 'bin', 'my-crcache')
        os.makedirs(os.path.dirname(link))
        os.symlink(shutil.which('crcache', path=self.env['PATH']), link)
        self.assertEqual(['alpha', 'beta-pool', 'local'], self.complete(
            link, 'status', '', script=other, name='my-crcache'))
        data = self.crcache('complete', '--shell', 'none').stdout
        self.assertIn("cmds='acquire complete cp", data)
        self.assertNotIn('complete -F', data)
