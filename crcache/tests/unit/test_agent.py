"""Unit test for crcache.daemons.warmup.preload: what a warm agent loads."""

import importlib.util
import subprocess
import sys
import textwrap

import testtools


class TestPreload(testtools.TestCase):

    def test_the_postgresql_driver_is_loaded_once_a_store_uses_it(self):
        # Otherwise every command on a PostgreSQL store imports psycopg
        # (150 ms and more) in its worker, warm agent or not; and an
        # agent whose configurations have none never pays its memory.
        if importlib.util.find_spec('psycopg') is None:
            self.skipTest('psycopg is not installed')
        out = subprocess.run(
            [sys.executable, '-c', textwrap.dedent('''
                import os, sys, tempfile
                from crcache.daemons import warmup
                from crcache.config import Config
                warmup.preload()
                print('psycopg' in sys.modules)
                with tempfile.TemporaryDirectory() as root:
                    os.makedirs(os.path.join(root, 'stores', 'team'))
                    with open(os.path.join(root, 'stores', 'team',
                                           'store.conf'), 'w') as f:
                        f.write('[DEFAULT]\\ntype = postgresql\\n'
                                'url = postgresql:///nowhere\\n')
                    warmup.warm_for(Config(roots=[root]))
                print('psycopg' in sys.modules)
            ''')],
            capture_output=True, text=True, check=True).stdout
        self.assertEqual('False\nTrue\n', out)
