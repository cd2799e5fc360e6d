"""A private world for the real ``crcache`` command, and a test mixin.

:class:`CrcacheEnvironment` gives a test its own home directory, XDG
directories, configuration root and project directory, so the command it
runs never reads or writes the real user's files, and
:class:`CrcacheMixin` wraps it for a ``testtools.TestCase``: run the
command, insist on its status, show the command and its output when an
assertion fails. The command is the console script installed next to the
interpreter running the tests, as a user's would be.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import fixtures

#: The console script installed next to the interpreter running the tests.
CRCACHE = os.path.join(os.path.dirname(sys.executable), 'crcache')
_RUNTIME_DIR: str | None = None


def shared_runtime_dir() -> str:
    """One private ``XDG_RUNTIME_DIR`` for every test of this process.

    The agent's socket lives there, so one warm agent serves every test
    (it takes each command's environment from the command). Removing the
    directory at exit tells the agent to go.
    """
    global _RUNTIME_DIR
    if _RUNTIME_DIR is None:
        _RUNTIME_DIR = tempfile.mkdtemp(prefix='crcache-test-run.')
        os.chmod(_RUNTIME_DIR, 0o700)
        atexit.register(shutil.rmtree, _RUNTIME_DIR, ignore_errors=True)
    return _RUNTIME_DIR


@dataclasses.dataclass
class Result:
    """What a user sees from one crcache invocation."""

    args: tuple
    returncode: int
    stdout: Any
    stderr: Any

    def __str__(self) -> str:
        def shown(data: Any) -> str:
            if isinstance(data, bytes):
                text = data[:4000].decode(errors='replace')
                if len(data) > 4000:
                    text += f'... ({len(data)} bytes)'
                return text
            return data
        return (f'crcache {" ".join(map(str, self.args))} -> '
                f'{self.returncode}\n--- stdout ---\n{shown(self.stdout)}'
                f'--- stderr ---\n{shown(self.stderr)}')


class CrcacheEnvironment(fixtures.Fixture):
    """A home, XDG directories, a configuration root and a project.

    :param extra_env: added to the environment of every invocation (for
        example ``{'CRCACHE_AGENT': '0'}`` to run every command directly).
    :param private_runtime: give this environment an ``XDG_RUNTIME_DIR``
        of its own (removed afterwards) instead of the one shared by the
        test process, so that helper processes crcache leaves behind (the
        agent, ssh connection holders) can be told apart.
    """

    def __init__(self, extra_env: dict[str, str] | None = None,
                 private_runtime: bool = False) -> None:
        super().__init__()
        self.extra_env = dict(extra_env or {})
        self.private_runtime = private_runtime

    def _setUp(self) -> None:
        self.home = self.useFixture(fixtures.TempDir()).path
        self.project = os.path.join(self.home, 'project')
        os.mkdir(self.project)
        self.config_root = os.path.join(self.home, '.config', 'crcache')
        os.makedirs(self.config_root)
        if self.private_runtime:
            self.runtime_dir = os.path.join(self.home, 'run')
            os.mkdir(self.runtime_dir, 0o700)
        else:
            self.runtime_dir = shared_runtime_dir()
        self.env = {
            'PATH': os.path.dirname(sys.executable) + os.pathsep
            + os.environ.get('PATH', '/usr/bin:/bin'),
            'HOME': self.home,
            'XDG_CONFIG_HOME': os.path.join(self.home, '.config'),
            'XDG_CACHE_HOME': os.path.join(self.home, '.cache'),
            'XDG_RUNTIME_DIR': self.runtime_dir,
            'CRCACHE_AGENT_IDLE': '15',
            'LANG': 'C.UTF-8',
            'USER': os.environ.get('USER', 'root'),
        }
        self.env.update(self.extra_env)

    def source_dir(self, name: str) -> str:
        """The directory of the source ``name`` in the configuration."""
        return os.path.join(self.config_root, 'sources', name)

    def write_source(self, name: str, keys: dict[str, Any]) -> str:
        """Write ``sources/NAME/source.conf`` from ``keys``; its path."""
        directory = self.source_dir(name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, 'source.conf')
        with open(path, 'w') as f:
            f.write('[DEFAULT]\n')
            for key, value in keys.items():
                if isinstance(value, bool):
                    value = str(value).lower()
                f.write(f'{key} = {value}\n')
        return path

    def run(self, *args: str, input: str | bytes | None = None,
            cwd: str | None = None, env: dict[str, str] | None = None,
            binary: bool = False, timeout: float = 120) -> Result:
        """Run ``crcache ARGS`` to the end; what the user saw."""
        proc = subprocess.run(
            [CRCACHE, *args], input=input, capture_output=True,
            cwd=cwd or self.project, env=dict(self.env, **(env or {})),
            timeout=timeout, text=not binary,
            stdin=None if input is not None else subprocess.DEVNULL)
        return Result(args, proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        """Start ``crcache ARGS``; stdin empty, output piped by default.

        It starts with the signal dispositions a shell gives a command,
        whatever the test runner's are (test runners often ignore SIGINT,
        and an ignored signal stays ignored across ``exec``).
        """
        kwargs.setdefault('stdin', subprocess.DEVNULL)
        kwargs.setdefault('stdout', subprocess.PIPE)
        kwargs.setdefault('stderr', subprocess.PIPE)
        kwargs.setdefault('preexec_fn', _default_signals)
        proc = subprocess.Popen([CRCACHE, *args], env=self.env,
                                cwd=self.project, **kwargs)
        self.addCleanup(_reap, proc)
        return proc

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """This environment in ``os.environ``, for direct driver calls.

        A driver reads ``HOME`` (ssh's ``~/.ssh/config``), the XDG
        directories and the like from the process it runs in.
        """
        saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
                   signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class CrcacheMixin:
    """Drive the real ``crcache`` command from a ``testtools.TestCase``.

    Mix it in before the test case class (``class T(CrcacheMixin,
    testtools.TestCase)``). Every test gets a fresh
    :class:`CrcacheEnvironment` as ``self.world``; :attr:`extra_env` and
    :attr:`private_runtime` are passed to it. Each helper that runs the
    command insists on the status it expects and, when it differs, fails
    showing the command line, its status and its output.
    """

    #: Added to the environment of every invocation.
    extra_env: dict[str, str] = {}
    #: Whether the test gets an ``XDG_RUNTIME_DIR`` of its own.
    private_runtime: bool = False

    def setUp(self) -> None:
        super().setUp()
        self.world = self.useFixture(CrcacheEnvironment(
            self.extra_env, self.private_runtime))

    # -- the command -------------------------------------------------------

    def crcache(self, *args: str, expect: int | None = 0,
                **kwargs: Any) -> Result:
        """Run ``crcache ARGS``; by default insist that it succeeds.

        ``expect`` is the exit status required (None: any). Keyword
        arguments go to :meth:`CrcacheEnvironment.run` (``input``,
        ``binary``, ``env``, ``cwd``, ``timeout``).
        """
        result = self.world.run(*args, **kwargs)
        if expect is not None:
            self.assertEqual(expect, result.returncode, str(result))
        return result

    def run_on(self, name: str, *argv: str, **kwargs: Any) -> Result:
        """``crcache run NAME ARGV...``."""
        return self.crcache('run', name, *argv, **kwargs)

    def acquire(self, source: str, count: int = 1,
                *options: str) -> list[str]:
        """Acquire ``count`` instances of ``source``; their names."""
        result = self.crcache('acquire', '-s', source, '-n', str(count),
                              *options)
        names = result.stdout.split()
        self.assertEqual(count, len(names), str(result))
        return names

    def release(self, *names: str) -> None:
        """``crcache release NAMES``, which must succeed."""
        self.crcache('release', *names)

    def status(self, *sources: str) -> dict[str, dict]:
        """``status -f json``, one row per source, keyed by its name."""
        rows = json.loads(self.crcache('status', '-f', 'json',
                                       *sources).stdout)
        return {row['source']: row for row in rows}

    def instances(self, *sources: str) -> dict[str, dict]:
        """``status -v -f json``: each instance's row, keyed by name."""
        rows = json.loads(self.crcache('status', '-v', '-f', 'json',
                                       *sources).stdout)
        return {row['name']: row for row in rows}

    def gc(self, *options: str) -> list[dict]:
        """``gc -f json``: what the pass did and found."""
        return json.loads(self.crcache('gc', '-f', 'json', *options).stdout)

    def leaks(self) -> list[dict]:
        """The rows of a ``gc`` pass about resources the store does
        not know (``leaked``), or that it could not handle."""
        return [row for row in self.gc()
                if row['action'] in ('leaked', 'failed')]

    def wrapped(self, name: str) -> dict:
        """The row of the instance that layered instance ``name`` wraps."""
        found = [row for row in self.instances().values()
                 if row['held-by'] == name]
        self.assertEqual(1, len(found),
                         f'{name} should wrap exactly one instance: '
                         f'{found}')
        return found[0]

    # -- checks ------------------------------------------------------------

    def assertOneLineError(self, result: Result, *fragments: str) -> None:
        """An error a user can read: one line, no traceback, all facts."""
        self.assertNotEqual(0, result.returncode, str(result))
        self.assertNotIn('Traceback', result.stderr, str(result))
        lines = result.stderr.strip().splitlines()
        self.assertEqual(1, len(lines), str(result))
        for fragment in fragments:
            self.assertIn(fragment, lines[0], str(result))

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20,
                 what: str = '') -> Any:
        """Poll ``predicate`` until it is true; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f'timed out after {timeout}s waiting for '
                          f'{what or predicate}')
            time.sleep(0.05)
