"""The conformance suite for a backend source type, whole.

:class:`SourceConformance` gathers the checks of ``crcache run``
(:mod:`~crcache.testing.conformance.running`), of copying
(:mod:`~crcache.testing.conformance.files`) and of the driver itself
(:mod:`~crcache.testing.conformance.driver`), all standing on
:class:`~crcache.testing.conformance.kit.BackendKit`, and adds its
own: acquiring and releasing, concurrency, unreachable backends.
"""

from __future__ import annotations

import json

from crcache.testing.conformance.driver import DriverChecks
from crcache.testing.conformance.files import FileChecks
from crcache.testing.conformance.running import RunChecks
from crcache.testing.conformance.snapshots import SnapshotChecks


class SourceConformance(RunChecks, FileChecks, DriverChecks,
                        SnapshotChecks):
    """The conformance suite for a backend source type.

    Mix into a ``testtools.TestCase`` and supply :meth:`source_keys`::

        class TestMyType(crcache.testing.SourceConformance,
                         testtools.TestCase):
            lists_leaks = True
            opts_namespace = 'my_package.mytype'

            def source_keys(self):
                server = self.useFixture(MyServer())
                return {'type': 'mytype', 'mytype_url': server.url}

    The source is defined as :attr:`source_name`; every instance a test
    acquires is released after it (a type that makes real resources
    should also remove, in a cleanup of its own, whatever a failed test
    leaves on the backend). The hooks and attributes a test case sets
    are :class:`~crcache.testing.conformance.kit.BackendKit`'s.
    """

    # -- acquiring and releasing -------------------------------------------

    def test_acquire_run_release(self) -> None:
        """acquire prints the name alone; run works; release ends it."""
        result = self.crcache('acquire', '-s', self.source_name)
        # (stderr may report progress, if provisioning was slow)
        self.assertRegex(result.stdout, rf'^{self.source_name}-\d+\n$')
        name = result.stdout.strip()
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((1, 0), (row['in-use'], row['cached']), row)
        result = self.run_on(name, 'echo hello')
        self.assertEqual(('hello\n', ''), (result.stdout, result.stderr))
        self.release(name)
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
        result = self.run_on(name, 'true', expect=255)
        self.assertOneLineError(result, f"unknown instance '{name}'")

    def test_a_cached_instance_is_handed_out_again(self) -> None:
        """With a reserve, release keeps the very resource for reuse."""
        name = self.acquire_one(reserve=1)
        scratch = self.scratch(name)
        self.run_on(name, f'echo kept > {scratch}/mark')
        self.release(name)
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((0, 1), (row['in-use'], row['cached']), row)
        self.assertEqual([name], self.acquire(self.source_name))
        self.assertEqual('kept\n',
                         self.run_on(name, f'cat {scratch}/mark').stdout)
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((1, 0), (row['in-use'], row['cached']), row)

    def test_a_dead_cached_instance_is_replaced(self) -> None:
        """is_alive: a cached instance that stopped answering is
        discarded and replaced, not handed out."""
        name = self.acquire_one(reserve=1)
        self.release(name)
        if not self.break_instance(name):
            self.skipTest('break_instance() is not provided')
        [fresh] = self.acquire(self.source_name)
        self.assertNotEqual(name, fresh)
        self.assertEqual('ok\n', self.run_on(fresh, 'echo ok').stdout)
        self.assertNotIn(name, self.instances())
        self.assertEqual([], self.leaks())

    # -- concurrency -------------------------------------------------------

    def test_concurrency_is_probed(self) -> None:
        """Unless ``concurrency`` is set, the instance is asked."""
        keys = dict(self.keys)
        keys.pop('concurrency', None)
        self.world.write_source(self.source_name, keys)
        out = self.crcache('acquire', '-s', self.source_name, '-f',
                           'json').stdout
        [row] = json.loads(out)
        self.assertIsInstance(row['concurrency'], int)
        self.assertGreaterEqual(row['concurrency'], 1)
        self.assertEqual(self.expected_concurrency(row['name']),
                         row['concurrency'])

    def test_parallel_acquisitions(self) -> None:
        """Several instances provisioned at once (one thread each)."""
        count = self.parallel_instances
        if count < 2:
            self.skipTest('parallel_instances is below 2')
        self.configure(maximum=count)
        out = self.crcache('acquire', '-s', self.source_name, '-n',
                           str(count), '-f', 'json').stdout
        rows = json.loads(out)
        names = [row['name'] for row in rows]
        self.assertEqual(count, len(set(names)), out)
        for row in rows:
            self.assertGreaterEqual(row['concurrency'], 1, row)
            self.assertEqual(f"{row['name']}\n", self.run_on(
                row['name'], '--', 'echo', row['name']).stdout)
        self.release(*names)
        row = self.status(self.source_name)[self.source_name]
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
        self.assertEqual([], self.gc())

    def test_concurrent_commands_on_one_instance(self) -> None:
        """Commands on one instance run side by side, each its own."""
        name = self.acquire_one()
        scratch = self.scratch(name)
        count = 4
        procs = [self.world.popen(
            'run', name,
            f'touch {scratch}/{k}; i=0; '
            f'while [ $(ls {scratch} | wc -l) -lt {count} ]; do '
            '[ $i -ge 600 ] && { echo alone; exit 1; }; '
            f'sleep 0.05; i=$((i+1)); done; echo {k}')
            for k in range(count)]
        for k, proc in enumerate(procs):
            out, err = proc.communicate(timeout=60)
            self.assertEqual((0, f'{k}\n'.encode(), b''),
                             (proc.returncode, out, err))

    # -- unreachable backends ----------------------------------------------

    def _unreachable(self) -> str:
        keys = self.unreachable_keys()
        if keys is None:
            self.skipTest('unreachable_keys() is not provided')
        name = f'{self.source_name}-unreachable'
        self.world.write_source(name, keys)
        return name

    def test_status_reaches_no_backend(self) -> None:
        """Every invocation loads every source: loading reaches nothing."""
        name = self._unreachable()
        row = self.status(name)[name]
        self.assertEqual((0, 0), (row['in-use'], row['cached']), row)
        self.status()

    def test_an_unreachable_backend_is_one_line(self) -> None:
        """The error names the source, and nothing is left half-made."""
        name = self._unreachable()
        result = self.crcache('acquire', '-s', name, expect=None)
        self.assertOneLineError(result, f"'{name}'")
        self.assertEqual({}, self.instances(name))

    def test_unknown_keys_are_refused(self) -> None:
        """The type's ``opts`` are enforced: one line naming the key."""
        path = self.configure(**{f'{self.type_name}_no_such_key': 1})
        result = self.crcache('acquire', '-s', self.source_name,
                              expect=None)
        self.assertOneLineError(result, path,
                                f'{self.type_name}_no_such_key')
