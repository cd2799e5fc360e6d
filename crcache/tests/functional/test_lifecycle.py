"""An instance's life as a user sees it: made ahead, waited for, reclaimed.

``crcache fill`` provisions a source's reserve ahead of demand;
``max_idle`` lets cached instances go; ``acquire --wait`` queues for
room; cached instances are checked before they are handed out; leases
let ``crcache gc`` reclaim what was never released; and ``gc`` finishes
what a killed ``crcache`` left half done. Sources are ``local`` ones
whose provision.d and discard.d scripts leave marks in a directory of
the test's own (except for the liveness checks, which need hosts that
can die: real sshd servers).
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import threading
import time

from crcache.tests.functional import base
from crcache.tests.functional import sshd
from crcache.tests.functional import test_ssh


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    return sshd.alive(pid)


def parent_of(pid: int) -> int:
    with open(f'/proc/{pid}/stat') as f:
        return int(f.read().rsplit(')', 1)[1].split()[1])


def kill_session(sid: int) -> None:
    """Stop whatever is left of a hook's session (test cleanup)."""
    for pid in base.session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_quietly(pid: int) -> None:
    """SIGKILL ``pid`` if it still runs (test cleanup)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stamp_time(stamp: str) -> float:
    """Seconds since the epoch of a ``status -v`` stamp (UTC, with Z)."""
    import datetime
    return datetime.datetime.strptime(
        stamp, '%Y-%m-%dT%H:%M:%S.%f%z').timestamp()


class StderrLines:
    """Collects a background process's stderr as it comes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ''
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,),
                                        daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in iter(proc.stderr.readline, b''):
            with self._lock:
                self.text += line.decode(errors='replace')

    def wait_for(self, fragment: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if fragment in self.text:
                    return
            time.sleep(0.02)
        raise AssertionError(f'no {fragment!r} on stderr within {timeout}s;'
                             f' got {self.text!r}')

    def all(self, timeout: float = 5) -> str:
        self._thread.join(timeout)
        with self._lock:
            return self.text


class LifecycleTestCase(base.HookTestCase):
    """Lifecycle tests: hooks that log and mark, and ways to wait."""

    def log_hooks(self, source: str) -> None:
        """provision.d and discard.d scripts that log each run."""
        self.hook(source, 'provision.d', '10-log',
                  'echo "provision $1" >> {log}')
        self.hook(source, 'discard.d', '10-log',
                  'echo "discard $1" >> {log}')


    def json(self, *args: str) -> list[dict]:
        return json.loads(self.crcache(*args, '-f', 'json').stdout)

    def instances(self) -> list[dict]:
        """``status -v -f json``: every instance, whatever its state."""
        return self.json('status', '-v')

    def gc(self) -> list[dict]:
        rows = self.json('gc')
        for row in rows:
            self.assertEqual({'name', 'source', 'action', 'reason'},
                             set(row), rows)
        return rows

    def assertNothingLive(self) -> None:
        self.assertEqual([], self.instances())
        for source, row in self.status().items():
            self.assertEqual((0, 0), (row['cached'], row['in-use']),
                             source)



class TestFill(LifecycleTestCase):
    """``crcache fill`` provisions the reserve ahead of demand."""

    def test_fill_in_parallel_then_acquire_without_provisioning(self
                                                                ) -> None:
        self.write_source('box', type='local', reserve=3, maximum=5)
        self.hook('box', 'provision.d', '10-slow',
                  'echo "provision $1" >> {log}; sleep 1')
        started = time.monotonic()
        result = self.crcache('-v', 'fill', '-f', 'json')
        elapsed = time.monotonic() - started
        # Three one-second scripts side by side, not one after another.
        self.assertLess(elapsed, 2.5, str(result))
        rows = json.loads(result.stdout)
        self.assertEqual(
            [('box-0', 'box', 'cached'), ('box-1', 'box', 'cached'),
             ('box-2', 'box', 'cached')],
            sorted((r['name'], r['source'], r['state']) for r in rows))
        for row in rows:
            self.assertEqual({'name', 'source', 'state', 'concurrency'},
                             set(row))
            self.assertIsInstance(row['concurrency'], int)
            self.assertGreaterEqual(row['concurrency'], 1)
        # A progress line on stderr as each is ready.
        for name in ('box-0', 'box-1', 'box-2'):
            self.assertIn(f'{name} ready', result.stderr)
        self.assertEqual(3, len(self.logged()))
        self.assertEqual({'source': 'box', 'cached': 3, 'in-use': 0,
                          'max': 5}, self.status('box')['box'])

        # Full already: a second fill makes nothing.
        self.assertEqual([], self.json('fill'))
        self.assertEqual([], self.json('fill', 'box'))
        self.assertEqual(3, len(self.logged()))

        # acquire hands the cached ones out, without provision.d.
        started = time.monotonic()
        names = self.crcache('acquire', '-s', 'box', '-n', '3').stdout
        self.assertLess(time.monotonic() - started, 1)
        self.assertEqual(['box-0', 'box-1', 'box-2'], sorted(names.split()))
        self.assertEqual(3, len(self.logged()), self.logged())
        self.assertEqual({'source': 'box', 'cached': 0, 'in-use': 3,
                          'max': 5}, self.status('box')['box'])
        # The reserve counts instances in use: nothing more to make.
        self.assertEqual([], self.json('fill', 'box'))

    def test_fill_only_sources_with_a_reserve(self) -> None:
        self.write_source('warm', type='local', reserve=1)
        self.write_source('cold', type='local', maximum=2)
        self.log_hooks('warm')
        self.log_hooks('cold')
        rows = self.json('fill')
        self.assertEqual(['warm-0'], [r['name'] for r in rows])
        self.assertEqual(['provision warm-0'], self.logged())
        # Naming a source without a reserve fills nothing.
        self.assertEqual([], self.json('fill', 'cold'))
        self.assertEqual(0, self.status('cold')['cold']['cached'])

    def test_fill_respects_maximum(self) -> None:
        # local has one instance unless maximum says more.
        self.write_source('box', type='local', reserve=2)
        self.log_hooks('box')
        rows = self.json('fill', 'box')
        self.assertEqual(['box-0'], [r['name'] for r in rows])
        self.assertEqual({'source': 'box', 'cached': 1, 'in-use': 0,
                          'max': 1}, self.status('box')['box'])
        self.assertEqual([], self.json('fill', 'box'))

    def test_fill_a_pool(self) -> None:
        for child in ('a', 'b'):
            self.write_source(child, type='local', maximum=1)
            self.log_hooks(child)
        self.write_source('pool', type='pool', sources='a,b', reserve=3)
        self.log_hooks('pool')
        # The pool can hold two (one of a, one of b): fill makes two.
        rows = self.json('fill', 'pool')
        self.assertEqual([('pool-0', 'cached'), ('pool-1', 'cached')],
                         sorted((r['name'], r['state']) for r in rows))
        self.assertEqual(
            ['provision a-0', 'provision b-0', 'provision pool-0',
             'provision pool-1'], sorted(self.logged()))
        status = self.status('pool', 'a', 'b')
        self.assertEqual((2, 0), (status['pool']['cached'],
                                  status['pool']['in-use']))
        self.assertEqual([1, 1], [status[s]['in-use'] for s in 'ab'])
        names = self.crcache('acquire', '-s', 'pool', '-n', '2').stdout
        self.assertEqual(['pool-0', 'pool-1'], sorted(names.split()))
        self.assertEqual(4, len(self.logged()), self.logged())


class TestMaxIdle(LifecycleTestCase):
    """Cached instances unused for longer than max_idle are discarded."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('box', type='local', maximum=1, reserve=1,
                          max_idle=1)
        self.log_hooks('box')
        self.crcache('acquire', '-s', 'box')
        self.crcache('release', 'box-0')
        self.released = time.monotonic()
        self.assertEqual(1, self.status('box')['box']['cached'])

    def idle(self) -> None:
        time.sleep(max(0.0, self.released + 1.3 - time.monotonic()))

    def test_gc_discards_idle_instances(self) -> None:
        self.assertEqual([], self.gc())  # not idle long enough yet
        self.idle()
        [row] = self.gc()
        self.assertEqual(('box-0', 'box', 'discarded'),
                         (row['name'], row['source'], row['action']))
        self.assertIn('max_idle', row['reason'])
        self.assertEqual(['provision box-0', 'discard box-0'],
                         self.logged())
        self.assertNothingLive()
        self.assertEqual([], self.gc())

    def test_acquire_collects_them_first(self) -> None:
        self.idle()
        # Not the stale cached box-0: a fresh one.
        self.assertEqual('box-1\n',
                         self.crcache('acquire', '-s', 'box').stdout)
        self.assertEqual(['provision box-0', 'discard box-0',
                          'provision box-1'], self.logged())
        self.assertEqual({'source': 'box', 'cached': 0, 'in-use': 1,
                          'max': 1}, self.status('box')['box'])

    def test_in_use_instances_are_not_idle(self) -> None:
        self.crcache('acquire', '-s', 'box')
        self.idle()
        self.assertEqual([], [r for r in self.gc()
                              if r['action'] == 'discarded'])
        self.assertEqual(1, self.status('box')['box']['in-use'])


class TestWait(LifecycleTestCase):
    """acquire --wait queues for room; plain acquire fails at once."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('box', type='local', maximum=1)
        self.assertEqual('box-0\n',
                         self.crcache('acquire', '-s', 'box').stdout)

    def waiter(self, seconds: str = '20'
               ) -> tuple[subprocess.Popen, StderrLines]:
        """A background ``acquire --wait``, once it is queued."""
        proc = self.start('-v', 'acquire', '-s', 'box', '--wait', seconds)
        lines = StderrLines(proc)
        lines.wait_for('waiting')
        self.assertIsNone(proc.poll())
        return proc, lines

    def finished(self, proc: subprocess.Popen, lines: StderrLines,
                 timeout: float = 10) -> str:
        """A waiter's stdout, once it has succeeded."""
        self.assertEqual(0, proc.wait(timeout), lines.all())
        return proc.stdout.read().decode()

    def test_plain_acquire_fails_at_once(self) -> None:
        started = time.monotonic()
        result = self.crcache('acquire', '-s', 'box', expect=None)
        self.assertLess(time.monotonic() - started, 1)
        self.assertOneLineError(result, "source 'box'", 'maximum 1')

    def test_wait_gives_up_after_the_time_given(self) -> None:
        started = time.monotonic()
        # -q: no line about the wait (test_progress checks it).
        result = self.crcache('-q', 'acquire', '-s', 'box', '--wait', '1',
                              expect=None)
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 1)
        self.assertLess(elapsed, 3)
        self.assertOneLineError(result, "source 'box'", 'waited 1s')
        self.assertEqual('', result.stdout)
        self.assertEqual(1, self.status('box')['box']['in-use'])

    def test_waiter_gets_the_released_instance(self) -> None:
        proc, lines = self.waiter('10')
        time.sleep(0.3)
        self.assertIsNone(proc.poll())
        released = time.monotonic()
        self.crcache('release', 'box-0')
        self.assertEqual('box-1\n', self.finished(proc, lines))
        self.assertLess(time.monotonic() - released, 2)
        self.assertEqual({'source': 'box', 'cached': 0, 'in-use': 1,
                          'max': 1}, self.status('box')['box'])

    def test_first_come_first_served(self) -> None:
        first, first_lines = self.waiter()
        second, second_lines = self.waiter()
        # While they queue, a plain acquire does not jump the queue.
        result = self.crcache('acquire', '-s', 'box', expect=None)
        self.assertOneLineError(result, "source 'box'")
        self.crcache('release', 'box-0')
        self.assertEqual('box-1\n', self.finished(first, first_lines))
        time.sleep(0.5)
        self.assertIsNone(second.poll(), second_lines.all(0))
        self.crcache('release', 'box-1')
        self.assertEqual('box-2\n', self.finished(second, second_lines))

    def test_a_killed_waiter_leaves_the_queue(self) -> None:
        first, _ = self.waiter()
        first.kill()
        first.wait()
        self.crcache('release', 'box-0')
        # Nobody is waiting any more: a plain acquire gets it.
        self.assertEqual('box-1\n',
                         self.crcache('acquire', '-s', 'box').stdout)


class TestLeases(LifecycleTestCase):
    """Expired leases let gc reclaim what was never released."""

    def setUp(self) -> None:
        super().setUp()
        self.log_hooks('box')

    def expire(self) -> None:
        time.sleep(1.3)

    def assertLeaseReclaimed(self, name: str = 'box-0') -> None:
        [row] = self.gc()
        self.assertEqual((name, 'discarded'),
                         (row['name'], row['action']), row)
        self.assertIn('lease', row['reason'])
        self.assertIn(f'discard {name}', self.logged())
        self.assertNothingLive()

    def test_acquire_lease(self) -> None:
        self.write_source('box', type='local', maximum=1)
        self.crcache('acquire', '-s', 'box', '--lease', '1')
        [row] = self.instances()
        self.assertIsNotNone(row['lease-expires'])
        self.assertEqual([], self.gc())  # not expired yet
        self.expire()
        self.assertLeaseReclaimed()

    def test_source_lease(self) -> None:
        self.write_source('box', type='local', maximum=1, lease=1)
        self.crcache('acquire', '-s', 'box')
        self.expire()
        self.assertLeaseReclaimed()

    def test_expired_lease_is_reclaimed_by_the_next_acquire(self) -> None:
        self.write_source('box', type='local', maximum=1, lease=1)
        self.crcache('acquire', '-s', 'box')
        self.expire()
        self.assertEqual('box-1\n',
                         self.crcache('acquire', '-s', 'box').stdout)
        self.assertEqual(['provision box-0', 'discard box-0',
                          'provision box-1'], self.logged())

    def test_lease_0_overrides_the_source_lease(self) -> None:
        self.write_source('box', type='local', maximum=1, lease=1)
        self.crcache('acquire', '-s', 'box', '--lease', '0')
        [row] = self.instances()
        self.assertIsNone(row['lease-expires'])
        self.expire()
        [row] = self.gc()
        self.assertEqual(('box-0', 'box', 'kept'),
                         (row['name'], row['source'], row['action']))
        self.assertEqual(1, self.status('box')['box']['in-use'])
        self.assertNotIn('discard box-0', self.logged())

    def test_pool_instance_lease(self) -> None:
        # What the pool instance wraps is reclaimed with it.
        self.write_source('box', type='local', maximum=1, reserve=1)
        self.write_source('pool', type='pool', sources='box')
        self.crcache('acquire', '-s', 'pool', '--lease', '1')
        self.expire()
        [row] = self.gc()
        self.assertEqual(('pool-0', 'pool', 'discarded'),
                         (row['name'], row['source'], row['action']))
        self.assertIn('discard box-0', self.logged())
        # Its state is unknown: not kept, despite box's reserve.
        self.assertNothingLive()

    def test_status_shows_the_holder(self) -> None:
        self.write_source('box', type='local', maximum=1)
        proc = self.start('acquire', '-s', 'box', '--lease', '1h')
        out, err = proc.communicate(timeout=30)
        self.assertEqual((0, b'box-0\n'), (proc.returncode, out), err)
        acquired = time.time()
        [row] = self.instances()
        self.assertEqual(('box-0', 'box', 'in-use'),
                         (row['name'], row['source'], row['state']))
        self.assertEqual(proc.pid, row['pid'])
        self.assertEqual(os.getpid(), row['ppid'])
        self.assertIn('acquire', row['command'])
        self.assertIn('--lease', row['command'])
        self.assertEqual(f'{getpass.getuser()}@{socket.gethostname()}',
                         row['held-by'])
        self.assertLess(abs(stamp_time(row['since']) - acquired), 60)
        self.assertLess(
            abs(stamp_time(row['lease-expires']) - (acquired + 3600)), 60)
        # Released, nobody holds it.
        self.write_source('box', type='local', maximum=1, reserve=1)
        self.crcache('release', 'box-0')
        [row] = self.instances()
        self.assertEqual(('cached', None, None, None, None),
                         (row['state'], row['held-by'], row['pid'],
                          row['lease-expires'], row['command']))


class TestUnreleased(LifecycleTestCase):
    """gc reports, and keeps, in-use instances nobody can release."""

    def test_exited_holder_without_lease_is_kept(self) -> None:
        self.write_source('box', type='local', maximum=1)
        self.log_hooks('box')
        proc = self.start('acquire', '-s', 'box')
        self.assertEqual(0, proc.wait(30))
        [row] = self.gc()
        self.assertEqual(('box-0', 'box', 'kept'),
                         (row['name'], row['source'], row['action']))
        self.assertIn(f'pid {proc.pid}', row['reason'])
        self.assertIn('exited', row['reason'])
        self.assertIn('no lease', row['reason'])
        self.assertEqual(1, self.status('box')['box']['in-use'])
        self.assertEqual(['provision box-0'], self.logged())
        # Still the holder's: released as usual.
        self.crcache('release', 'box-0')
        self.assertEqual([], self.gc())


class CrashMixin:
    """A crcache killed mid-transition; gc finishes or undoes its work."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('box', type='local', maximum=1)
        self.pid_file = os.path.join(self.marks, 'hook.pid')
        self.hook('box', 'discard.d', '10-log', 'echo "discard $1" >> {log}')

    def hang_in(self, kind: str) -> None:
        """A ``kind`` script that starts a child, records its pid, hangs.

        crcache records a hook's pid just after starting it; the script
        gives it a moment to, as a crcache killed within that moment is
        the subject of another test (SIGKILL at many points).
        """
        self.hook('box', kind, '20-hang', (
            'echo "{kind} $1" >> {log}\n'
            'sleep 30 &\n'
            'sleep 0.3\n'
            'echo $$ > {marks}/hook.tmp\n'
            'mv {marks}/hook.tmp {marks}/hook.pid\n'
            'wait\n').replace('{kind}', kind))

    def kill_during_hook(self, *args: str) -> tuple[int, int]:
        """Start crcache ARGS, SIGKILL it in its hook; (worker, hook) pids.

        The worker is the process doing the work: the command itself, or
        the agent's worker for it (the hook's parent either way).
        """
        proc = self.start(*args)
        self.wait_for(lambda: os.path.exists(self.pid_file),
                        what='the hook to start')
        with open(self.pid_file) as f:
            hook = int(f.read())
        self.addCleanup(kill_session, hook)
        worker = parent_of(hook)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.wait_for(lambda: not alive(worker),
                        what='the killed crcache to go')
        return worker, hook

    def assertCollected(self, worker: int, hook: int, state: str) -> None:
        [row] = self.instances()
        self.assertEqual(('box-0', state), (row['name'], row['state']))
        [row] = self.gc()
        self.assertEqual(('box-0', 'box', 'discarded'),
                         (row['name'], row['source'], row['action']))
        self.assertIn(f'pid {worker}', row['reason'])
        self.assertIn('exited', row['reason'])
        # The hook is gone, with everything it started.
        self.wait_for(lambda: not alive(hook), 3, 'the hook to go')
        self.wait_for(lambda: not base.session_members(hook), 3,
                        "the hook's children to go")
        self.assertNothingLive()
        self.assertEqual([], self.gc())

    def test_killed_during_provision_script(self) -> None:
        self.hang_in('provision.d')
        worker, hook = self.kill_during_hook('acquire', '-s', 'box')
        self.assertCollected(worker, hook, 'provisioning')
        self.assertEqual(['provision.d box-0', 'discard box-0'],
                         self.logged())
        # And the source's room is back.
        os.unlink(os.path.join(self.config_root, 'sources', 'box',
                               'provision.d', '20-hang'))
        self.assertEqual('box-1\n',
                         self.crcache('acquire', '-s', 'box').stdout)

    def test_killed_during_discard_script(self) -> None:
        self.crcache('acquire', '-s', 'box')
        self.hang_in('discard.d')
        worker, hook = self.kill_during_hook('release', 'box-0')
        os.unlink(self.pid_file)
        # Discarding again runs discard.d again (here: hangs again, so
        # it is replaced by one that does not).
        os.unlink(os.path.join(self.config_root, 'sources', 'box',
                               'discard.d', '20-hang'))
        self.assertCollected(worker, hook, 'discarding')
        self.assertEqual(['discard box-0', 'discard.d box-0',
                          'discard box-0'], self.logged())

    def test_acquire_collects_first(self) -> None:
        self.hang_in('provision.d')
        self.kill_during_hook('acquire', '-s', 'box')
        os.unlink(os.path.join(self.config_root, 'sources', 'box',
                               'provision.d', '20-hang'))
        # The dead acquire's instance does not block the source.
        self.assertEqual('box-1\n',
                         self.crcache('acquire', '-s', 'box').stdout)
        self.assertEqual(['provision.d box-0', 'discard box-0'],
                         self.logged())

    def hook_pid(self) -> int:
        self.wait_for(lambda: os.path.exists(self.pid_file),
                      what='the hook to start')
        with open(self.pid_file) as f:
            hook = int(f.read())
        self.addCleanup(kill_session, hook)
        return hook

    def test_provision_timeout_stops_the_hook(self) -> None:
        # The acquiring process stops provision.d at the limit, with
        # everything it started, and undoes the instance.
        self.write_source('box', type='local', maximum=1,
                          provision_timeout=1)
        self.hang_in('provision.d')
        started = time.monotonic()
        # -q: no progress line (test_progress) for the slow provisioning.
        result = self.crcache('-q', 'acquire', '-s', 'box', expect=None)
        self.assertLess(time.monotonic() - started, 6, str(result))
        self.assertOneLineError(result, 'provision.d/20-hang', 'box-0',
                                'provision_timeout (1s)')
        self.assertEqual('', result.stdout)
        hook = self.hook_pid()
        self.wait_for(lambda: not base.session_members(hook), 5,
                      'the hook and its children to go')
        self.assertNothingLive()
        self.assertEqual(['provision.d box-0', 'discard box-0'],
                         self.logged())

    def test_discard_timeout_stops_the_hook_and_discards(self) -> None:
        self.write_source('box', type='local', maximum=1,
                          discard_timeout=1)
        self.crcache('acquire', '-s', 'box')
        self.hang_in('discard.d')
        started = time.monotonic()
        result = self.crcache('release', 'box-0')
        self.assertLess(time.monotonic() - started, 6, str(result))
        self.assertIn('discard.d/20-hang did not finish within '
                      'discard_timeout (1s) for box-0', result.stderr)
        self.assertIn('discarding it anyway', result.stderr)
        hook = self.hook_pid()
        self.wait_for(lambda: not base.session_members(hook), 5,
                      'the hook and its children to go')
        self.assertNothingLive()
        self.assertEqual(['discard box-0', 'discard.d box-0'],
                         self.logged())

    def test_gc_takes_over_from_a_wedged_worker(self) -> None:
        # A worker that cannot enforce the limit (stopped here) loses
        # its instance to gc once twice the limit has passed.
        self.write_source('box', type='local', maximum=1,
                          provision_timeout=1)
        self.hang_in('provision.d')
        proc = self.start('acquire', '-s', 'box')
        hook = self.hook_pid()
        worker = parent_of(hook)
        os.kill(worker, signal.SIGSTOP)
        self.addCleanup(kill_quietly, worker)
        self.assertEqual([], self.gc())  # not yet twice the limit
        [row] = self.instances()
        # Just past twice the limit (stamps are truncated milliseconds).
        started = stamp_time(row['since'])
        time.sleep(max(0.0, started + 2.3 - time.time()))
        [row] = self.gc()
        self.assertEqual(('box-0', 'discarded'),
                         (row['name'], row['action']))
        self.assertIn('twice provision_timeout (1s)', row['reason'])
        self.wait_for(lambda: not base.session_members(hook), 5,
                      'the hook and its children to go')
        os.kill(worker, signal.SIGCONT)
        self.assertNotEqual(0, proc.wait(10))
        self.assertEqual(b'', proc.stdout.read())
        self.assertNothingLive()
        self.assertEqual(['provision.d box-0', 'discard box-0'],
                         self.logged())

    def test_acquire_is_not_held_up_by_a_hanging_discard(self) -> None:
        # An expired lease's discard.d hangs: the acquire that finds it
        # hands the collection to a process of its own and goes on.
        self.write_source('box', type='local', maximum=1,
                          discard_timeout=60)
        self.crcache('acquire', '-s', 'box', '--lease', '1')
        self.hang_in('discard.d')
        time.sleep(1.1)
        # An acquire from the source waits for the collection a moment
        # (a CI log shows what for), then says that it goes on, and that
        # the source is full.
        started = time.monotonic()
        result = self.crcache('acquire', '-s', 'box', expect=None)
        self.assertLess(time.monotonic() - started, 5, str(result))
        self.assertRegex(result.stderr, r'(?m)^crcache: [0-9T:.-]+Z waiting '
                         r'for garbage collection of box-0 \(pid \d+\)$')
        self.assertIn('garbage collection of box-0 goes on in the '
                      'background', result.stderr)
        self.assertIn("source 'box' cannot supply", result.stderr)
        self.assertNotEqual(0, result.returncode)
        hook = self.hook_pid()
        # Another source's acquire is not held up at all: it says no
        # wait (an empty stderr) and ends long before the hook would
        # (the bound is loose: a loaded CI machine is slow without it).
        started = time.monotonic()
        result = self.crcache('acquire', '-s', 'local')
        self.assertLess(time.monotonic() - started, 10, str(result))
        self.assertEqual(('local-0\n', ''), (result.stdout, result.stderr))
        [row] = [r for r in self.instances() if r['name'] == 'box-0']
        self.assertEqual('discarding', row['state'])
        # Once it has been a while, status points it out.
        time.sleep(max(0.0, stamp_time(row['since']) + 5.2 - time.time()))
        result = self.crcache('status')
        self.assertIn('box-0 has been discarding for', result.stderr)
        self.assertIn('discard.d/20-hang running', result.stderr)
        # The background pass finishes once the hook does.
        kill_session(hook)
        self.wait_for(lambda: 'box-0' not in [
            r['name'] for r in self.instances()], 10, 'box-0 to go')
        self.crcache('release', 'local-0')
        self.assertNothingLive()


class TestCrash(CrashMixin, LifecycleTestCase):
    """Through the agent: the agent's worker dies with its client."""


class TestCrashDirect(CrashMixin, LifecycleTestCase):
    """With the agent turned off."""

    extra_env = {'CRCACHE_AGENT': '0'}


class TestVerifyCached(test_ssh.SSHTestCase):
    """A cached instance that no longer answers is not handed out."""

    def setUp(self) -> None:
        super().setUp()
        self.server_b = self.useFixture(sshd.SSHServer())
        self.write_known_hosts(self.server, self.server_b)

    def sources(self, **overrides: object) -> None:
        self.write_source('a', **self.server.source_keys(
            self.known_hosts, **overrides))
        self.write_source('b', **self.server_b.source_keys(
            self.known_hosts, **overrides))
        self.write_source('pool', type='pool', sources='a,b', reserve=1)

    def port(self, name: str) -> int:
        # "client address, client port, server address, server port"
        out = self.run_on(name, 'echo $SSH_CONNECTION').stdout
        return int(out.split()[3])

    def cache_one_on_a(self) -> None:
        name = self.acquire('pool')
        self.assertEqual('pool-0', name)
        self.assertEqual(self.server.port, self.port(name))
        self.crcache('release', name)
        status = self.status('pool', 'a')
        self.assertEqual((1, 1), (status['pool']['cached'],
                                  status['a']['in-use']))
        self.server.stop()

    def test_dead_cached_instance_is_replaced(self) -> None:
        self.sources()
        self.cache_one_on_a()
        result = self.crcache('-v', 'acquire', '-s', 'pool', timeout=60)
        name = result.stdout.strip()
        self.assertNotEqual('pool-0', name)
        self.assertIn('pool-0 does not answer', result.stderr)
        self.assertEqual(self.server_b.port, self.port(name))
        status = self.status('pool', 'a', 'b')
        self.assertEqual(
            [(0, 1), (0, 0), (0, 1)],
            [(status[s]['cached'], status[s]['in-use'])
             for s in ('pool', 'a', 'b')])
        self.assertEqual(1, len([row for row in self.json_instances()
                                 if row['source'] == 'b']))

    def json_instances(self) -> list[dict]:
        return json.loads(self.crcache('status', '-v', '-f',
                                       'json').stdout)

    def test_without_verification_it_is_handed_out(self) -> None:
        self.sources(verify_cached='false')
        self.cache_one_on_a()
        self.assertEqual('pool-0', self.acquire('pool'))
        result = self.run_on('pool-0', 'true', expect=None)
        self.assertOneLineError(result, "'a'",
                                f'127.0.0.1:{self.server.port}')
