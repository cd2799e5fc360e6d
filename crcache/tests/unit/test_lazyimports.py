"""crcache.lazyimports: a deferred module loads at its first use only."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import testtools


def _python(code: str) -> str:
    return subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)], check=True,
        capture_output=True, text=True).stdout


class TestDefer(testtools.TestCase):

    def test_import_statement_does_not_load(self) -> None:
        out = _python('''
            import sys
            from crcache import lazyimports
            lazyimports.defer('json')
            import json
            print('json.decoder' in sys.modules)
            print(json.dumps([1]))
            print('json.decoder' in sys.modules)
        ''')
        self.assertEqual('False\n[1]\nTrue\n', out)

    def test_submodule_import_and_from_import_work(self) -> None:
        out = _python('''
            from crcache import lazyimports
            lazyimports.defer('email')
            import email.utils
            from email import message_from_string
            print(message_from_string('A: b\\n\\n')['A'],
                  email.utils.quote('x'))
        ''')
        self.assertEqual('b x\n', out)

    def test_oslo_config_no_longer_loads_unused_libraries(self) -> None:
        out = _python('''
            import sys
            import crcache.opts
            import oslo_config.types as types
            print(type(sys.modules['rfc3986']).__name__)
            # An option type that needs them still works.
            print(types.URI()('https://example.com/x'),
                  types.IPAddress()('192.0.2.1'))
        ''')
        self.assertEqual('_Deferred\nhttps://example.com/x 192.0.2.1\n',
                         out)

    def test_missing_and_imported_modules_are_left_alone(self) -> None:
        out = _python('''
            import sys, json
            from crcache import lazyimports
            lazyimports.defer('json', 'no_such_module_here')
            print(type(sys.modules['json']).__name__,
                  'no_such_module_here' in sys.modules)
        ''')
        self.assertEqual('module False\n', out)

    def test_paramiko_no_longer_loads_invoke(self) -> None:
        """The ssh source defers invoke, which paramiko imports for
        ``Match exec`` alone; a config that uses it still works."""
        out = _python('''
            import sys
            import crcache.sources.ssh.connection
            import paramiko
            print(type(sys.modules['invoke']).__name__,
                  'invoke.context' in sys.modules)
            config = paramiko.SSHConfig.from_text(
                'Match exec "exit 0"\\n    User matched\\n')
            print(config.lookup('example.com')['user'])
            print('invoke.context' in sys.modules)
        ''')
        self.assertEqual('_Deferred False\nmatched\nTrue\n', out)
