"""Tests for crcache.progress: meters, plain lines and the live line."""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time

import fixtures
import testtools

from crcache import progress
from crcache.progress import stderr as progress_stderr

STAMPED = re.compile(r'crcache: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (.*)\Z')


class Stream(io.StringIO):
    """stderr as a progress reporter sees it."""

    def fileno(self) -> int:
        raise io.UnsupportedOperation('no descriptor')


def messages(stream: Stream) -> list[str]:
    """The messages of the plain lines written so far (all stamped)."""
    found = []
    for line in stream.getvalue().splitlines():
        match = STAMPED.match(line)
        assert match, line
        found.append(match.group(1))
    return found


class TestFormats(testtools.TestCase):

    def test_size(self) -> None:
        self.assertEqual(['0 B', '1023 B', '1.0 KiB', '1.5 MiB',
                          '200.0 MiB', '2048.0 GiB'],
                         [progress.size(n) for n in
                          (0, 1023, 1024, 1.5 * 2**20, 200 * 2**20,
                           2**41)])

    def test_duration(self) -> None:
        self.assertEqual(['0.4s', '9.9s', '12s', '3m05s', '1h02m'],
                         [progress.duration(s) for s in
                          (0.4, 9.94, 12.7, 185, 3720)])

    def test_stamp_is_utc(self) -> None:
        self.assertEqual('2026-12-02T06:30:01Z',
                         progress.stamp(1796193001))


class TestMeter(testtools.TestCase):

    def test_no_meter_outside_a_copy(self) -> None:
        self.assertIs(progress.IDLE, progress.meter())
        progress.meter().add(10)
        self.assertEqual(0, progress.IDLE.done)
        chunks = [b'a']
        self.assertEqual([b'a'], list(progress.meter().counted(chunks)))

    def test_each_thread_has_its_own(self) -> None:
        seen = {}

        def copy(name: str, count: int) -> None:
            with progress.metering(progress.Meter()) as mine:
                for _ in range(count):
                    progress.meter().add(1)
                    time.sleep(0.001)
                seen[name] = mine.done
            seen[name + ' after'] = progress.meter()

        threads = [threading.Thread(target=copy, args=(str(n), 20 * n))
                   for n in (1, 2, 3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual({'1': 20, '2': 40, '3': 60}, {
            k: v for k, v in seen.items() if 'after' not in k})
        for n in '123':
            self.assertIs(progress.IDLE, seen[n + ' after'])

    def test_watching_a_shared_offset(self) -> None:
        meter = progress.Meter()
        r, w = os.pipe()
        path = self.temp_file(b'x' * 5000)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        meter.add(7)
        with meter.watching(lambda: os.lseek(fd, 0, os.SEEK_CUR)):
            os.read(fd, 1000)  # as another process sharing it would
            self.assertEqual(1007, meter.done)
            os.read(fd, 10000)
            self.assertEqual(5007, meter.done)
        os.lseek(fd, 0, os.SEEK_SET)  # no longer watched
        self.assertEqual(5007, meter.done)
        os.close(r)
        os.close(w)

    def test_a_failing_probe_counts_nothing(self) -> None:
        meter = progress.Meter()

        def probe() -> int:
            raise OSError('closed')

        with meter.watching(probe):
            self.assertEqual(0, meter.done)
        self.assertEqual(0, meter.done)

    def test_writer_and_counted(self) -> None:
        meter = progress.Meter()
        out = io.BytesIO()
        meter.writer(out).write(b'abc')
        self.assertEqual(b'abc', out.getvalue())
        self.assertEqual([b'de', b'f'], list(meter.counted([b'de', b'f'])))
        self.assertEqual(6, meter.done)

    def temp_file(self, data: bytes) -> str:
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'f')
        with open(path, 'wb') as f:
            f.write(data)
        return path


class TestQuiet(testtools.TestCase):

    def test_says_nothing_and_starts_no_thread(self) -> None:
        reporter = progress.reporter(Stream(), quiet=True)
        self.assertIs(type(reporter), progress.Reporter)
        before = threading.active_count()
        reporter.event('x')
        with reporter.task('slow', count=2) as task:
            task.step('a ready')
            task.update('slower')
        with reporter.copying('a', 'b'):
            self.assertIs(progress.IDLE, progress.meter())
        self.assertEqual(before, threading.active_count())


class TestPlain(testtools.TestCase):
    """Off a terminal: stamped lines, one per event."""

    def setUp(self) -> None:
        super().setUp()
        self.stream = Stream()
        self.progress = progress.reporter(self.stream)
        self.assertFalse(self.progress._live)

    def test_events_and_tasks(self) -> None:
        self.progress.event('waiting for the state store')
        with self.progress.task('provisioning 2 instances: a-0, a-1',
                                count=2) as task:
            task.step('a-1 ready')
            task.step('a-0 failed')
        self.assertEqual(['waiting for the state store',
                          'provisioning 2 instances: a-0, a-1',
                          'a-1 ready (1/2)', 'a-0 failed (2/2)'],
                         messages(self.stream))

    def test_a_task_quicker_than_its_delay_says_nothing(self) -> None:
        with self.progress.task('provisioning a-0', count=1,
                                after=0.5) as task:
            task.step('a-0 ready')
            task.finish('done')
        self.assertEqual('', self.stream.getvalue())

    def test_a_slow_task_is_logged_late_with_how_far_it_got(self) -> None:
        with self.progress.task('provisioning a-0, a-1', count=2,
                                after=0.3) as task:
            task.step('a-0 ready')
            self.assertEqual('', self.stream.getvalue())
            time.sleep(0.5)
            task.step('a-1 ready')
        self.assertEqual(['provisioning a-0, a-1 (1/2 done)',
                          'a-1 ready (2/2)'], messages(self.stream))

    def test_changes_and_summary(self) -> None:
        with self.progress.task('waiting for x') as task:
            task.update('waiting for x')
            task.update('waiting for y')
            task.finish('got it')
        self.assertEqual(['waiting for x', 'waiting for y', 'got it'],
                         messages(self.stream))

    def test_copy_is_logged_once_slow_then_summed_up(self) -> None:
        self.useFixture(fixtures.MockPatchObject(
            progress_stderr, 'COPY_LOG_AFTER', 0.1))
        with self.progress.copying('a', 'h-0:b'):
            meter = progress.meter()
            meter.expect(3 * 2**20)
            meter.add(2**20)
            time.sleep(0.3)  # the ticker logs it
            meter.add(2 * 2**20)
        [copying, copied] = messages(self.stream)
        # (Logged at 0.1s, while 1 MiB is done: too soon for a rate.)
        self.assertRegex(copying, r'^copying a to h-0:b \([13]\.0 MiB of '
                                  r'3\.0 MiB(, [\d.]+ [KM]iB/s)?\)$')
        self.assertRegex(copied, r'^copied a to h-0:b: 3\.0 MiB in [\d.]+s '
                                 r'\([\d.]+ MiB/s\)$')

    def test_a_quick_copy_says_nothing(self) -> None:
        with self.progress.copying('a', 'h-0:b'):
            progress.meter().add(2**20)
        self.assertEqual('', self.stream.getvalue())

    def test_output_passes_through(self) -> None:
        r, w = os.pipe()
        reporter = progress.Progress(Stream(), live=False)
        reporter._fd = w
        reporter.output(b'hook says hi\n')
        os.close(w)
        self.assertEqual(b'hook says hi\n', os.read(r, 100))
        os.close(r)

    def test_the_ticker_goes_with_the_tasks(self) -> None:
        with self.progress.task('slow', after=5):
            self.assertIsNotNone(self.progress._ticker)
            ticker = self.progress._ticker
        ticker.join(2)
        self.assertFalse(ticker.is_alive())
        self.assertIsNone(self.progress._ticker)


class TestLive(testtools.TestCase):
    """On a terminal: one line, redrawn; everything else above it."""

    def setUp(self) -> None:
        super().setUp()
        self.useFixture(fixtures.EnvironmentVariable('COLUMNS', '60'))
        # No redraws but those the test makes (and delayed tasks').
        self.useFixture(fixtures.MockPatchObject(progress_stderr, 'TICK', 10))
        self.stream = Stream()
        self.console = logging.StreamHandler(self.stream)
        self.console.setFormatter(logging.Formatter('crcache: %(message)s'))
        self.log = logging.getLogger('crcache.test-progress')
        self.log.propagate = False
        self.log.addHandler(self.console)
        self.addCleanup(self.log.removeHandler, self.console)
        self.progress = progress.Progress(self.stream, live=True,
                                          console=self.console)
        r, self.progress._fd = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, self.progress._fd)

    def written(self) -> str:
        """What the stream got, elapsed times shown as T."""
        return re.sub(r'\d+\.\ds', 'T', self.stream.getvalue())

    def test_drawn_redrawn_and_cleared(self) -> None:
        with self.progress.task('provisioning a-0, a-1', count=2,
                                counting='ready') as task:
            task.step('a-0 ready')
        self.assertEqual(
            '\r\x1b[Kcrcache: provisioning a-0, a-1 (0/2 ready, T)'
            '\r\x1b[Kcrcache: provisioning a-0, a-1 (1/2 ready, T)'
            '\r\x1b[K', self.written())

    def test_long_messages_are_cut_to_the_width(self) -> None:
        with self.progress.task('x' * 100, count=3):
            line = self.progress._line
        self.assertEqual(59, len(line))
        self.assertRegex(line, r'^crcache: x+\.\.\. \(0/3 done, \d\.\ds\)$')

    def test_logging_and_output_go_above_the_line(self) -> None:
        with self.progress.task('waiting') as task:
            self.log.warning('careful')
            self.progress.output(b'partial')
            # Someone else's unfinished line is left alone...
            task.update('waiting more')
            self.progress.output(b' line\n')
            self.progress.event('an event')
            task.finish('waited')
        self.assertEqual(
            '\r\x1b[Kcrcache: waiting (T)'
            '\r\x1b[Kcrcache: careful\n'
            '\r\x1b[Kcrcache: waiting (T)'
            '\r\x1b[K'
            # (output goes to the descriptor, not this stream)
            '\r\x1b[Kcrcache: waiting more (T)'
            '\r\x1b[Kcrcache: an event\n'
            '\r\x1b[Kcrcache: waiting more (T)'
            '\r\x1b[Kcrcache: waited\n', self.written())

    def test_delayed_task_is_drawn_only_once_due(self) -> None:
        with self.progress.task('slow', after=0.3):
            time.sleep(0.1)
            self.assertEqual('', self.stream.getvalue())
            time.sleep(0.5)
            self.assertIn('crcache: slow (0.', self.stream.getvalue())
        self.assertTrue(self.stream.getvalue().endswith('\r\x1b[K'))

    def test_several_tasks(self) -> None:
        with self.progress.task('first'):
            with self.progress.task('second'):
                self.assertRegex(self.progress._line,
                                 r'^crcache: second \(\d\.\ds\) \[\+1 more\]$')
            self.assertRegex(self.progress._line,
                             r'^crcache: first \(\d\.\ds\)$')
