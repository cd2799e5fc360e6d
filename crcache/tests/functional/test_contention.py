"""Many processes sharing a pool never share an instance.

Eight worker processes repeatedly acquire from a pool over three
one-instance sources, prove they hold the underlying instance alone (by
creating a directory named after it, which fails if another holder has
it), and release. Acquisitions that find the pool exhausted retry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from crcache.tests.functional import base

WORKER = textwrap.dedent('''
    import json, os, subprocess, sys, time
    crcache, locks, cycles, deadline = (sys.argv[1], sys.argv[2],
                                        int(sys.argv[3]), float(sys.argv[4]))
    def cr(*args):
        return subprocess.run([crcache, *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
    done = doubles = refused = 0
    while done < cycles and time.time() < deadline:
        got = cr('acquire', '-s', 'pool', '-f', 'json')
        if got.returncode:
            if 'cannot supply' not in got.stderr:
                sys.exit('unexpected acquire failure: ' + got.stderr)
            refused += 1
            time.sleep(0.01)
            continue
        name = json.loads(got.stdout)[0]['name']
        rows = json.loads(cr('status', '-v', '-f', 'json').stdout)
        held = [r['name'] for r in rows if r['held-by'] == name]
        if len(held) != 1:
            sys.exit(f'{name} holds {held}')
        claimed = []
        for lock in (name, held[0]):
            try:
                os.mkdir(os.path.join(locks, lock))
                claimed.append(lock)
            except FileExistsError:
                doubles += 1
        ran = cr('run', name, 'echo', name)
        if ran.stdout != name + '\\n':
            sys.exit(f'run on {name}: {ran.stdout!r} {ran.stderr!r}')
        for lock in claimed:
            os.rmdir(os.path.join(locks, lock))
        rel = cr('release', name)
        if rel.returncode:
            sys.exit('release failed: ' + rel.stderr)
        done += 1
    print(json.dumps({'done': done, 'doubles': doubles,
                      'refused': refused}))
''')


class TestContention(base.CLITestCase):

    WORKERS = 8
    CYCLES = 6

    def test_no_instance_is_handed_out_twice(self) -> None:
        for child in ('a', 'b', 'c'):
            self.write_source(child, type='local', maximum=1)
        self.write_source('pool', type='pool', sources='a,b,c', reserve=1)
        locks = os.path.join(self.home, 'locks')
        os.mkdir(locks)
        import time
        deadline = time.time() + 90
        procs = [subprocess.Popen(
            [sys.executable, '-c', WORKER, base.CRCACHE, locks,
             str(self.CYCLES), str(deadline)],
            env=self.env, cwd=self.project, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
            for _ in range(self.WORKERS)]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            self.assertEqual(0, proc.returncode, err)
            reports.append(json.loads(out))
        self.assertEqual([0] * self.WORKERS, [r['doubles'] for r in reports])
        self.assertEqual([self.CYCLES] * self.WORKERS,
                         [r['done'] for r in reports], reports)
        self.assertEqual([], os.listdir(locks))
        # The pool keeps one instance (its reserve), which holds one of
        # a, b or c; nothing else is live.
        status = self.status()
        self.assertEqual({'source': 'pool', 'cached': 1, 'in-use': 0,
                          'max': 3}, status['pool'])
        self.assertEqual(1, sum(status[c]['in-use'] for c in 'abc'))
        self.assertEqual(0, sum(status[c]['cached'] for c in 'abc'))
        instances = json.loads(self.crcache('status', '-v', '-f',
                                            'json').stdout)
        self.assertEqual(2, len(instances), instances)
