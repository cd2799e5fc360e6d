"""Every command's ``-f json`` output against its published JSON Schema.

doc/source/schemas/<command>.json is the contract scripts rely on and
doc/source/output.rst documents it. Each form of each command's output
is produced for real, with rows in every state there is a key for, and
validated, as JSON and as YAML.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jsonschema
import yaml

from crcache.tests.functional import base

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
SCHEMAS = os.path.join(ROOT, 'doc', 'source', 'schemas')
OUTPUT_DOC = os.path.join(ROOT, 'doc', 'source', 'output.rst')


def schema(command: str) -> dict:
    with open(os.path.join(SCHEMAS, f'{command}.json')) as f:
        return json.load(f)


def keys(node: object) -> set[str]:
    """Every property name a schema defines."""
    found = set()
    if isinstance(node, dict):
        found.update(node.get('properties', {}))
        for value in node.values():
            found |= keys(value)
    elif isinstance(node, list):
        for value in node:
            found |= keys(value)
    return found


def listers() -> dict[str, type]:
    """The commands that print data (take -f), by name."""
    from importlib import metadata

    from cliff import display
    found = {}
    for entry in metadata.entry_points(group='crcache.cmd'):
        cls = entry.load()
        if issubclass(cls, display.DisplayCommandBase):
            found[entry.name] = cls
    return found


class TestSchemas(base.CLITestCase):

    def test_every_data_command_has_a_valid_documented_schema(self) -> None:
        with open(OUTPUT_DOC) as f:
            doc = f.read()
        commands = listers()
        self.assertEqual({'acquire', 'fill', 'gc', 'snapshot_drop',
                          'snapshot_list', 'status', 'stores'},
                         set(commands))
        self.assertEqual(sorted(f'{name}.json' for name in commands),
                         sorted(os.listdir(SCHEMAS)))
        for name in commands:
            jsonschema.Draft202012Validator.check_schema(schema(name))
            self.assertIn(f'schemas/{name}.json', doc)
            for key in keys(schema(name)):
                self.assertIn(f'``{key}``', doc, f'{name}: {key}')

    def output(self, command: str, *args: str, fmt: str = 'json',
               expect: int | None = 0) -> object:
        """``crcache COMMAND ARGS -f FMT``, validated against the schema."""
        out = self.crcache(*command.split(), *args, '-f', fmt,
                           expect=expect).stdout
        data = json.loads(out) if fmt == 'json' else yaml.safe_load(out)
        jsonschema.Draft202012Validator(
            schema(command.replace(' ', '_')),
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(data)
        return data

    def validated(self, command: str, *args: str,
                  expect: int | None = 0) -> object:
        """The same, for a command that changes nothing: in JSON and in
        YAML, which must hold the same data. Returns the JSON."""
        data = self.output(command, *args, expect=expect)
        self.assertEqual(data, self.output(command, *args, fmt='yaml',
                                           expect=expect))
        return data

    def test_status(self) -> None:
        project = os.path.join(self.project, '.crcache')
        self.write_source('pool', type='pool', sources='local', reserve=1)
        self.write_source('outer', type='pool', sources='pool')
        self.write_source('box', type='local', maximum=3)
        self.write_source('free', type='local', maximum=0)
        self.write_source('box', root=project, type='local')
        self.crcache('release', self.crcache('-s', 'pool',
                                             'acquire').stdout.strip())
        self.crcache('acquire', '-s', 'box', '--lease', '1h')
        self.crcache('acquire', '-s', 'box')
        self.assertEqual([], self.validated('status', '-v', 'free'))
        for args in ((), ('-t',), ('-a',), ('-t', '-a'), ('box',),
                     ('-t', 'outer')):
            self.assertTrue(self.validated('status', *args))
        rows = self.validated('status', '-t', '-a')
        self.assertIn('pool', {r['parent'] for r in rows})
        self.assertIn(True, {r['shadowed'] for r in rows})
        rows = self.validated('status', '-v')
        self.assertEqual({'in-use', 'cached'}, {r['state'] for r in rows})
        self.assertIn('pool-0', {r['held-by'] for r in rows})
        self.assertIn(None, {r['held-by'] for r in rows})
        self.assertIn(None, {r['lease-expires'] for r in rows})
        self.assertNotEqual({None}, {r['lease-expires'] for r in rows})
        for what in ('cached', 'in-use', 'max', 'available'):
            for args in ((), ('pool',), ('free',)):
                figure = self.validated('status', '--query', what, *args)
                self.assertEqual(what, figure['query'])
        self.assertEqual('unlimited', self.validated(
            'status', '--query', 'available')['value'])
        # A broken source: an error key on every row, exit status 1.
        self.write_source('broken', type='nosuchtype')
        for args in ((), ('-t',), ('-a',), ('-t', '-a')):
            rows = self.validated('status', *args, expect=1)
            self.assertIn('broken', [r['source'] for r in rows
                                     if r['error']])
        self.validated('status', '-v', expect=1)
        self.validated('status', '--query', 'max', expect=1)

    def test_acquire(self) -> None:
        self.write_source('pool', type='pool', sources='box')
        self.write_source('box', type='local', maximum=3)
        [row] = self.output('acquire')
        self.assertEqual('local-0', row['name'])
        rows = self.output('acquire', '-s', 'box', '-n', '2', fmt='yaml')
        self.assertEqual(['box-0', 'box-1'], [r['name'] for r in rows])
        self.crcache('release', 'box-0', 'box-1')
        rows = self.output('acquire', '-s', 'pool')
        self.assertEqual(['pool-0'], [r['name'] for r in rows])

    def test_fill(self) -> None:
        self.write_source('box', type='local', maximum=3, reserve=2)
        rows = self.output('fill')
        self.assertEqual([('box-0', 'cached'), ('box-1', 'cached')],
                         [(r['name'], r['state']) for r in rows])
        self.assertEqual([], self.validated('fill'))
        self.write_source('box', type='local', maximum=3, reserve=3)
        rows = self.output('fill', 'box', fmt='yaml')
        self.assertEqual(['box-2'], [r['name'] for r in rows])

    def test_gc(self) -> None:
        self.assertEqual([], self.validated('gc'))
        self.write_source('box', type='local', maximum=3)
        self.write_source('gone', type='local')
        self.crcache('acquire', '-s', 'box', '--lease', '1')
        self.crcache('acquire', '-s', 'box')
        self.crcache('acquire', '-s', 'gone')
        time.sleep(1.1)
        rows = self.output('gc')
        self.assertEqual([('box-0', 'discarded'), ('box-1', 'kept'),
                          ('gone-0', 'kept')],
                         sorted((r['name'], r['action']) for r in rows))
        shutil.rmtree(os.path.join(self.config_root, 'sources', 'gone'))
        rows = self.validated('gc')
        self.assertIn(('gone-0', 'kept'),
                      [(r['name'], r['action']) for r in rows])
        rows = self.output('gc', '--forget', 'gone', fmt='yaml')
        self.assertEqual([('gone-0', 'forgotten')],
                         [(r['name'], r['action']) for r in rows])

    def test_snapshot_list(self) -> None:
        self.assertEqual([], self.validated('snapshot list'))
        self.write_source('box', type='docker', docker_image='busybox')
        self.crcache('status')  # makes the store
        import sqlite3
        with sqlite3.connect(os.path.join(self.cache_dir,
                                          'state.db')) as conn:
            conn.execute(
                "INSERT INTO captures (source, fingerprint, state, capture, "
                "created, op) VALUES ('box', '0123456789abcdef', 'ready', "
                "'sha256:abc', ?, NULL), ('box', 'fedcba9876543210', "
                "'capturing', NULL, ?, '{}')", (time.time() - 7200,
                                                time.time()))
        rows = self.validated('snapshot list', '--no-check')
        self.assertEqual([('ready', '2h', None), ('capturing', '0s', None)],
                         [(r['state'], r['age'], r['current'])
                          for r in rows])

    def test_stores(self) -> None:
        from crcache.tests.functional import sshd
        project = os.path.join(self.project, '.crcache')
        self.write_store('other', type='sqlite')
        self.write_store('other', root=project, type='sqlite')
        self.write_store('broken', type='nosuch')
        self.write_store('team', type='postgresql',
                         url=f'postgresql://crcache@127.0.0.1:'
                         f'{sshd.free_port()}/crcache')
        rows = {(r['store'], r['shadowed']): r
                for r in self.validated('stores')}
        self.assertEqual({('broken', False), ('local', False),
                          ('other', False), ('other', True),
                          ('team', False)}, set(rows))
        self.assertTrue(rows['local', False]['reachable'])
        self.assertEqual('sqlite', rows['other', False]['type'])
        self.assertIn("unknown type 'nosuch'",
                      rows['broken', False]['error'])
        self.assertFalse(rows['team', False]['reachable'])
        self.assertTrue(rows['team', False]['shared'])
        self.assertIn('cannot reach the state store',
                      rows['team', False]['error'])
        self.assertIsNone(rows['other', True]['reachable'])
