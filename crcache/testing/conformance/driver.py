"""The conformance checks made on a backend driver itself.

Discarding what is already gone (or was never recorded), and, for a
type that labels its resources, listing exactly this store's and this
source's, and ``crcache gc`` finding and destroying leaks. The driver is
loaded exactly as crcache loads it, from the same ``source.conf``.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable
from typing import Any

from crcache.testing.conformance.kit import BackendKit


class DriverChecks(BackendKit):
    """Discarding and leaks; part of the backend suite."""

    # -- discarding and leaks (the driver itself) --------------------------

    def _driver(self, owner: str, source: str | None = None) -> Any:
        driver = self.load_source(source)
        driver.owner = owner
        return driver

    def _provision(self, driver: Any) -> tuple[str, dict]:
        """Make one resource through the driver; discarded afterwards."""
        name = f'{driver.name}-{random.randrange(10 ** 6, 10 ** 7)}'
        with self.world.applied():
            refs = driver.provision([name])
        self.addCleanup(self._applied, driver.discard, refs)
        self.assertEqual([name], list(refs))
        self.assertEqual(refs, json.loads(json.dumps(refs)),
                         'a reference must survive a JSON round trip')
        return name, refs

    def _applied(self, func: Callable, *args: Any) -> Any:
        with self.world.applied():
            return func(*args)

    def test_discard_of_what_is_already_gone(self) -> None:
        """discard is idempotent, and takes an empty reference."""
        driver = self._driver(f'kit{uuid.uuid4().hex[:12]}')
        name, refs = self._provision(driver)
        self._applied(driver.discard, refs)
        self._applied(driver.discard, refs)
        self._applied(driver.discard, {name: {}})
        never = f'{driver.name}-{random.randrange(10 ** 7, 10 ** 8)}'
        self._applied(driver.discard, {never: {}})

    def test_discard_finds_a_resource_by_its_name(self) -> None:
        """``discard({name: {}})`` (no reference was recorded, as after
        a failed or interrupted provision) destroys what was made."""
        if not self.lists_leaks:
            self.skipTest('the type does not label its resources')
        owner = f'kit{uuid.uuid4().hex[:12]}'
        driver = self._driver(owner)
        name, refs = self._provision(driver)
        self.assertIn(name, self._applied(driver.list_owned,
                                          owner).values())
        self._applied(driver.discard, {name: {}})
        self.assertNotIn(name, self._applied(driver.list_owned,
                                             owner).values())

    def test_list_owned_lists_this_store_and_source_only(self) -> None:
        owner = f'kit{uuid.uuid4().hex[:12]}'
        driver = self._driver(owner)
        if not self.lists_leaks:
            self.assertIsNone(self._applied(driver.list_owned, owner))
            return
        other_store = self._driver(f'kit{uuid.uuid4().hex[:12]}')
        other_name = f'{self.source_name}-other'
        self.world.write_source(other_name, self.keys)
        other_source = self._driver(owner, other_name)
        mine, _ = self._provision(driver)
        theirs, _ = self._provision(other_store)
        sibling, _ = self._provision(other_source)
        owned = self._applied(driver.list_owned, owner)
        self.assertEqual([mine], list(owned.values()), owned)
        [resource] = owned
        self.assertIsInstance(resource, str)
        self._applied(driver.destroy_owned, resource)
        self.assertEqual({}, self._applied(driver.list_owned, owner))
        # Already gone is success.
        self._applied(driver.destroy_owned, resource)
        self.assertEqual([theirs], list(self._applied(
            other_store.list_owned, other_store.owner).values()))
        self.assertEqual([sibling], list(self._applied(
            other_source.list_owned, owner).values()))

    def test_gc_finds_and_destroys_leaks(self) -> None:
        """A resource the store forgot is reported, then destroyed."""
        if not self.lists_leaks:
            self.skipTest('the type does not label its resources')
        name = self.acquire_one()
        # Forgotten the way a user forgets a source it cannot reach: its
        # definition gone, then ``gc --forget``; then it comes back.
        directory = self.world.source_dir(self.source_name)
        hidden = os.path.join(os.path.dirname(directory),
                              '.' + self.source_name)
        os.rename(directory, hidden)
        try:
            self.crcache('gc', '--forget', self.source_name)
        finally:
            os.rename(hidden, directory)
        self.assertEqual({}, self.instances(self.source_name))
        actions = self.gc()
        self.assertEqual([(name, self.source_name, 'leaked')],
                         [(a['name'], a['source'], a['action'])
                          for a in actions], actions)
        actions = self.gc('--leaks')
        self.assertEqual([(name, self.source_name, 'destroyed')],
                         [(a['name'], a['source'], a['action'])
                          for a in actions], actions)
        self.assertEqual([], self.gc())

    def test_releasing_everything_leaves_nothing(self) -> None:
        names = self.acquire(self.source_name)
        if self.parallel_instances >= 2:
            self.configure(maximum=2)
            names += self.acquire(self.source_name)
        self.release(*names)
        self.assertEqual({}, self.instances(self.source_name))
        # Nothing labelled as this store's is left for gc to find.
        self.assertEqual([], self.gc())
