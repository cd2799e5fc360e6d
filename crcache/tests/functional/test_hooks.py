"""provision.d and discard.d, as the user who writes them sees them.

Every hook here is a small ``#!/bin/sh`` script that leaves its trace in
a marker directory of the test's own: a line in a log, or a file named
after the instance. What is asserted is what a user sees: the order the
scripts ran in and what they were given, ``acquire``'s stdout, the one
error line when a script fails, and ``status``.
"""

from __future__ import annotations

import json
import os
import time

from crcache.tests.functional import base
from crcache.tests.functional import sshd


class HookTestCase(base.HookTestCase):
    """Hook tests: the shared script writers, and what is left live."""

    def instances(self) -> list[dict]:
        """``status -v -f json``: every instance, whatever its state."""
        return json.loads(self.crcache('status', '-v', '-f', 'json').stdout)

    def assertNothingLive(self) -> None:
        self.assertEqual([], self.instances())
        for source, row in self.status().items():
            self.assertEqual((0, 0), (row['cached'], row['in-use']),
                             source)

    def assertOneErrorLine(self, result: base.Result,
                           *fragments: str) -> None:
        """Failed, with exactly one ``crcache:`` line holding every fact.

        Hook output is passed on to stderr as it comes, so the error line
        may follow the failing script's own lines.
        """
        self.assertNotEqual(0, result.returncode, str(result))
        self.assertNotIn('Traceback', result.stderr, str(result))
        errors = [line for line in result.stderr.splitlines()
                  if line.startswith('crcache:')]
        self.assertEqual(1, len(errors), str(result))
        for fragment in fragments:
            self.assertIn(fragment, errors[0], str(result))


class TestHookRules(HookTestCase):
    """Which scripts run, in what order, with what arguments."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('box', type='local', maximum=2)
        log = 'echo "{name} $# $1 $CRCACHE_INSTANCE $CRCACHE_SOURCE" >> {log}'
        for name in ('20-second', '10-first', 'a_B-9', '05'):
            self.hook('box', 'provision.d', name,
                      log.replace('{name}', name))
        # run-parts' rules: names with dots or a trailing ~, files that
        # are not executable and directories are not run.
        for name in ('15-editor.sh', '15-backup~', '15.dpkg-old'):
            self.hook('box', 'provision.d', name,
                      log.replace('{name}', name))
        self.hook('box', 'provision.d', '15-not-executable',
                  log.replace('{name}', 'not-executable'), mode=0o644)
        os.mkdir(os.path.join(self.config_root, 'sources', 'box',
                              'provision.d', '15-directory'))
        self.hook('box', 'discard.d', '10-gone',
                  log.replace('{name}', 'discard'))
        self.hook('box', 'discard.d', '20-gone.sh',
                  log.replace('{name}', 'discard.sh'))

    def test_provision_order_arguments_and_environment(self) -> None:
        result = self.crcache('acquire', '-s', 'box')
        self.assertEqual('box-0\n', result.stdout)
        self.assertEqual(['05 1 box-0 box-0 box',
                          '10-first 1 box-0 box-0 box',
                          '20-second 1 box-0 box-0 box',
                          'a_B-9 1 box-0 box-0 box'], self.logged())

    def test_discard_runs_when_released_without_reserve(self) -> None:
        self.crcache('acquire', '-s', 'box')
        before = len(self.logged())
        self.crcache('release', 'box-0')
        self.assertEqual(['discard 1 box-0 box-0 box'],
                         self.logged()[before:])
        self.assertNothingLive()

    def test_discard_does_not_run_when_kept_cached(self) -> None:
        self.write_source('box', type='local', maximum=2, reserve=1)
        self.crcache('acquire', '-s', 'box')
        self.crcache('release', 'box-0')
        self.assertEqual(4, len(self.logged()), self.logged())
        self.assertEqual(1, self.status('box')['box']['cached'])
        # Handed out again as it is: provision.d does not run again.
        self.assertEqual('box-0\n',
                         self.crcache('acquire', '-s', 'box').stdout)
        self.assertEqual(4, len(self.logged()), self.logged())
        # With no reserve any more, the next release discards it.
        self.write_source('box', type='local', maximum=2)
        self.crcache('release', 'box-0')
        self.assertEqual(['discard 1 box-0 box-0 box'], self.logged()[4:])
        self.assertNothingLive()

    def test_each_instance_gets_its_own_name(self) -> None:
        result = self.crcache('acquire', '-s', 'box', '-n', '2')
        self.assertEqual('box-0\nbox-1\n', result.stdout)
        lines = self.logged()
        self.assertEqual(8, len(lines), lines)
        for name in ('box-0', 'box-1'):
            mine = [line.split()[0] for line in lines
                    if line.split()[2:] == [name, name, 'box']]
            self.assertEqual(['05', '10-first', '20-second', 'a_B-9'],
                             mine, lines)


class TestHookOutput(HookTestCase):
    """Hook output goes to stderr; stdout stays the machine interface."""

    def test_acquire_stdout_is_the_names(self) -> None:
        self.write_source('box', type='local', maximum=2)
        self.hook('box', 'provision.d', '10-chatty',
                  'echo "provision out $1"; echo "provision err $1" >&2')
        self.hook('box', 'discard.d', '10-chatty',
                  'echo "discard out $1"; echo "discard err $1" >&2')
        result = self.crcache('acquire', '-s', 'box', '-n', '2')
        self.assertEqual('box-0\nbox-1\n', result.stdout)
        for name in ('box-0', 'box-1'):
            for stream in ('out', 'err'):
                self.assertIn(f'provision {stream} {name}\n',
                              result.stderr)
        result = self.crcache('release', 'box-0', 'box-1')
        self.assertEqual('', result.stdout)
        for name in ('box-0', 'box-1'):
            for stream in ('out', 'err'):
                self.assertIn(f'discard {stream} {name}\n', result.stderr)
        # Machine formats are not disturbed either.
        result = self.crcache('acquire', '-s', 'box', '-f', 'json')
        self.assertEqual(['box-2'], [row['name'] for row in
                                     json.loads(result.stdout)])


    def test_background_child_holding_the_output(self) -> None:
        # A script that leaves a child with its output open: acquire
        # waits for the script, not for the child.
        self.write_source('box', type='local', maximum=1)
        self.hook('box', 'provision.d', '10-daemon',
                  'sleep 60 &\necho $! > {marks}/child.pid\necho started')
        started = time.monotonic()
        result = self.crcache('acquire', '-s', 'box')
        with open(os.path.join(self.marks, 'child.pid')) as f:
            child = int(f.read())
        self.addCleanup(_kill, child)
        self.assertLess(time.monotonic() - started, 10, str(result))
        self.assertEqual('box-0\n', result.stdout)
        self.assertIn('started\n', result.stderr)
        self.assertTrue(sshd.alive(child), 'the child was not to be killed')

    def test_skipped_scripts_are_reported_once(self) -> None:
        self.write_source('box', type='local', maximum=2)
        self.hook('box', 'provision.d', '10-setup.sh',
                  'echo "dotted $1" >> {log}')
        self.hook('box', 'provision.d', '20-plain',
                  'echo "plain $1" >> {log}', mode=0o644)
        self.hook('box', 'provision.d', '30-ok', 'echo "ok $1" >> {log}')
        self.hook('box', 'provision.d', '.hidden', 'echo hidden >> {log}')
        result = self.crcache('acquire', '-s', 'box', '-n', '2')
        self.assertEqual([
            "crcache: skipping provision.d/10-setup.sh: names with '.' "
            'are ignored, as run-parts does',
            'crcache: skipping provision.d/20-plain: not executable'],
            result.stderr.splitlines())
        self.assertEqual(['ok box-0', 'ok box-1'], sorted(self.logged()))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


class NestedMixin:
    """A provision script using the instance it provisions."""

    def _nested_script(self, source: str, cwd: str | None = None,
                       root: str | None = None) -> None:
        # run, and cp with a path relative to the script's directory.
        change = f'cd {cwd}\n' if cwd else ''
        self.hook(source, 'provision.d', '10-use-it', change + (
            'set -e\n'
            'crcache run "$1" -- sh -c \'pwd > {marks}/ran-"$0"\' "$1"\n'
            'crcache run "$1" echo "nested output from $1"\n'
            'echo "copied for $1" > payload\n'
            'crcache cp payload "$1":{marks}/copied-"$1"\n'),
            root=root)

    def _check_nested(self, name: str, cwd: str) -> base.Result:
        result = self.crcache('acquire', '-s', 'box', timeout=60)
        self.assertEqual(f'{name}\n', result.stdout)
        self.assertIn(f'nested output from {name}\n', result.stderr)
        with open(os.path.join(self.marks, f'ran-{name}')) as f:
            self.assertEqual(cwd + '\n', f.read())
        with open(os.path.join(self.marks, f'copied-{name}')) as f:
            self.assertEqual(f'copied for {name}\n', f.read())
        self.assertEqual(1, self.status('box')['box']['in-use'])
        # The instance is an ordinary acquired one afterwards.
        self.crcache('run', name, 'true')
        return result

    def test_run_and_cp_on_the_instance_being_provisioned(self) -> None:
        self.write_source('box', type='local', maximum=1)
        self._nested_script('box')
        self._check_nested('box-0', self.project)

    def test_in_another_directory(self) -> None:
        elsewhere = os.path.join(self.home, 'elsewhere')
        os.mkdir(elsewhere)
        self.write_source('box', type='local', maximum=1)
        self._nested_script('box', cwd=elsewhere)
        self._check_nested('box-0', elsewhere)

    def test_project_configuration_from_another_directory(self) -> None:
        # The configuration is the project's ./.crcache, which the nested
        # crcache cannot find from where the script runs unless told.
        elsewhere = os.path.join(self.home, 'elsewhere')
        os.mkdir(elsewhere)
        root = os.path.join(self.project, '.crcache')
        self.write_source('box', type='local', maximum=1, root=root)
        self._nested_script('box', cwd=elsewhere, root=root)
        self._check_nested('box-0', elsewhere)
        self.assertFalse(os.path.exists(
            os.path.join(self.config_root, 'sources', 'box')))

    def test_discard_script_uses_the_instance_before_it_goes(self) -> None:
        self.write_source('box', type='local', maximum=1)
        self.hook('box', 'discard.d', '10-use-it', (
            'set -e\n'
            'cd /\n'
            'crcache run "$1" -- touch {marks}/discard-ran-"$1"\n'
            'crcache status -v -f json > {marks}/during-discard.json'))
        self.crcache('acquire', '-s', 'box')
        self.crcache('release', 'box-0', timeout=60)
        self.assertTrue(os.path.exists(
            os.path.join(self.marks, 'discard-ran-box-0')))
        with open(os.path.join(self.marks, 'during-discard.json')) as f:
            rows = json.load(f)
        self.assertEqual([('box-0', 'discarding')],
                         [(r['name'], r['state']) for r in rows])
        self.assertEqual([], self.instances())

    def test_pool_provision_uses_the_pool_instance(self) -> None:
        self.write_source('box', type='local', maximum=1)
        self.write_source('pool', type='pool', sources='box')
        self.hook('box', 'provision.d', '10-child',
                  'crcache run "$1" -- touch {marks}/child-"$1"')
        self.hook('pool', 'provision.d', '10-pool', (
            'set -e\n'
            'crcache run "$1" -- touch {marks}/pool-"$1"\n'
            'echo "pool payload" > payload\n'
            'crcache cp payload "$1":{marks}/pool-copied\n'))
        result = self.crcache('acquire', '-s', 'pool', timeout=60)
        self.assertEqual('pool-0\n', result.stdout)
        self.assertEqual(['child-box-0', 'pool-copied', 'pool-pool-0'],
                         sorted(os.listdir(self.marks)))
        status = self.status('pool', 'box')
        self.assertEqual((1, 1), (status['pool']['in-use'],
                                  status['box']['in-use']))

    def test_not_usable_by_the_hooks_of_another_instance(self) -> None:
        # The exception is for the instance's own hooks: box-1's script
        # cannot use box-0, provisioning beside it (both become usable
        # together, when the acquire has made them all).
        self.write_source('box', type='local', maximum=2)
        self.hook('box', 'provision.d', '10-peek', (
            'if [ "$1" = box-1 ]; then\n'
            '  crcache run box-0 true 2> {marks}/peek-err\n'
            '  echo $? > {marks}/peek-status\n'
            'fi'))
        self.crcache('acquire', '-s', 'box', '-n', '2', timeout=60)
        with open(os.path.join(self.marks, 'peek-status')) as f:
            status = f.read().strip()
        with open(os.path.join(self.marks, 'peek-err')) as f:
            err = f.read()
        self.assertNotEqual('0', status, err)
        self.assertIn("instance 'box-0' is not acquired", err)


class TestNested(NestedMixin, HookTestCase):
    """Through the agent (the default when stdin is not a terminal)."""


class TestNestedDirect(NestedMixin, HookTestCase):
    """With the agent turned off."""

    extra_env = {'CRCACHE_AGENT': '0'}


class TestFailingHooks(HookTestCase):
    """A failing script is named; nothing is left behind."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('box', type='local', maximum=3)
        self.hook('box', 'discard.d', '10-log', 'echo "discard $1" >> {log}')

    def test_failing_provision_script(self) -> None:
        self.hook('box', 'provision.d', '10-ok', 'echo "ok $1" >> {log}')
        self.hook('box', 'provision.d', '20-fail', (
            'echo "cannot frobnicate $1" >&2\n'
            'exit 3'))
        self.hook('box', 'provision.d', '30-never',
                  'echo "never $1" >> {log}')
        result = self.crcache('acquire', '-s', 'box', expect=None)
        self.assertEqual('', result.stdout)
        self.assertOneErrorLine(result, "'box'", 'provision.d/20-fail',
                                'box-0', 'exit 3', 'cannot frobnicate box-0')
        self.assertEqual(['ok box-0', 'discard box-0'], self.logged())
        self.assertNothingLive()

    def test_failing_provision_of_one_of_three(self) -> None:
        self.hook('box', 'provision.d', '20-fail', (
            'if [ "$1" = box-1 ]; then\n'
            '  echo "cannot frobnicate $1" >&2; exit 3\n'
            'fi'))
        result = self.crcache('acquire', '-s', 'box', '-n', '3',
                              expect=None)
        self.assertEqual('', result.stdout)
        self.assertOneErrorLine(result, 'provision.d/20-fail', 'box-1',
                                'exit 3', 'cannot frobnicate box-1')
        self.assertEqual(['discard box-0', 'discard box-1',
                          'discard box-2'], sorted(self.logged()))
        self.assertNothingLive()
        # The source's room is all there again.
        os.unlink(os.path.join(self.config_root, 'sources', 'box',
                               'provision.d', '20-fail'))
        names = self.crcache('acquire', '-s', 'box', '-n', '3').stdout
        self.assertEqual('box-3\nbox-4\nbox-5\n', names)

    def test_failing_provision_with_a_reserve(self) -> None:
        # Nothing half-made is kept in the reserve either.
        self.write_source('box', type='local', maximum=3, reserve=3)
        self.hook('box', 'provision.d', '20-fail', 'exit 3')
        result = self.crcache('acquire', '-s', 'box', expect=None)
        self.assertOneErrorLine(result, 'provision.d/20-fail', 'exit 3')
        self.assertNothingLive()
        result = self.crcache('fill', 'box', expect=None)
        self.assertIn('provision.d/20-fail', result.stderr)
        self.assertNothingLive()

    def test_failing_discard_script(self) -> None:
        self.hook('box', 'discard.d', '05-fail', (
            'echo "cannot clean $1" >&2\n'
            'exit 4'))
        self.crcache('acquire', '-s', 'box')
        result = self.crcache('release', 'box-0', expect=None)
        self.assertNotIn('Traceback', result.stderr)
        self.assertIn('discard.d/05-fail', result.stderr)
        self.assertIn('exit 4', result.stderr)
        self.assertIn('cannot clean box-0', result.stderr)
        self.assertEqual(0, result.returncode, str(result))
        self.assertNothingLive()
        self.crcache('run', 'box-0', 'true', expect=255)
        # The source's room is free again.
        self.assertEqual('box-1\n',
                         self.crcache('acquire', '-s', 'box').stdout)

    def test_failing_discard_after_failing_provision(self) -> None:
        self.hook('box', 'provision.d', '20-fail', 'exit 3')
        self.hook('box', 'discard.d', '05-fail', 'exit 4')
        result = self.crcache('acquire', '-s', 'box', expect=None)
        self.assertNotEqual(0, result.returncode)
        self.assertNotIn('Traceback', result.stderr)
        self.assertIn('provision.d/20-fail', result.stderr)
        self.assertIn('discard.d/05-fail', result.stderr)
        self.assertNothingLive()
