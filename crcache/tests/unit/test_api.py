"""The public names of the package, and what importing it costs."""

from __future__ import annotations

import pickle
import subprocess
import sys

import testtools

import crcache
from crcache import api
from crcache import exceptions


class TestNamespace(testtools.TestCase):

    def test_every_listed_name_resolves(self) -> None:
        for name in crcache.__all__:
            self.assertIsNotNone(getattr(crcache, name), name)
        self.assertIs(api.Client, crcache.Client)
        self.assertIs(exceptions.CommandFailed, crcache.CommandFailed)
        self.assertTrue(set(crcache.__all__) <= set(dir(crcache)))

    def test_the_api_is_listed(self) -> None:
        for name in api.__all__:
            self.assertIn(name, crcache.__all__)
        for name, value in vars(exceptions).items():
            if isinstance(value, type) and issubclass(
                    value, exceptions.CrcacheError):
                self.assertIn(name, crcache.__all__)
        self.assertIn('__version__', crcache.__all__)

    def test_version(self) -> None:
        self.assertIsInstance(crcache.__version__, str)

    def test_unknown_name(self) -> None:
        self.assertRaises(AttributeError, getattr, crcache, 'Nothing')

    def test_importing_the_package_imports_nothing_else(self) -> None:
        # The command line imports it first: it must stay free.
        out = subprocess.run(
            [sys.executable, '-c',
             'import sys; before = set(sys.modules); import crcache; '
             'print(" ".join(sorted(set(sys.modules) - before)))'],
            capture_output=True, text=True, check=True).stdout
        self.assertEqual(['crcache'], out.split())


class TestCommandFailed(testtools.TestCase):

    def test_is_both(self) -> None:
        err = exceptions.CommandFailed(3, ['make', 'check'], b'o', b'e',
                                       instance='pool-0')
        self.assertIsInstance(err, exceptions.CrcacheError)
        self.assertIsInstance(err, subprocess.CalledProcessError)
        self.assertEqual((3, ['make', 'check'], b'o', b'o', b'e'),
                         (err.returncode, err.cmd, err.output, err.stdout,
                          err.stderr))
        self.assertEqual(
            "pool-0: command 'make check' exited with status 3", str(err))

    def test_long_command_lines_are_cut(self) -> None:
        err = exceptions.CommandFailed(1, 'x' * 100)
        self.assertEqual(f"command '{'x' * 57}...' exited with status 1",
                         str(err))

    def test_pickles(self) -> None:
        err = exceptions.CommandFailed(3, 'false', None, b'e', 'x-1')
        again = pickle.loads(pickle.dumps(err))
        self.assertEqual((3, 'false', None, b'e', 'x-1'),
                         (again.returncode, again.cmd, again.stdout,
                          again.stderr, again.instance))


class TestArguments(testtools.TestCase):
    """Refused before the configuration is read."""

    def setUp(self) -> None:
        super().setUp()
        self.client = api.Client(config_path='/nonexistent')

    def test_acquire(self) -> None:
        self.assertRaises(TypeError, self.client.acquire, count=1.5)
        self.assertRaises(TypeError, self.client.acquire, wait='10')
        self.assertRaises(ValueError, self.client.acquire, wait=-1)
        self.assertRaises(ValueError, self.client.acquire,
                          lease=float('nan'))

    def test_instance_names(self) -> None:
        self.assertRaises(exceptions.InvalidName, self.client.instance,
                          'a b')
        self.assertEqual('pool-0', self.client.instance('pool-0').name)

    def test_run(self) -> None:
        inst = self.client.instance('pool-0')
        self.assertRaises(TypeError, inst.run, b'true')
        self.assertRaises(TypeError, inst.run, ['echo', 1])
        self.assertRaises(ValueError, inst.run, [], cwd='/tmp')
        self.assertRaises(ValueError, inst.run, 'true',
                          capture_output=True, stderr=subprocess.DEVNULL)
