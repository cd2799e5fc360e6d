"""Unit test for crcache.daemons.warmup.preload: what a warm agent loads."""

import importlib.util
import subprocess
import sys

import testtools


class TestPreload(testtools.TestCase):

    def test_the_postgresql_driver_is_preloaded(self):
        # Otherwise every command on a PostgreSQL store imports psycopg
        # (150 ms and more) in its worker, warm agent or not.
        if importlib.util.find_spec('psycopg') is None:
            self.skipTest('psycopg is not installed')
        out = subprocess.run(
            [sys.executable, '-c',
             'import sys\nfrom crcache.daemons import warmup\n'
             'warmup.preload()\n'
             "print('psycopg' in sys.modules)"],
            capture_output=True, text=True, check=True).stdout
        self.assertEqual('True\n', out)
