"""The conformance suite (:mod:`crcache.testing`) against ``docker``.

:mod:`~crcache.tests.functional.dockerd` provides the engine and the test
image. Whatever a test leaves on the engine, pass or fail, is removed
after it: the containers and captured images labelled with its state
store's id.
"""

from __future__ import annotations

import os
import sqlite3

import testtools

from crcache import testing
from crcache.tests.functional import dockerd


class TestDocker(testing.SourceConformance, testtools.TestCase):
    """The suite's source makes containers of the test image."""

    lists_leaks = True
    opts_namespace = 'crcache.sources.docker'

    def source_keys(self) -> dict:
        self.host, self.image = dockerd.engine(self)
        # Runs after the suite has released what the test held.
        self.addCleanup(self._remove_containers)
        return {'type': 'docker', 'docker_image': self.image,
                'docker_pull': 'never',
                'docker_host': self.host}

    def unreachable_keys(self) -> dict:
        return dict(self.keys, docker_host='unix:///nonexistent.sock')

    def break_instance(self, name: str) -> bool:
        client = dockerd._client(self.host)
        [container] = [c for c in dockerd.containers(self.host,
                                                     self.store_id())
                       if c['Labels'].get('crcache.instance') == name]
        client.kill(container['Id'])
        self.wait_for(lambda: not client.inspect_container(
            container['Id'])['State']['Running'], 20, 'the container to stop')
        return True

    def store_id(self) -> str | None:
        path = os.path.join(self.world.env['XDG_CACHE_HOME'], 'crcache',
                            'state.db')
        if not os.path.exists(path):
            return None
        with sqlite3.connect(path) as conn:
            row = conn.execute(
                "SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        return row[0] if row else None

    def _remove_containers(self) -> None:
        store = self.store_id()
        dockerd.remove_containers(self.host, store)
        dockerd.remove_captures(self.host, store)
