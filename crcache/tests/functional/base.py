"""Run the installed ``crcache`` command the way a user does.

Every test gets its own home directory, XDG directories, configuration
root and project directory, so nothing reads or writes the real user's
files. The agent's sockets live in one directory shared by the whole test
run (the agent takes each command's environment from the command, so one
warm agent serves every test) and agents exit soon after the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import fixtures
import testtools

# One console script, one shared runtime directory (so one warm agent for
# every test of the process, whether it uses this base or the public kit)
# and one Result, as crcache.testing defines them.
from crcache.testing.environment import (
    CRCACHE, Result, shared_runtime_dir)

__all__ = ['CRCACHE', 'CLITestCase', 'Result', 'shared_runtime_dir']


class CLITestCase(testtools.TestCase):
    """A test that drives the real crcache command in subprocesses."""

    #: Extra environment for every invocation of a test class.
    extra_env: dict[str, str] = {}

    def setUp(self) -> None:
        super().setUp()
        self.home = self.useFixture(fixtures.TempDir()).path
        self.project = os.path.join(self.home, 'project')
        os.mkdir(self.project)
        self.config_root = os.path.join(self.home, '.config', 'crcache')
        self.cache_dir = os.path.join(self.home, '.cache', 'crcache')
        self.env = {
            'PATH': os.path.dirname(sys.executable) + os.pathsep
            + os.environ.get('PATH', '/usr/bin:/bin'),
            'HOME': self.home,
            'XDG_CONFIG_HOME': os.path.join(self.home, '.config'),
            'XDG_CACHE_HOME': os.path.join(self.home, '.cache'),
            'XDG_RUNTIME_DIR': shared_runtime_dir(),
            'CRCACHE_AGENT_IDLE': '15',
            'LANG': 'C.UTF-8',
            'USER': os.environ.get('USER', 'root'),
        }
        self.env.update(self.extra_env)

    def write_source(self, name: str, text: str = '',
                     root: str | None = None, **keys: object) -> str:
        """Write ``<root>/sources/<name>/source.conf``; return its path."""
        return self._write_conf('sources', 'source.conf', name, text, root,
                                keys)

    def write_store(self, name: str, text: str = '',
                    root: str | None = None, **keys: object) -> str:
        """Write ``<root>/stores/<name>/store.conf``; return its path."""
        return self._write_conf('stores', 'store.conf', name, text, root,
                                keys)

    def _write_conf(self, kind: str, file_name: str, name: str, text: str,
                    root: str | None, keys: dict[str, object]) -> str:
        directory = os.path.join(root or self.config_root, kind, name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, file_name)
        body = textwrap.dedent(text)
        if keys:
            body = '[DEFAULT]\n' + ''.join(
                f'{key}={value}\n' for key, value in keys.items())
        with open(path, 'w') as f:
            f.write(body)
        return path

    def crcache(self, *args: str, input: str | bytes | None = None,
                expect: int | None = 0, cwd: str | None = None,
                env: dict[str, str] | None = None,
                binary: bool = False, timeout: float = 120) -> Result:
        """Run ``crcache ARGS``; by default insist that it succeeds."""
        full_env = dict(self.env, **(env or {}))
        proc = subprocess.run(
            [CRCACHE, *args], input=input, capture_output=True,
            cwd=cwd or self.project, env=full_env, timeout=timeout,
            text=not binary,
            stdin=None if input is not None else subprocess.DEVNULL)
        result = Result(args, proc.returncode, proc.stdout, proc.stderr)
        if expect is not None:
            self.assertEqual(expect, proc.returncode, str(result))
        return result

    def start(self, *args: str) -> subprocess.Popen:
        """Start ``crcache ARGS`` in the background, output piped."""
        proc = subprocess.Popen(
            [CRCACHE, *args], env=self.env, cwd=self.project,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc

    def in_terminal(self, *args: str, input: bytes = b'',
                    env: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Run ``crcache ARGS`` on a pseudo-terminal; (status, output)."""
        import pty
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(self.project)
            os.execve(CRCACHE, [CRCACHE, *args], dict(self.env, **(env or {})))
        os.write(fd, input)
        output = b''
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's last user is gone
                break
            if not chunk:
                break
            output += chunk
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), output

    def run_on(self, name: str, *argv: str, **kwargs: object) -> Result:
        """``crcache run NAME ARGV...``."""
        return self.crcache('run', name, *argv, **kwargs)

    @staticmethod
    def write_file(path: str, content: str | bytes, mode: int) -> None:
        """Write a file with exactly this mode."""
        with open(path, 'wb') as f:
            f.write(content.encode() if isinstance(content, str)
                    else content)
        os.chmod(path, mode)

    def remote_listing(self, name: str, path: str) -> str:
        """``mode path sha256`` of everything under ``path`` on an instance.

        Compare with :meth:`local_listing` to check a copied tree.
        """
        return self.run_on(
            name,
            f'cd {path} && find . | LC_ALL=C sort | while read -r p; do '
            'if [ -f "$p" ]; then s=$(sha256sum < "$p" | cut -c1-64); '
            'else s=-; fi; echo "$(stat -c %a "$p") $p $s"; done').stdout

    @staticmethod
    def local_listing(path: str) -> str:
        """The same listing as :meth:`remote_listing`, of a local tree."""
        from crcache.testing.conformance import kit
        return kit.local_listing(path)

    def wait_for(self, predicate, timeout: float = 20,
                 what: str = '') -> None:
        """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f'timed out after {timeout}s waiting for '
                          f'{what or predicate}')
            time.sleep(0.02)

    def assertOneLineError(self, result: Result, *fragments: str) -> None:
        """An error a user can read: one line, no traceback, all facts."""
        self.assertNotEqual(0, result.returncode, str(result))
        self.assertNotIn('Traceback', result.stderr, str(result))
        lines = result.stderr.strip().splitlines()
        self.assertEqual(1, len(lines), str(result))
        for fragment in fragments:
            self.assertIn(fragment, lines[0], str(result))

    def status(self, *sources: str) -> dict[str, dict]:
        """``status -f json`` keyed by source name."""
        import json
        rows = json.loads(self.crcache('status', '-f', 'json',
                                       *sources).stdout)
        return {row['source']: row for row in rows}


def processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, session id) of every process, from /proc."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                # The command name may hold spaces: split after it.
                fields = f.read().rsplit(')', 1)[1].split()
            found.append((int(entry), fields[0], int(fields[1]),
                          int(fields[3])))
        except (OSError, ValueError, IndexError):
            continue
    return found


def children(parent: int) -> list[int]:
    """Live children of ``parent``."""
    return [pid for pid, state, ppid, _ in processes()
            if ppid == parent and state != 'Z']


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a hook and what it started)."""
    return [pid for pid, state, _, session in processes()
            if session == sid and state != 'Z']


def require_program(test: testtools.TestCase, path: str,
                    package: str) -> None:
    """Skip (or fail under CI=true) when a real server is missing."""
    if os.path.exists(path) or shutil.which(path):
        return
    message = f'{path} is not installed (Debian package {package})'
    if os.environ.get('CI') == 'true':
        test.fail(message + ': CI must install it')
    test.skipTest(message)


class HookTestCase(CLITestCase):
    """A test with a marker directory and helpers to write hook scripts."""

    def setUp(self) -> None:
        super().setUp()
        self.marks = os.path.join(self.home, 'marks')
        os.mkdir(self.marks)
        self.log = os.path.join(self.marks, 'log')

    def hook(self, source: str, kind: str, name: str, body: str,
             mode: int = 0o755, root: str | None = None) -> str:
        """Write ``<root>/sources/<source>/<kind>/<name>``; return its path.

        ``body`` follows a ``#!/bin/sh`` line; ``{log}`` and ``{marks}``
        in it are the test's log file and marker directory.
        """
        directory = os.path.join(root or self.config_root, 'sources',
                                 source, kind)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        with open(path, 'w') as f:
            f.write('#!/bin/sh\n'
                    + body.format(log=self.log, marks=self.marks) + '\n')
        os.chmod(path, mode)
        return path

    def logged(self) -> list[str]:
        """The lines hooks appended to the log, in order."""
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []
