"""The conformance checks of the snapshot part of the Source contract.

A type that declares ``supports_snapshot`` must capture a resource,
start new ones from the capture, list and drop its captures by their
labels, and say :class:`~crcache.exceptions.CaptureGone` for a capture
that is no more; crcache must then provision it once and start later
instances from the capture. A type that does not must have ``snapshot
= provisioned`` refused as a configuration error naming the key.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any

from crcache import exceptions
from crcache.testing.conformance.kit import BackendKit, write_file


class SnapshotChecks(BackendKit):
    """``snapshot = provisioned``; part of the backend suite."""

    def _snapshot_driver(self) -> Any:
        driver = self.load_source(None)
        driver.owner = f'kit{uuid.uuid4().hex[:12]}'
        return driver

    def _applied_call(self, func: Any, *args: Any) -> Any:
        with self.world.applied():
            return func(*args)

    def test_snapshot_refused_where_it_cannot_be(self) -> None:
        """A type that cannot capture refuses snapshot = provisioned."""
        driver = self._snapshot_driver()
        if driver.supports_snapshot:
            self.skipTest('the type captures')
        path = self.configure(snapshot='provisioned')
        result = self.crcache('acquire', '-s', self.source_name, expect=1)
        self.assertOneLineError(result, path, 'snapshot',
                                f'type {self.type_name} cannot')

    def test_capture_and_start_from_it(self) -> None:
        """The driver's snapshot methods, called as crcache calls them."""
        driver = self._snapshot_driver()
        if not driver.supports_snapshot:
            self.skipTest('the type does not capture')
        basis = self._applied_call(driver.snapshot_basis)
        self.assertIsInstance(basis, dict)
        first = f'{driver.name}-{random.randrange(10 ** 6, 10 ** 7)}'
        refs = self._applied_call(driver.provision, [first])
        self.addCleanup(self._applied_call, driver.discard, refs)
        self._applied_call(driver.capture, refs[first], [
            'sh', '-c', 'echo captured > /tmp/crcache-kit-marker'])
        fingerprint = uuid.uuid4().hex[:16]
        capture = self._applied_call(driver.take_capture, refs[first],
                                     fingerprint)
        self.addCleanup(self._drop_quietly, driver, capture)
        self.assertIsInstance(capture, str)
        self.assertEqual(
            {capture: fingerprint},
            self._applied_call(driver.list_captures, driver.owner))
        other = self._snapshot_driver()
        self.assertEqual({}, self._applied_call(other.list_captures,
                                                other.owner))
        # The captured resource is left usable.
        status, out, _ = self._applied_call(
            driver.capture, refs[first], ['cat', '/tmp/crcache-kit-marker'])
        self.assertEqual((0, b'captured\n'), (status, out))
        second = f'{driver.name}-{random.randrange(10 ** 6, 10 ** 7)}'
        started = self._applied_call(driver.provision_from, [second],
                                     capture)
        self.addCleanup(self._applied_call, driver.discard, started)
        self.assertEqual([second], list(started))
        self.assertEqual(started, json.loads(json.dumps(started)))
        status, out, _ = self._applied_call(
            driver.capture, started[second],
            ['cat', '/tmp/crcache-kit-marker'])
        self.assertEqual((0, b'captured\n'), (status, out))
        # In use: refused as such, or dropped (the backend decides).
        try:
            self._applied_call(driver.drop_capture, capture)
        except exceptions.CaptureInUse:
            self._applied_call(driver.discard, started)
            self._applied_call(driver.discard, refs)
            self._applied_call(driver.drop_capture, capture)
        self.assertEqual({}, self._applied_call(driver.list_captures,
                                                driver.owner))
        self._applied_call(driver.drop_capture, capture)  # gone: success
        third = f'{driver.name}-{random.randrange(10 ** 6, 10 ** 7)}'
        self.assertRaises(exceptions.CaptureGone, self._applied_call,
                          driver.provision_from, [third], capture)
        self.assertEqual({}, self._applied_call(driver.list_owned,
                                                driver.owner) or {})

    def _drop_quietly(self, driver: Any, capture: str) -> None:
        try:
            self._applied_call(driver.drop_capture, capture)
        except exceptions.CrcacheError:
            pass

    def test_provision_once_through_crcache(self) -> None:
        """provision.d runs for the first instance only."""
        driver = self._snapshot_driver()
        if not driver.supports_snapshot:
            self.skipTest('the type does not capture')
        hooks = os.path.join(self.world.source_dir(self.source_name),
                             'provision.d')
        os.makedirs(hooks, exist_ok=True)
        runs = os.path.join(self.world.project, 'provision-runs')
        write_file(os.path.join(hooks, '10-count'),
                   f'#!/bin/sh\necho "$1" >> {runs}\n', 0o755)
        self.configure(snapshot='provisioned')
        self.addCleanup(self.world.run, 'snapshot', 'drop', self.source_name)
        first = self.acquire(self.source_name)[0]
        self.release(first)
        second = self.acquire(self.source_name)[0]
        with open(runs) as f:
            self.assertEqual([first], f.read().split())
        listed = json.loads(self.crcache('snapshot', 'list', '-f',
                                         'json').stdout)
        self.assertEqual([(self.source_name, 'ready', 'yes')],
                         [(r['source'], r['state'], r['current'])
                          for r in listed])
        self.release(second)
