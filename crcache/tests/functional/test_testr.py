"""testrepository runs a parallel suite through crcache's instance hooks.

The real ``testr`` command (testrepository, a test dependency) runs a
small suite of six unittest tests in a throwaway project with
``testr run --parallel --concurrency 2``; its ``.testr.conf`` provisions,
executes on and disposes of instances with ``crcache acquire``, ``crcache
run`` and ``crcache release`` over a pool of two sources (see
``doc/source/testr.rst``). Every test of the suite writes a marker (its
worker's pid, the ssh server it ran behind, the environment it saw) into
a shared results directory, so the test can tell which workers and which
instances ran it.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import re
import subprocess
import sys

from crcache.tests.functional import base
from crcache.tests.functional import sshd
from crcache.tests.functional import test_ssh

#: testrepository's console script, next to the interpreter, like crcache.
TESTR = os.path.join(os.path.dirname(sys.executable), 'testr')
SUBUNIT_STATS = os.path.join(os.path.dirname(sys.executable),
                             'subunit-stats')

#: One module of the suite: two tests that each leave a marker.
SUITE_MODULE = '''\
import json
import os
import unittest


class Test{name}(unittest.TestCase):

    def mark(self):
        """Record who ran this test, and where, in the results directory."""
        connection = os.environ.get('SSH_CONNECTION', '').split()
        record = {{
            'id': self.id(),
            'pid': os.getpid(),
            'uid': os.geteuid(),
            'cwd': os.getcwd(),
            'flag': os.environ.get('CRCACHE_TESTR_FLAG'),
            'port': int(connection[3]) if connection else None,
        }}
        results = os.environ['CRCACHE_TESTR_RESULTS']
        name = '%d-%s' % (os.getpid(), self.id())
        with open(os.path.join(results, name), 'w') as f:
            json.dump(record, f)

    def test_one(self):
        self.mark()
        {check}

    def test_two(self):
        self.mark()
        self.assertEqual(4, 2 + 2)
'''

#: What test_one checks: the environment assignment of test_command.
FLAG_CHECK = "self.assertEqual('1', os.environ.get('CRCACHE_TESTR_FLAG'))"

MODULES = ('alpha', 'beta', 'gamma')
SUITE_IDS = sorted(f'suite.test_{m}.Test{m.title()}.test_{n}'
                   for m in MODULES for n in ('one', 'two'))

TESTR_CONF = '''\
[DEFAULT]
test_command={test_command}
test_id_option=--load-list $IDFILE
test_list_option=--list
instance_provision=crcache acquire -s pool -n $INSTANCE_COUNT
instance_execute=crcache run --files=$FILES $INSTANCE_ID -- $COMMAND
instance_dispose=crcache release $INSTANCE_IDS
'''

#: The suite in the current directory, run by a local instance (which
#: works in the caller's directory and environment).
LOCAL_TEST_COMMAND = ('CRCACHE_TESTR_FLAG=1 ${PYTHON:-python} -m subunit.run '
                      'discover -t ./ . $LISTOPT $IDOPTION')

#: The same for an ssh instance, whose commands start in the login
#: user's home with the login environment: the local shell running
#: instance_execute expands $PWD and $CRCACHE_TESTR_RESULTS before crcache
#: passes the words on.
REMOTE_TEST_COMMAND = (
    'CRCACHE_TESTR_FLAG=1 CRCACHE_TESTR_RESULTS=$CRCACHE_TESTR_RESULTS '
    '${PYTHON:-python} -m subunit.run discover -t $PWD $PWD '
    '$LISTOPT $IDOPTION')


class TestrMixin:
    """Build the project, run testr in it, check what happened."""

    def make_project(self, test_command: str) -> None:
        """The suite, its .testr.conf and an empty results directory."""
        suite = os.path.join(self.project, 'suite')
        os.mkdir(suite)
        open(os.path.join(suite, '__init__.py'), 'w').close()
        for i, module in enumerate(MODULES):
            check = FLAG_CHECK if i == 0 else 'pass'
            with open(os.path.join(suite, f'test_{module}.py'), 'w') as f:
                f.write(SUITE_MODULE.format(name=module.title(),
                                            check=check))
        with open(os.path.join(self.project, '.testr.conf'), 'w') as f:
            f.write(TESTR_CONF.format(test_command=test_command))
        self.results = os.path.join(self.home, 'results')
        os.mkdir(self.results)
        # World-writable: the tests may run as another (ssh login) user.
        os.chmod(self.results, 0o777)
        self.env['PYTHON'] = sys.executable
        self.env['CRCACHE_TESTR_RESULTS'] = self.results
        self.assertNotIn('CRCACHE_TESTR_FLAG', self.env)

    def run_testr(self, *args: str, timeout: float = 300
                  ) -> subprocess.CompletedProcess:
        """Run ``testr ARGS`` in the project with the test's environment."""
        proc = subprocess.run(
            [TESTR, *args], cwd=self.project, env=self.env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout)
        self.addDetail(f'testr {" ".join(args)}', _text(
            f'exit {proc.returncode}\n--- stdout ---\n{proc.stdout}'
            f'--- stderr ---\n{proc.stderr}'))
        return proc

    def run_suite(self) -> tuple[str, list[dict]]:
        """testr init and a parallel run; return its output and markers."""
        self.assertEqual(0, self.run_testr('init').returncode)
        run = self.run_testr('run', '--parallel', '--concurrency', '2')
        output = run.stdout + run.stderr
        self.assertEqual(0, run.returncode, output)
        self.assertIn('Ran 6 tests', output)
        self.assertIn('PASSED (id=0)', output)
        self.assertNotIn('Traceback', output)
        # The repository's record of the run: all six passed.
        last = subprocess.run(
            f'"{TESTR}" last --subunit | "{SUBUNIT_STATS}"', shell=True,
            cwd=self.project, env=self.env, capture_output=True, text=True,
            timeout=60)
        self.assertEqual(0, last.returncode, last.stdout + last.stderr)
        stats = dict(re.findall(r'^(\w[\w ]*?):\s+(\d+)$', last.stdout,
                                re.MULTILINE))
        self.assertEqual(
            ('6', '6', '0'), (stats.get('Total tests'),
                              stats.get('Passed tests'),
                              stats.get('Failed tests')), last.stdout)
        markers = []
        for name in sorted(os.listdir(self.results)):
            with open(os.path.join(self.results, name)) as f:
                markers.append(json.load(f))
        # Every test ran exactly once, and the command's assignment
        # reached each test process.
        self.assertEqual(SUITE_IDS, sorted(m['id'] for m in markers))
        self.assertEqual({'1'}, {m['flag'] for m in markers})
        # Two workers, each with half of the suite.
        pids = [m['pid'] for m in markers]
        self.assertEqual([3, 3], sorted(pids.count(p) for p in set(pids)),
                         markers)
        return output, markers

    def executed_on(self, output: str) -> list[tuple[str, str]]:
        """(instance, --files value) of each instance_execute testr ran."""
        return re.findall(r'^running=crcache run --files=(\S*) (\S+) -- ',
                          output, re.MULTILINE)

    def check_lifecycle(self, output: str, *sources: str) -> None:
        """Both instances ran a worker; everything was given back."""
        self.assertIn('running=crcache acquire -s pool -n 2\n', output)
        executed = self.executed_on(output)
        # The listing (no $FILES yet), then one worker per instance, each
        # with its own list of test ids in $FILES.
        self.assertEqual(3, len(executed), output)
        self.assertEqual('', executed[0][0])
        workers = executed[1:]
        self.assertEqual(['pool-0', 'pool-1'],
                         sorted(name for _, name in workers))
        for files, _ in workers:
            self.assertTrue(files.startswith('/'), output)
        self.assertIn('running=crcache release pool-0 pool-1\n', output)
        status = self.status('pool', *sources)
        for source in ('pool', *sources):
            self.assertEqual((0, 0), (status[source]['in-use'],
                                      status[source]['cached']),
                             status[source])
        # instance_dispose with no ids at all: a successful no-op.
        result = self.crcache('release')
        self.assertEqual(('', ''), (result.stdout, result.stderr))


def _text(value: str):
    from testtools import content
    return content.text_content(value)


class TestLocalPool(TestrMixin, base.CLITestCase):
    """A pool over two local sources, one instance each."""

    def test_parallel_run(self) -> None:
        for name in ('l1', 'l2'):
            self.write_source(name, type='local', maximum=1)
        self.write_source('pool', type='pool', sources='l1,l2')
        self.make_project(LOCAL_TEST_COMMAND)
        output, markers = self.run_suite()
        self.assertEqual({None}, {m['port'] for m in markers})
        self.assertEqual({os.geteuid()}, {m['uid'] for m in markers})
        self.assertEqual({self.project}, {m['cwd'] for m in markers})
        self.check_lifecycle(output, 'l1', 'l2')


class TestSshPool(TestrMixin, test_ssh.SSHTestCase):
    """A pool over two ssh hosts (two sshd on this machine).

    The project is reached at the same path on the "remote" side, which
    is this machine, as the login user: the tree is made readable and the
    results directory writable for it. testr's test-id lists ($FILES) are
    made in a world-writable directory without the sticky bit, so that
    ``crcache run --files`` may replace them there as another user, as it
    would create them on a real remote host.
    """

    def test_parallel_run(self) -> None:
        servers = [self.server, self.useFixture(sshd.SSHServer())]
        self.write_known_hosts(*servers)
        self.make_project(REMOTE_TEST_COMMAND)
        user = self.login_user(servers)
        for i, server in enumerate(servers):
            self.write_source(f'h{i}', **server.source_keys(
                self.known_hosts, ssh_user=user))
        self.write_source('pool', type='pool', sources='h0,h1')
        lists = os.path.join(self.home, 'lists')
        os.mkdir(lists)
        os.chmod(lists, 0o777)
        self.env['TMPDIR'] = lists
        for root, dirs, files in os.walk(self.project):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        os.chmod(self.home, 0o755)

        output, markers = self.run_suite()
        # Each host ran tests: the servers the markers came through.
        self.assertEqual(sorted(s.port for s in servers),
                         sorted({m['port'] for m in markers}))
        # As the login user, in its own home (hence -t $PWD $PWD).
        account = pwd.getpwnam(user)
        self.assertEqual({(account.pw_uid, account.pw_dir)},
                         {(m['uid'], m['cwd']) for m in markers})
        self.check_lifecycle(output, 'h0', 'h1')
        for files, _ in self.executed_on(output)[1:]:
            self.assertEqual(lists, os.path.dirname(files), output)

    def login_user(self, servers: list[sshd.SSHServer]) -> str:
        """The fixtures' login user, if it can run this interpreter.

        The test's interpreter may live where another user cannot reach
        it (under /root, say); then the servers are reached as the user
        running the tests, as they would be without root.
        """
        user = servers[0].user
        self.write_source('probe', **servers[0].source_keys(
            self.known_hosts))
        name = self.crcache('acquire', '-s', 'probe').stdout.strip()
        probe = self.crcache(
            'run', name, '--', sys.executable, '-c', 'import subunit.run',
            expect=None)
        self.crcache('release', name)
        if probe.returncode != 0:
            self.addDetail('ssh login user', _text(
                f'{user} cannot run {sys.executable} with subunit '
                f'({probe.stderr.strip()}); logging in as '
                f'{getpass.getuser()}'))
            user = getpass.getuser()
        return user
