"""Progress of slow work on stderr, as a user and a CI log see it.

Off a terminal (pipes, as in CI), slow work prints one plain line per
event, stamped with the UTC time; on a terminal, one live line is redrawn
in place and goes when the work is done; ``-q`` silences both, and fast
commands say nothing either way. Slow provisioning comes from provision.d
scripts that sleep; slow copies from an sshd whose ``cat`` (what the ssh
source's ``cp`` runs there) is throttled.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time

import fixtures

from crcache import cache as cache_module
from crcache import config
from crcache import progress
from crcache.progress import stderr as progress_stderr
from crcache import store
from crcache.tests.functional import base
from crcache.tests.functional import test_docker
from crcache.tests.functional import test_hostile_archives
from crcache.tests.functional.test_lifecycle import StderrLines

#: A progress line off a terminal: prefix, UTC time stamp, message.
STAMPED = re.compile(
    r'crcache: (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.*)\Z')
#: What redraws the live line: back to its start, erase it.
REDRAW = b'\r\x1b[K'

#: ``cat`` on the throttled instance: at most RATE bytes a second.
SLOW_CAT = '''#!{python}
import sys, time
RATE = {rate}
args = [a for a in sys.argv[1:] if a != '--']
src = open(args[0], 'rb') if args else sys.stdin.buffer
out = sys.stdout.buffer
start = time.monotonic()
sent = 0
while True:
    chunk = src.read(1 << 18)
    if not chunk:
        break
    out.write(chunk)
    out.flush()
    sent += len(chunk)
    ahead = sent / RATE - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
'''
MIB = 1 << 20
UNITS = {b'B': 1, b'KiB': 1 << 10, b'MiB': MIB}


def progress_lines(stderr: str) -> list[str]:
    """The messages of stamped progress lines; fails on any other line."""
    messages = []
    for line in stderr.splitlines():
        match = STAMPED.match(line)
        assert match, f'not a progress line: {line!r} in {stderr!r}'
        stamp = time.strptime(match.group(1), '%Y-%m-%dT%H:%M:%SZ')
        # UTC and recent: a local time stamp would be off by the zone.
        assert abs(time.mktime(stamp) - time.timezone - time.time()) < 120
        messages.append(match.group(2))
    return messages


def live_frames(output: bytes) -> list[bytes]:
    """What the live line showed, frame by frame (up to what followed)."""
    frames = []
    for piece in output.split(REDRAW)[1:]:
        frame = piece.split(b'\r\n')[0]
        if frame.startswith(b'crcache: '):
            frames.append(frame)
    return frames


class ProgressTestCase(base.HookTestCase):
    """A source ``box`` whose provision.d takes ``SLOW`` seconds."""

    SLOW = 1.2

    def setUp(self) -> None:
        super().setUp()
        self.write_source('box', type='local', maximum=3, reserve=3)
        self.hook('box', 'provision.d', '10-slow',
                  f'echo "setting up $1" >&2; sleep {self.SLOW}')


class TestOffTerminal(ProgressTestCase):
    """Plain, time-stamped lines, one per event; nothing when fast."""

    def test_fill_logs_the_start_and_each_instance(self) -> None:
        result = self.crcache('fill', 'box')
        self.assertEqual(['box-0', 'box-1', 'box-2'],
                         [line.split()[0] for line in
                          result.stdout.splitlines()[1:]])
        # The hooks' own output comes too, on lines of its own.
        hook_lines = [line for line in result.stderr.splitlines()
                      if line.startswith('setting up')]
        self.assertEqual(3, len(hook_lines), result)
        messages = progress_lines('\n'.join(
            line for line in result.stderr.splitlines()
            if line not in hook_lines))
        self.assertEqual(
            'provisioning 3 instances: box-0, box-1, box-2', messages[0],
            result)
        ready = messages[1:]
        self.assertEqual(['(1/3)', '(2/3)', '(3/3)'],
                         [m.split()[-1] for m in ready], result)
        self.assertEqual(['box-0 ready', 'box-1 ready', 'box-2 ready'],
                         sorted(m.rsplit(' ', 1)[0] for m in ready))

    def test_fill_says_which_instance_failed(self) -> None:
        self.write_source('bad', type='local', maximum=2, reserve=2)
        self.hook('bad', 'provision.d', '10-fail',
                  'case "$1" in bad-1) exit 3;; esac')
        result = self.crcache('fill', 'bad', expect=1)
        lines = result.stderr.splitlines()
        self.assertIn('1 of 2 instances failed to provision', lines[-1])
        messages = progress_lines('\n'.join(lines[:-1]))
        self.assertEqual('provisioning 2 instances: bad-0, bad-1',
                         messages[0])
        self.assertEqual(['bad-0 ready', 'bad-1 failed'],
                         sorted(m.rsplit(' ', 1)[0] for m in messages[1:]))

    def test_quiet_silences_progress_not_errors(self) -> None:
        result = self.crcache('-q', 'fill', 'box')
        self.assertEqual(3, len(result.stdout.splitlines()) - 1)
        self.assertEqual(['setting up box-0', 'setting up box-1',
                          'setting up box-2'],
                         sorted(result.stderr.splitlines()))
        result = self.crcache('-q', 'acquire', '-s', 'nonesuch',
                              expect=None)
        self.assertOneLineError(result, "'nonesuch'")

    def test_slow_provisioning_in_acquire_is_logged(self) -> None:
        result = self.crcache('acquire', '-s', 'box')
        self.assertEqual('box-0\n', result.stdout)
        lines = [line for line in result.stderr.splitlines()
                 if not line.startswith('setting up')]
        self.assertEqual(['provisioning box-0', 'box-0 ready (1/1)'],
                         progress_lines('\n'.join(lines)), result)

    def test_fast_commands_say_nothing(self) -> None:
        self.write_source('quick', type='local', maximum=2)
        for args in (('acquire', '-s', 'quick'), ('status',),
                     ('run', 'quick-0', 'true'), ('release', 'quick-0'),
                     ('acquire', '-s', 'quick', '--wait', '5')):
            result = self.crcache(*args)
            self.assertEqual('', result.stderr, result)
        # A provision.d that is quick enough is not worth a line either.
        self.hook('quick', 'provision.d', '10-quick', 'sleep 0.2')
        result = self.crcache('acquire', '-s', 'quick')
        self.assertEqual(('quick-2\n', ''), (result.stdout, result.stderr))
        # A small copy neither.
        small = os.path.join(self.home, 'small')
        self.write_file(small, 'x' * 1000, 0o644)
        result = self.crcache('cp', small, 'quick-2:' + self.home + '/b')
        self.assertEqual('', result.stderr, result)


class TestWaiting(base.HookTestCase):
    """``acquire --wait`` says what it waits for, and when it got in."""

    def setUp(self) -> None:
        super().setUp()
        self.write_source('box', type='local', maximum=1)
        self.assertEqual('box-0\n',
                         self.crcache('acquire', '-s', 'box').stdout)

    def test_the_wait_names_source_and_holders(self) -> None:
        proc = self.start('acquire', '-s', 'box', '--wait', '20')
        lines = StderrLines(proc)
        lines.wait_for('waiting')
        # Another waiter queues behind the first, and says so.
        second = self.start('acquire', '-s', 'box', '--wait', '20')
        second_lines = StderrLines(second)
        second_lines.wait_for('waiting')
        self.crcache('release', 'box-0')
        self.assertEqual(0, proc.wait(10), lines.all())
        self.assertEqual(b'box-1\n', proc.stdout.read())
        # What it waits for may change while it waits (another waiter
        # queues): each change is a line; the first and last matter here.
        messages = progress_lines(lines.all())
        waiting, got = messages[0], messages[-1]
        for line in messages[1:-1]:
            self.assertIn('waiting for', line)
        self.assertIn("waiting for room in source 'box': maximum 1, 1 live",
                      waiting)
        # Who holds what it waits for: the instance and its holder's
        # command line.
        self.assertIn('in use: box-0 by pid ', waiting)
        self.assertIn('(crcache acquire -s box)', waiting)
        self.assertRegex(got, r"^got box-1 from source 'box' after "
                              r'waiting \d+(\.\d)?s$')
        # The second one waited behind the first, then for room.
        first_line = progress_lines(second_lines.text)[0]
        self.assertIn("waiting for source 'box' behind 1 earlier "
                      'acquisition (pid ', first_line)
        # First in line now, it waits for room: said before room is made.
        second_lines.wait_for('waiting for room')
        self.crcache('release', 'box-1')
        self.assertEqual(0, second.wait(10), second_lines.all())
        messages = progress_lines(second_lines.all())
        self.assertIn("waiting for room in source 'box'", messages[1])
        self.assertIn('in use: box-1 by pid', messages[1])
        self.assertRegex(messages[-1], "^got box-2 from source 'box'")

    def test_giving_up_is_one_error_after_the_wait_line(self) -> None:
        result = self.crcache('acquire', '-s', 'box', '--wait', '1',
                              expect=1)
        lines = result.stderr.splitlines()
        self.assertEqual(2, len(lines), result)
        [waiting] = progress_lines(lines[0])
        self.assertIn("waiting for room in source 'box'", waiting)
        self.assertNotIn('Traceback', result.stderr)
        self.assertIn('waited 1s', lines[1])
        self.assertIsNone(STAMPED.match(lines[1]))

    def test_quiet_waits_silently(self) -> None:
        proc = self.start('-q', 'acquire', '-s', 'box', '--wait', '20')
        time.sleep(1)
        self.crcache('release', 'box-0')
        self.assertEqual(0, proc.wait(10))
        self.assertEqual(b'box-1\n', proc.stdout.read())
        self.assertEqual(b'', proc.stderr.read())


class TestOnTerminal(ProgressTestCase):
    """One live line, redrawn in place, that goes when the work is done."""

    def test_fill_shows_a_live_line(self) -> None:
        status, output = self.in_terminal('fill', 'box')
        self.assertEqual(0, status, output)
        frames = live_frames(output)
        self.assertGreater(len(set(frames)), 2, output)
        for frame in frames:
            self.assertRegex(
                frame, rb'^crcache: provisioning 3 instances: box-0, '
                       rb'box-1, box-2 \([0-3]/3 done, \d+\.\ds\)$')
            self.assertIsNone(STAMPED.match(frame.decode()))
        self.assertIn(b'(3/3 done, ', frames[-1])
        # Hook output is written over a cleared line, never glued to it.
        for name in (b'box-0', b'box-1', b'box-2'):
            self.assertIn(REDRAW + b'setting up ' + name + b'\r\n', output)
        # The line is cleared before the results are printed.
        self.assertTrue(output.rsplit(REDRAW, 1)[1].startswith(b'name '),
                        output)

    def test_warnings_and_errors_are_written_above_the_line(self) -> None:
        self.write_source('bad', type='local', maximum=2, reserve=2)
        self.hook('bad', 'provision.d', '10-slow',
                  'case "$1" in bad-1) exit 3;; esac; sleep 1.5')
        self.hook('bad', 'discard.d', '10-fail', 'exit 4')
        status, output = self.in_terminal('fill', 'bad')
        self.assertEqual(1, status, output)
        # bad-1's discard.d fails while bad-0 is still provisioning: the
        # warning goes on a cleared line of its own, the live line below.
        self.assertRegex(
            output, re.escape(REDRAW) + rb'crcache: [^\r]*discard\.d/'
            rb'10-fail failed for bad-1 [^\r]*\r\n' + re.escape(REDRAW)
            + rb'crcache: provisioning 2 instances')
        # The error comes once the line has gone.
        self.assertRegex(output.rsplit(REDRAW, 1)[1],
                         rb'^crcache: 1 of 2 instances failed to '
                         rb'provision: [^\r]*\r\n$')

    def test_quiet_on_a_terminal(self) -> None:
        status, output = self.in_terminal('-q', 'fill', 'box')
        self.assertEqual(0, status, output)
        self.assertNotIn(b'crcache:', output)
        self.assertNotIn(REDRAW, output)


class TestCopyProgress(test_hostile_archives.SSHCopyTestCase):
    """cp of large files: bytes and rate, through a throttled instance."""

    RATE = 8 * MIB

    def setUp(self) -> None:
        super().setUp()
        cat = os.path.join(self.bin, 'cat')
        with open(cat, 'w') as f:
            f.write(SLOW_CAT.format(python=sys.executable, rate=self.RATE))
        os.chmod(cat, 0o755)
        self.remote = self.run_on(self.name, 'mktemp -d').stdout.strip()
        self.addCleanup(self.crcache, 'run', self.name, 'rm', '-rf',
                        self.remote, expect=None)

    def big_file(self, mib: int) -> str:
        path = os.path.join(self.home, f'big-{mib}')
        with open(path, 'wb') as f:
            f.write(os.urandom(mib * MIB))
        return path

    def test_a_slow_copy_is_logged_with_bytes_and_rate(self) -> None:
        src = self.big_file(32)  # four seconds
        dst = f'{self.name}:{self.remote}/big'
        started = time.monotonic()
        result = self.crcache('cp', src, dst)
        elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 4)
        [copying, copied] = progress_lines(result.stderr)
        # After a few seconds, once: how far, of how much, how fast.
        self.assertRegex(copying, rf'^copying {re.escape(src)} to '
                                  rf'{re.escape(dst)} \([\d.]+ MiB of '
                                  r'32\.0 MiB, [\d.]+ MiB/s\)$')
        match = re.match(rf'^copied {re.escape(src)} to {re.escape(dst)}: '
                         r'32\.0 MiB in ([\d.]+)s \(([\d.]+) MiB/s\)$',
                         copied)
        self.assertIsNotNone(match, copied)
        self.assertLess(float(match.group(2)), 9)
        # -q: the same copy says nothing.
        result = self.crcache('-q', 'cp', src, dst)
        self.assertEqual('', result.stderr)

    def test_a_slow_copy_shows_live_bytes_and_rate(self) -> None:
        self.run_on(self.name, f'head -c {24 * MIB} /dev/zero '
                               f'> {self.remote}/big')
        dst = os.path.join(self.home, 'back')
        src = f'{self.name}:{self.remote}/big'
        status, output = self.in_terminal('cp', src, dst,
                                          env={'COLUMNS': '200'})
        self.assertEqual(0, status, output)
        self.assertEqual(24 * MIB, os.path.getsize(dst))
        frames = live_frames(output)
        done = []
        for frame in frames[:-1]:
            match = re.match(
                rb'^crcache: copying .* to .*back \(([\d.]+) (B|KiB|MiB) '
                rb'of 24\.0 MiB, [\d.]+ (B|KiB|MiB)/s, [\d.]+s\)$', frame)
            self.assertIsNotNone(match, output)
            done.append(float(match.group(1)) * UNITS[match.group(2)])
        # Redrawn as the bytes come, never going back.
        self.assertGreater(len(set(done)), 2, output)
        self.assertEqual(sorted(done), done)
        # It ends with a summary line in place of the live one.
        self.assertRegex(output.rsplit(REDRAW, 1)[1],
                         rb'^crcache: copied .* to .*back: 24\.0 MiB in '
                         rb'[\d.]+s \([\d.]+ MiB/s\)\r\n$')


class TestDockerCopyMeter(test_docker.DockerTestCase):
    """The Docker archive API's copies count their bytes too.

    The engine copies too fast to be slowed down from here, so the cache
    is driven in this process, with its copies logged from the start.
    """

    def test_both_ways(self) -> None:
        [name] = self.acquire()
        self.useFixture(fixtures.MockPatchObject(
            progress_stderr, 'COPY_LOG_AFTER', 0))
        self.useFixture(fixtures.EnvironmentVariable('DOCKER_HOST',
                                                     self.host))
        stream = io.StringIO()
        cache = cache_module.Cache(
            config.Config(env=self.env), store.open_store(self.env),
            progress=progress.Progress(stream, live=False))
        src = os.path.join(self.home, 'big')
        with open(src, 'wb') as f:
            f.write(os.urandom(3 * MIB))
        cache.copy(src, f'{name}:/tmp/big')
        back = os.path.join(self.home, 'back')
        cache.copy(f'{name}:/tmp/big', back)
        self.assertEqual(3 * MIB, os.path.getsize(back))
        [copying_in, copied_in, copying_out, copied_out] = progress_lines(
            stream.getvalue())
        self.assertEqual(f'copying {src} to {name}:/tmp/big (0 B)',
                         copying_in)
        # The archive's headers come on top of the file.
        self.assertRegex(copied_in, rf'^copied {re.escape(src)} to '
                                    rf'{name}:/tmp/big: 3\.0 MiB in ')
        self.assertEqual(f'copying {name}:/tmp/big to {back} (0 B)',
                         copying_out)
        self.assertRegex(copied_out, rf'^copied {name}:/tmp/big to '
                                     rf'{re.escape(back)}: 3\.0 MiB in ')
