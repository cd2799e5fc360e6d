"""Kill crcache at any moment: nothing leaks, nothing is lost.

The "backend" of source ``m`` is a marker file per instance: provision.d
creates it (then dawdles, widening the window for a kill mid-hook) and
discard.d removes it (also slowly). Clients acquire from ``m`` or from a
pool over it and are killed with SIGKILL at random moments: while
claiming, while provisioning, inside a hook, while releasing and
discarding. Then ``crcache gc`` must leave the store and the markers in
agreement: every marker belongs to a live instance, every live instance
has its marker, nothing is left half-made, and ``status`` counts are
exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

from crcache.tests.functional import base

CLIENT = textwrap.dedent('''
    import json, random, subprocess, sys, time
    crcache, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # How long a whole acquire takes here: kills land within it.
    window = float(sys.argv[4])
    random.seed(seed)
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL)
    def debris():
        # Rows a killed process left half-way (visible until a gc).
        out = subprocess.run([crcache, 'status', '-v', '-f', 'json'],
                             text=True, **quiet).stdout
        return sum(row['state'] in ('provisioning', 'discarding')
                   for row in json.loads(out))
    left = 0
    for _ in range(rounds):
        source = random.choice(['m', 'm', 'p'])
        if random.random() < 0.6:
            proc = subprocess.Popen([crcache, 'acquire', '-s', source],
                                    **quiet)
            time.sleep(random.uniform(0.01, window))
            proc.kill()
            proc.wait()
            left += debris()
            continue
        got = subprocess.run([crcache, 'acquire', '-s', source],
                             text=True, **quiet)
        if got.returncode:
            continue
        proc = subprocess.Popen([crcache, 'release', got.stdout.strip()],
                                **quiet)
        time.sleep(random.uniform(0.01, window * 0.7))
        proc.kill()
        proc.wait()
        left += debris()
    print(left)
''')


class CrashMixin:
    """Killing clients at random moments, then checking everything."""

    def setUp(self) -> None:
        super().setUp()
        self.markers = os.path.join(self.home, 'markers')
        os.mkdir(self.markers)
        source_dir = os.path.dirname(self.write_source(
            'm', type='local', maximum=0, reserve=2))
        self._hook(source_dir, 'provision.d', f'''
            touch {self.markers}/"$1"
            sleep 0.$(( $$ % 3 ))5
        ''')
        self._hook(source_dir, 'discard.d', f'''
            sleep 0.1
            rm -f {self.markers}/"$1"
        ''')
        self.write_source('p', type='pool', sources='m', reserve=1)

    def _hook(self, source_dir: str, kind: str, body: str) -> None:
        directory = os.path.join(source_dir, kind)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, '50-marker')
        with open(path, 'w') as f:
            f.write('#!/bin/sh\nset -e\n' + textwrap.dedent(body))
        os.chmod(path, 0o755)

    def _clients(self, count: int, rounds: int) -> None:
        self.crcache('status')  # start the agent before the timing starts
        time.sleep(1)
        # Kills at random moments of a whole acquire, however long that
        # takes here (without the agent, Python's start-up is most of it).
        started = time.monotonic()
        [name] = self.crcache('acquire', '-s', 'm').stdout.split()
        window = max(0.35, 1.2 * (time.monotonic() - started))
        self.crcache('release', name)
        procs = [subprocess.Popen(
            [sys.executable, '-c', CLIENT, base.CRCACHE, str(rounds),
             str(1000 + i), str(window)], env=self.env, cwd=self.project,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
            for i in range(count)]
        debris = 0
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            self.assertEqual(0, proc.returncode, err)
            debris += int(out)
        # The kills did land mid-work, or this test proves nothing.
        self.assertGreater(debris, 0)

    def _instances(self) -> dict[str, dict]:
        rows = json.loads(self.crcache('status', '-v', '-f', 'json').stdout)
        return {row['name']: row for row in rows}

    def _hooks_running(self) -> list[str]:
        out = subprocess.run(['pgrep', '-f', f'{self.config_root}/sources'],
                             capture_output=True, text=True).stdout
        return out.split()

    def _background_gcs(self) -> list[str]:
        """The gc runs crcache started in the background for this test
        (see crcache.cache.autogc): they may still be discarding."""
        found = []
        marker = f'HOME={self.home}'.encode()
        for pid in os.listdir('/proc'):
            try:
                with open(f'/proc/{pid}/cmdline', 'rb') as f:
                    argv = f.read().split(b'\0')
                if argv[1:5] != [b'-m', b'crcache', b'-q', b'gc']:
                    continue
                with open(f'/proc/{pid}/environ', 'rb') as f:
                    if marker in f.read().split(b'\0'):
                        found.append(pid)
            except (OSError, IndexError):
                continue
        return found

    def _check_consistent(self) -> None:
        # Orphaned hooks die with the process that ran them; a gc the
        # clients started in the background may still run some: wait
        # for it, then for the hooks to be gone.
        deadline = time.monotonic() + 10
        while ((self._background_gcs() or self._hooks_running())
               and time.monotonic() < deadline):
            time.sleep(0.1)
        left = self._hooks_running()
        if left:
            ps = subprocess.run(
                ['ps', '-o', 'pid,ppid,pgid,sid,stat,etime,args', '-p',
                 ','.join(left)], capture_output=True, text=True).stdout
            self.fail(f'hooks still running 10 s after the clients '
                      f'ended:\n{ps}')
        gc = json.loads(self.crcache('gc', '-f', 'json').stdout)
        failed = [a for a in gc if a['action'] == 'failed']
        self.assertEqual([], failed)
        instances = self._instances()
        states = {row['state'] for row in instances.values()}
        self.assertLessEqual(states, {'in-use', 'cached'}, instances)
        leaves = {name for name, row in instances.items()
                  if row['source'] == 'm'}
        # Every resource belongs to a live instance, and every live
        # instance still has its resource.
        self.assertEqual(leaves, set(os.listdir(self.markers)))
        # Pool instances wrap live instances of m, one each.
        wrapped = [row['held-by'] for name, row in instances.items()
                   if row['source'] == 'm' and row['held-by'] in instances]
        pools = {n for n, r in instances.items() if r['source'] == 'p'}
        self.assertEqual(sorted(pools), sorted(wrapped))
        # The counts agree with the instances listed.
        status = self.status()
        for source in ('m', 'p'):
            rows = [r for r in instances.values() if r['source'] == source]
            self.assertEqual(
                {'cached': sum(r['state'] == 'cached' for r in rows),
                 'in-use': sum(r['state'] == 'in-use' for r in rows)},
                {k: status[source][k] for k in ('cached', 'in-use')})
        # Whatever killed clients held is still usable and releasable.
        held = [n for n, r in instances.items()
                if r['state'] == 'in-use' and r['held-by'] not in instances]
        if held:
            self.crcache('release', *held)
        status = self.status()
        self.assertEqual(0, status['m']['in-use'] - status['p']['cached'])
        self.assertEqual(0, status['p']['in-use'])
        self.assertLessEqual(status['p']['cached'], 1)
        self.assertEqual(
            status['m']['cached'] + status['m']['in-use'],
            len(os.listdir(self.markers)))

    def test_one_client_killed_at_random_moments(self) -> None:
        self._clients(1, 25)
        self._check_consistent()


class CrashTest(CrashMixin, base.CLITestCase):
    """Through the agent: a killed client takes its worker along."""

    def test_eight_concurrent_clients_killed_at_random_moments(self) -> None:
        self._clients(8, 6)
        self._check_consistent()


class CrashTestDirect(CrashMixin, base.CLITestCase):
    """Without the agent: the killed process is the one doing the work."""

    extra_env = {'CRCACHE_AGENT': '0'}
