"""The package's layers, as doc/source/design.rst maps them, enforced.

Every import in crcache (at the top of a module or inside a function)
goes from a layer to the same layer or one below it, and no modules
import each other round in a circle. A new module must be placed in a
layer here, or this test fails: the map stays true.
"""

from __future__ import annotations

import ast
import os

import testtools

import crcache

#: Top to bottom. A module belongs to the first layer with a prefix of
#: its name (a prefix ending in '.' names a package's modules).
LAYERS = [
    # The package itself re-exports the Python API (lazily): on top.
    ('entry', ['crcache.shell', 'crcache.__main__',
               'crcache.daemons.agent', 'crcache.daemons.warmup',
               'crcache.daemons.worker', 'crcache.daemons.keeper',
               'crcache.daemons.pending', 'crcache.daemons.spare',
               'crcache']),
    ('cli', ['crcache.app', 'crcache.formatters', 'crcache.cmd',
             'crcache.cmd.']),
    ('api', ['crcache.api', 'crcache.api.', 'crcache.testing',
             'crcache.testing.']),
    ('core', ['crcache.cache', 'crcache.cache.', 'crcache.config',
              'crcache.config.', 'crcache.opts', 'crcache.hooks']),
    ('plugins', ['crcache.sources', 'crcache.sources.', 'crcache.store',
                 'crcache.store.']),
    ('transport', ['crcache.transport', 'crcache.transport.']),
    ('base', ['crcache.exceptions', 'crcache.paths', 'crcache.stamps',
              'crcache.invocation', 'crcache.version', 'crcache.progress',
              'crcache.progress.', 'crcache.conftypes', 'crcache.lazyimports',
              'crcache.finish',
              'crcache.daemons',
              'crcache.daemons.client', 'crcache.daemons.ipc',
              'crcache.daemons.lending',
              'crcache.daemons.messages']),
]
#: Within a layer, groups that must not import each other.
SEPARATE = [('crcache.sources.', 'crcache.store.')]
#: What the command line may take from the core: the facade alone (and
#: the Python API above it, the error types below).
CLI_MAY_USE = {'crcache.cache'}


def _package_root() -> str:
    return os.path.dirname(os.path.abspath(crcache.__file__))


def modules() -> dict[str, str]:
    """{module name: path} of crcache, tests aside."""
    root = _package_root()
    top = os.path.dirname(root)
    found = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ('tests', '__pycache__')]
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(directory, name)
            module = os.path.relpath(path, top)[:-3].replace(os.sep, '.')
            if module.endswith('.__init__'):
                module = module[:-len('.__init__')]
            found[module] = path
    return found


def imports(module: str, path: str, known: set[str]) -> set[str]:
    """The crcache modules ``module`` imports, wherever in it."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith('__init__.py') else \
        module.rpartition('.')[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parts = parts[:len(parts) - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            # ``from package import module`` imports the module; ``from
            # module import name`` the module the name is in.
            names = [f'{base}.{alias.name}'
                     if f'{base}.{alias.name}' in known else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            # The longest known module the name is or is inside of.
            while name and name not in known:
                name = name.rpartition('.')[0]
            # A module's own packages are imported with it, always.
            if name and not (module + '.').startswith(name + '.'):
                found.add(name)
    return found


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix.endswith('.')
                                    and module.startswith(prefix)):
                return index
    raise AssertionError(f'{module} is in no layer: add it to LAYERS')


class TestLayers(testtools.TestCase):

    def setUp(self) -> None:
        super().setUp()
        self.modules = modules()
        known = set(self.modules)
        self.graph = {module: imports(module, path, known)
                      for module, path in self.modules.items()}

    def test_every_module_has_a_layer(self) -> None:
        for module in self.modules:
            layer_of(module)

    def test_imports_go_down_or_across(self) -> None:
        wrong = []
        for module, targets in sorted(self.graph.items()):
            for target in sorted(targets):
                if layer_of(target) < layer_of(module):
                    wrong.append(
                        f'{module} ({LAYERS[layer_of(module)][0]}) imports '
                        f'{target} ({LAYERS[layer_of(target)][0]})')
        self.assertEqual([], wrong)

    def test_separate_groups(self) -> None:
        wrong = []
        for module, targets in self.graph.items():
            for one, other in SEPARATE + [(b, a) for a, b in SEPARATE]:
                if module.startswith(one):
                    wrong.extend(f'{module} imports {t}' for t in targets
                                 if t.startswith(other))
        self.assertEqual([], wrong)

    def test_the_command_line_uses_the_facade(self) -> None:
        cli = LAYERS.index(next(layer for layer in LAYERS
                                if layer[0] == 'cli'))
        core = LAYERS.index(next(layer for layer in LAYERS
                                 if layer[0] == 'core'))
        wrong = []
        for module, targets in self.graph.items():
            if layer_of(module) != cli:
                continue
            wrong.extend(f'{module} imports {t}' for t in targets
                         if layer_of(t) == core and t not in CLI_MAY_USE)
        self.assertEqual([], wrong)

    def test_no_cycles(self) -> None:
        cycles = []
        state: dict[str, int] = {}
        trail: list[str] = []

        def visit(module: str) -> None:
            state[module] = 1
            trail.append(module)
            for target in sorted(self.graph.get(module, ())):
                if state.get(target) == 1:
                    cycles.append(trail[trail.index(target):] + [target])
                elif target not in state:
                    visit(target)
            trail.pop()
            state[module] = 2

        for module in sorted(self.graph):
            if module not in state:
                visit(module)
        self.assertEqual([], [' -> '.join(c) for c in cycles])
