"""Provision once and clean instances, against a real Docker engine.

``snapshot = provisioned``: the first container of a source runs
provision.d and is committed to a labelled image; later ones start from
it. ``reset = recreate``: a released container is replaced by a fresh
one in the background. Every test drives the real ``crcache`` command;
a provision.d script counts its runs in a file of the test's, so that
"provision.d did not run again" is something the test sees. The
engine's containers and images labelled with the test's store are
removed after each test, pass or fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from crcache.tests.functional import base
from crcache.tests.functional import dockerd
from crcache.tests.functional import test_docker

#: What provision.d does: count its run, take a while, leave a marker.
SETUP = '''#!/bin/sh
echo "$1" >> {runs}
sleep {pause}
crcache run "$1" 'echo provisioned > /marker'
'''


class SnapshotTestCase(test_docker.DockerTestCase):
    """The source ``box`` with snapshot = provisioned and a slow hook."""

    source_overrides = {'snapshot': 'provisioned'}
    pause = 2

    def setUp(self) -> None:
        super().setUp()
        self.runs_file = os.path.join(self.home, 'provision-runs')
        self.hooks = os.path.join(self.config_root, 'sources', 'box',
                                  'provision.d')
        os.mkdir(self.hooks)
        self.write_hook()

    def _remove_containers(self) -> None:
        store = dockerd.store_id(self)
        dockerd.remove_containers(self.host, store)
        dockerd.remove_captures(self.host, store)

    def write_hook(self, extra: str = '') -> None:
        self.write_file(os.path.join(self.hooks, '10-setup'),
                        SETUP.format(runs=self.runs_file, pause=self.pause)
                        + extra, 0o755)

    def runs(self) -> int:
        """How many times provision.d has run."""
        try:
            with open(self.runs_file) as f:
                return len(f.read().split())
        except FileNotFoundError:
            return 0

    def captured(self) -> list[dict]:
        """The engine's captured images of this test's store."""
        return dockerd.captures(self.host, dockerd.store_id(self))

    def snapshots(self, *args: str) -> list[dict]:
        return json.loads(self.crcache('snapshot', 'list', '-f', 'json',
                                       *args).stdout)

    def image_of(self, name: str) -> str:
        """The image id instance ``name``'s container was made from."""
        container = self.container_of(name)
        return self.client.inspect_container(container['Id'])['Image']


class TestProvisionOnce(SnapshotTestCase):

    def test_later_instances_start_from_the_capture(self) -> None:
        [first] = self.acquire()
        self.assertEqual(1, self.runs())
        self.assertEqual('provisioned\n',
                         self.run_on(first, 'cat', '/marker').stdout)
        [row] = self.snapshots()
        self.assertEqual(('box', 'ready', 'yes'),
                         (row['source'], row['state'], row['current']))
        [image] = self.captured()
        self.assertEqual(image['Id'], row['capture'])
        self.assertEqual(row['fingerprint'],
                         image['Labels']['crcache.capture.fingerprint'])
        self.assertEqual('box', image['Labels']['crcache.capture.source'])

        started = time.monotonic()
        second, third = self.acquire(count=2)
        took = time.monotonic() - started
        self.assertEqual(1, self.runs(), 'provision.d ran again')
        self.assertLess(took, self.pause, 'started from the capture, yet '
                        'as slow as provision.d')
        for name in (second, third):
            self.assertEqual('provisioned\n',
                             self.run_on(name, 'cat', '/marker').stdout)
            self.assertEqual(image['Id'], self.image_of(name))
        # The captured instance's concurrency holds for its copies.
        rows = json.loads(self.crcache('status', '-v', '-f',
                                       'json').stdout)
        self.assertEqual(1, len({r['concurrency'] for r in rows}), rows)
        # status -v shows the capture.
        table = self.crcache('status', '-v').stdout
        self.assertRegex(table, r'box\s+ready\s+' + row['fingerprint'])

    def test_changed_hook_provisions_afresh_and_gc_removes_the_old(self):
        [first] = self.acquire()
        [old] = self.snapshots()
        self.crcache('release', first)
        # The same bytes again (a new mtime) change nothing...
        self.write_hook()
        [second] = self.acquire()
        self.assertEqual(1, self.runs())
        self.crcache('release', second)
        # ...new content does.
        self.write_hook('# installs one more package\n')
        [third] = self.acquire()
        self.assertEqual(2, self.runs())
        rows = {r['fingerprint']: r for r in self.snapshots()}
        self.assertEqual(2, len(rows), rows)
        self.assertEqual('no', rows[old['fingerprint']]['current'])
        [new] = [r for r in rows.values() if r['current'] == 'yes']
        # The instance that provisioned afresh came from the base image.
        self.assertNotIn(self.image_of(third),
                         [r['capture'] for r in rows.values()])
        actions = self.gc()
        self.assertIn(('box', 'discarded'),
                      [(a['source'], a['action']) for a in actions])
        self.assertEqual([new['capture']],
                         [i['Id'] for i in self.captured()])
        self.assertEqual([new['fingerprint']],
                         [r['fingerprint'] for r in self.snapshots()])
        # The capture in use stays, and new instances still use it.
        [fourth] = self.acquire()
        self.assertEqual(2, self.runs())
        self.assertEqual(new['capture'], self.image_of(fourth))

    def test_snapshot_drop(self) -> None:
        [first] = self.acquire()
        self.crcache('release', first)
        [row] = self.snapshots()
        dropped = json.loads(self.crcache('snapshot', 'drop', 'box', '-f',
                                          'json').stdout)
        import jsonschema
        from crcache.tests.functional import test_schemas
        jsonschema.validate(dropped, test_schemas.schema('snapshot_drop'))
        self.assertEqual([('box', 'dropped')],
                         [(a['source'], a['action']) for a in dropped])
        self.assertIn(row['capture'].split(':')[1][:12],
                      dropped[0]['reason'])
        self.assertEqual([], self.snapshots())
        self.assertEqual([], self.captured())
        self.acquire()
        self.assertEqual(2, self.runs())  # provisioned and captured again
        self.assertEqual(1, len(self.captured()))

    def test_concurrent_first_acquires_capture_once(self) -> None:
        procs = [self.start('acquire', '-s', 'box') for _ in range(4)]
        names = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            self.assertEqual(0, proc.returncode, err)
            names.extend(out.decode().split())
        self.assertEqual(4, len(set(names)))
        # None could start from a capture that was not there yet: each
        # ran provision.d; exactly one captured.
        self.assertEqual(4, self.runs())
        self.assertEqual(1, len(self.captured()))
        [row] = self.snapshots()
        self.assertEqual('ready', row['state'])
        self.assertEqual([], [a for a in self.gc()
                              if a['action'] != 'kept'])
        for name in names:
            self.assertEqual('provisioned\n',
                             self.run_on(name, 'cat', '/marker').stdout)


class TestCrashes(SnapshotTestCase):

    def test_kill_while_capture_is_claimed(self) -> None:
        proc = self.start('acquire', '-s', 'box')
        self.wait_for(lambda: self.runs() == 1, 30,
                      'provision.d to be running')
        rows = self.snapshots('--no-check')
        self.assertEqual(['capturing'], [r['state'] for r in rows])
        proc.kill()
        proc.wait()
        actions = {(a['source'], a['action']) for a in self.gc()}
        self.assertIn(('box', 'forgotten'), actions)
        self.assertIn(('box', 'discarded'), actions)
        self.assertEqual([], self.containers())
        self.assertEqual([], self.captured())
        self.assertEqual([], self.snapshots())
        # And the next acquire provisions and captures as if new.
        self.wait_for(lambda: not subprocess.run(
            ['pgrep', '-f', self.hooks], capture_output=True).stdout, 10,
            'the orphaned provision.d to be stopped')
        self.acquire()
        self.assertEqual(2, self.runs())
        self.assertEqual(['ready'],
                         [r['state'] for r in self.snapshots()])

    def test_capture_made_but_not_recorded_is_a_leak(self) -> None:
        """What a kill between the engine's commit and the store's
        record leaves: an image with crcache's labels, unknown to the
        store. gc lists it; gc --leaks removes it."""
        [first] = self.acquire()
        [row] = self.snapshots()
        # Made as crcache makes one, then forgotten by the store.
        container = self.container_of(first)['Id']
        leaked = self.client.commit(
            container, repository='crcache-capture', tag='leaked',
            conf={'Labels': {
                'crcache.capture.store': self.store,
                'crcache.capture.source': 'box',
                'crcache.capture.fingerprint': row['fingerprint']}})['Id']
        found = [a for a in self.gc() if a['action'] == 'leaked']
        self.assertEqual(1, len(found), found)
        self.assertIn(leaked.split(':')[1][:12], found[0]['reason'])
        self.assertIn('crcache gc --leaks', found[0]['reason'])
        destroyed = [a for a in self.gc('--leaks')
                     if a['action'] == 'destroyed']
        self.assertEqual(1, len(destroyed), destroyed)
        self.assertEqual([row['capture']],
                         [i['Id'] for i in self.captured()])


class TestReset(SnapshotTestCase):

    source_overrides = {'snapshot': 'provisioned', 'reserve': 1,
                        'reset': 'recreate'}

    def setUp(self) -> None:
        super().setUp()
        # Before the engine is cleaned: no reset of ours may still be
        # making a container then.
        self.addCleanup(self.wait_for, lambda: not self.resets_running(),
                        60, 'background resets to end')

    def resets_running(self) -> list[int]:
        """The background resets (crcache fill --replace) of this test."""
        mine = f"XDG_CACHE_HOME={self.env['XDG_CACHE_HOME']}".encode()
        found = []
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                with open(f'/proc/{entry}/cmdline', 'rb') as f:
                    cmdline = f.read()
                with open(f'/proc/{entry}/environ', 'rb') as f:
                    environ = f.read().split(b'\0')
            except OSError:
                continue
            if b'fill\0--replace' in cmdline and mine in environ:
                found.append(int(entry))
        return found

    def settled(self) -> bool:
        rows = json.loads(self.crcache('status', '-v', '-f',
                                       'json').stdout)
        return [r['state'] for r in rows] == ['cached']

    def test_next_user_gets_a_fresh_instance(self) -> None:
        [first] = self.acquire()
        self.run_on(first, 'echo mine > /userfile')
        self.crcache('release', first)
        self.wait_for(self.settled, 60, 'the reset to finish')
        [second] = self.acquire()
        self.assertNotEqual(first, second)
        result = self.run_on(second, 'cat /userfile', expect=None)
        self.assertNotEqual(0, result.returncode, result)
        self.assertEqual('provisioned\n',
                         self.run_on(second, 'cat', '/marker').stdout)
        self.assertEqual(1, self.runs())  # the fresh one: from the capture
        self.assertEqual([second],
                         [c['Labels']['crcache.instance']
                          for c in self.containers()])
        log = os.path.join(self.cache_dir, 'resets', 'reset.log')
        with open(log) as f:
            self.assertIn(f'{first}: reset: discarded, box refilled',
                          f.read())

    def test_acquire_during_a_reset_waits_for_it(self) -> None:
        self.write_box(snapshot='provisioned', reserve=1, maximum=1,
                       reset='recreate')
        [first] = self.acquire()
        self.crcache('release', first)
        # At its maximum while the reset runs: the acquire waits for the
        # fresh instance instead of failing.
        result = self.crcache('acquire', '-s', 'box')
        [second] = result.stdout.split()
        self.assertNotEqual(first, second)
        self.assertEqual(1, self.runs())

    def test_failed_reset_is_reported(self) -> None:
        [first] = self.acquire()
        # Its image is changed to one the engine does not have (and may
        # not pull): the fresh instance cannot be made.
        self.write_box(snapshot='provisioned', reserve=1, reset='recreate',
                       docker_image='crcache-test/no-such-image:latest')
        self.crcache('release', first)
        log = os.path.join(self.cache_dir, 'resets', 'reset.log')
        self.wait_for(lambda: os.path.exists(log) and 'reset failed' in
                      open(log).read(), 60, 'the reset to fail')
        status = self.crcache('status')
        self.assertIn(f"source 'box': the reset of {first} failed",
                      status.stderr)
        self.assertIn('no-such-image', status.stderr)
        self.assertEqual([], json.loads(self.crcache(
            'status', '-v', '-f', 'json').stdout))


class TestReplace(SnapshotTestCase):
    """``crcache fill --replace``: what a reset runs, by hand."""

    source_overrides = {'snapshot': 'provisioned', 'reserve': 1}

    def test_replace_a_cached_instance(self) -> None:
        [made] = json.loads(self.crcache('fill', '-f', 'json').stdout)
        old = made['name']
        container = self.container_of(old)['Id']
        result = self.crcache('fill', '--replace', old, '-f', 'json')
        [fresh] = json.loads(result.stdout)
        self.assertNotEqual(old, fresh['name'])
        self.assertEqual('cached', fresh['state'])
        rows = json.loads(self.crcache('status', '-v', '-f', 'json').stdout)
        self.assertEqual([(fresh['name'], 'cached')],
                         [(r['name'], r['state']) for r in rows])
        self.assertGone(container)
        self.assertEqual(1, self.runs())  # the fresh one: from the capture

    def test_an_instance_in_use_is_not_replaced(self) -> None:
        [name] = self.acquire()
        result = self.crcache('fill', '--replace', name, expect=None)
        self.assertOneLineError(result, f"instance '{name}' is in-use",
                                'only a cached instance')
        self.assertEqual('provisioned\n',
                         self.run_on(name, 'cat', '/marker').stdout)


class TestConfigurationErrors(base.CLITestCase):
    """What a source type that cannot capture says (no engine needed)."""

    def test_snapshot_on_a_type_that_cannot_capture(self) -> None:
        path = self.write_source('here', type='local',
                                 snapshot='provisioned')
        result = self.crcache('acquire', '-s', 'here', expect=None)
        self.assertOneLineError(result, path, 'snapshot',
                                'type local cannot')

    def test_reset_snapshot_is_refused_for_every_type(self) -> None:
        for kind, keys in (('local', {}),
                           ('docker', {'docker_image': 'busybox',
                                       'snapshot': 'provisioned'})):
            path = self.write_source('here', type=kind, reserve=1,
                                     reset='snapshot', **keys)
            result = self.crcache('acquire', '-s', 'here', expect=None)
            self.assertOneLineError(result, path, 'reset',
                                    'restore an instance in place',
                                    f'type {kind} cannot',
                                    'use reset=recreate')

    def test_reset_without_reserve(self) -> None:
        path = self.write_source('here', type='local', reset='recreate')
        result = self.crcache('acquire', '-s', 'here', expect=None)
        self.assertOneLineError(result, path, 'reset', 'reserve=0')

    def test_pool_refuses_the_keys(self) -> None:
        self.write_source('here', type='local')
        path = self.write_source('both', type='pool', sources='here',
                                 reset='recreate')
        result = self.crcache('acquire', '-s', 'both', expect=None)
        self.assertOneLineError(result, path, 'reset',
                                'set it on the sources it draws from')

    def test_unknown_value(self) -> None:
        path = self.write_source('here', type='local', snapshot='always')
        result = self.crcache('acquire', '-s', 'here', expect=None)
        self.assertOneLineError(result, path, 'snapshot', 'always')
