"""What the backend conformance suite's checks stand on.

:class:`BackendKit` is the part of
:class:`~crcache.testing.conformance.backend.SourceConformance` that
its checks share: what the test case declares and supplies (the
``source.conf`` keys, a way to break an instance...), the set-up that
defines the source, and helpers to acquire, configure and compare trees
on both sides (:func:`local_listing` and
:meth:`BackendKit.remote_listing`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from crcache.testing.conformance.keys import TypeChecks
from crcache.testing.environment import CrcacheMixin


def local_listing(path: str) -> str:
    """``mode path sha256`` of everything under ``path`` on this machine.

    Compare with :meth:`BackendKit.remote_listing`.
    """
    def mode(entry: str) -> int:
        return os.stat(entry).st_mode & 0o7777

    lines = [f'{mode(path):o} . -']
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            full = os.path.join(root, entry)
            rel = './' + os.path.relpath(full, path)
            if os.path.isfile(full):
                with open(full, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            else:
                digest = '-'
            lines.append(f'{mode(full):o} {rel} {digest}')
    return ''.join(line + '\n' for line in sorted(
        lines, key=lambda line: line.split()[1].encode()))


def write_file(path: str, content: str | bytes, mode: int) -> None:
    """Write ``content`` to ``path`` and give it ``mode``."""
    with open(path, 'wb') as f:
        f.write(content.encode() if isinstance(content, str) else content)
    os.chmod(path, mode)


def file_mode(path: str) -> int:
    """The permission bits of ``path``."""
    return os.stat(path).st_mode & 0o7777


class BackendKit(TypeChecks, CrcacheMixin):
    """The hooks, set-up and helpers of the backend suite's checks.

    See :class:`~crcache.testing.conformance.backend.SourceConformance`,
    which is what a test case mixes in.
    """

    #: The source's name in the test configuration.
    source_name = 'kit'
    #: Whether the type labels its resources so that ``list_owned`` finds
    #: them (and ``crcache gc`` finds leaks).
    lists_leaks = False
    #: How many instances the parallel checks acquire at once (the suite
    #: sets ``maximum`` to it); 0 skips them.
    parallel_instances = 4
    #: Seconds a signalled ``crcache run`` may take to end.
    signal_deadline = 5.0

    # -- what the test case supplies ---------------------------------------

    def source_keys(self) -> dict[str, Any]:
        """The ``source.conf`` keys of a working source, ``type`` first.

        Called once per test, after ``self.world`` (the private home and
        configuration) exists; start servers here with ``useFixture``.
        """
        raise NotImplementedError('source_keys() must return the keys')

    def unreachable_keys(self) -> dict[str, Any] | None:
        """Keys of a source of the type whose backend cannot be reached.

        None (the default) skips the checks that need one.
        """
        return None

    def break_instance(self, name: str) -> bool:
        """Make the cached instance ``name`` stop answering, behind
        crcache's back (stop its machine, remove its container...).

        Return False (the default) when the test case cannot.
        """
        return False

    def expected_concurrency(self, name: str) -> int:
        """The concurrency crcache should find for acquired ``name``.

        By default the CPU count the instance reports itself.
        """
        out = self.run_on(
            name, 'nproc 2>/dev/null || getconf _NPROCESSORS_ONLN').stdout
        return int(out.split()[0])

    # -- set-up ------------------------------------------------------------

    def setUp(self) -> None:
        super().setUp()
        self.keys = dict(self.source_keys())
        self.assertIn('type', self.keys, 'source_keys() must name a type')
        self.type_name = self.keys['type']
        self.world.write_source(self.source_name, self.keys)
        self.addCleanup(self.release_everything)

    def checked_source(self) -> str:
        return self.source_name

    def configure(self, **overrides: Any) -> str:
        """Rewrite the source's ``source.conf`` with these keys changed."""
        return self.world.write_source(self.source_name,
                                       dict(self.keys, **overrides))

    def release_everything(self) -> None:
        """Release whatever a test still holds."""
        result = self.world.run('status', '-v', '-f', 'json')
        if result.returncode != 0:
            return
        rows = json.loads(result.stdout)
        names = {row['name'] for row in rows}
        held = [row['name'] for row in rows if row['state'] == 'in-use'
                and row['held-by'] not in names]
        if held:
            self.world.run('release', *held)

    def acquire_one(self, **overrides: Any) -> str:
        """Acquire one instance (after changing keys, if given)."""
        if overrides:
            self.configure(**overrides)
        return self.acquire(self.source_name)[0]

    def scratch(self, name: str) -> str:
        """A fresh directory on the instance, removed after the test."""
        path = self.run_on(name, 'mktemp -d').stdout.strip()
        self.assertTrue(path.startswith('/'), path)
        self.addCleanup(self.world.run, 'run', name, 'rm', '-rf', path)
        return path

    def remote_listing(self, name: str, path: str) -> str:
        """``mode path sha256`` of everything under ``path`` on an
        instance, as :func:`local_listing` gives it for a local tree."""
        return self.run_on(
            name,
            f'cd {path} && find . | LC_ALL=C sort | while read -r p; do '
            'if [ -f "$p" ]; then s=$(sha256sum < "$p" | cut -c1-64); '
            'else s=-; fi; echo "$(stat -c %a "$p") $p $s"; done').stdout

    def local_tree(self) -> str:
        """A small tree with a mode on everything, in the project."""
        tree = os.path.join(self.world.project, 'tree')
        os.makedirs(os.path.join(tree, 'sub', 'deeper'))
        os.mkdir(os.path.join(tree, 'empty'), 0o700)
        write_file(os.path.join(tree, 'data.txt'), 'data\n', 0o640)
        write_file(os.path.join(tree, 'sub', 'run.sh'),
                   '#!/bin/sh\necho ran\n', 0o751)
        write_file(os.path.join(tree, 'sub', 'deeper', 'blob'),
                   bytes(range(256)) * 1000, 0o600)
        os.chmod(os.path.join(tree, 'sub'), 0o751)
        os.chmod(os.path.join(tree, 'empty'), 0o700)
        return tree
