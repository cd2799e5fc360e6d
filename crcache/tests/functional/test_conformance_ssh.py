"""The conformance suite (:mod:`crcache.testing`) against ``ssh``.

Every test starts its own OpenSSH server (:mod:`~crcache.tests.functional.
sshd`) on a loopback port and reaches it as the suite's source. The whole
suite runs through the connection holder (the usual case); the checks of
``crcache run`` (streams, exit status, signals: what takes another path
without the holder) run again with a connection per command
(``ssh_persist = 0``). Each test has a runtime
directory of its own, so the agent and the holders it leaves behind are
found and stopped after it.
"""

from __future__ import annotations

import os
import signal
import subprocess

import testtools

from crcache import testing
from crcache.testing.conformance.running import RunChecks
from crcache.tests.functional import base
from crcache.tests.functional import sshd


class SSHServer:
    """The suite's source is an ssh host: a real sshd of the test's own."""

    private_runtime = True
    opts_namespace = 'crcache.sources.ssh'
    #: Extra source.conf keys.
    overrides: dict[str, object] = {}

    def source_keys(self) -> dict:
        base.require_program(self, sshd.SSHD, 'openssh-server')
        self.addCleanup(self._stop_helpers)
        self.server = self.useFixture(sshd.SSHServer())
        self.known_hosts = os.path.join(self.world.home, 'known_hosts')
        with open(self.known_hosts, 'w') as f:
            f.write(self.server.known_hosts_line() + '\n')
        return self.server.source_keys(self.known_hosts, **self.overrides)

    def unreachable_keys(self) -> dict:
        # A port nothing listens on: the connection is refused.
        return self.server.source_keys(self.known_hosts,
                                       ssh_port=sshd.free_port(),
                                       **self.overrides)

    def _stop_helpers(self) -> None:
        runtime = self.world.runtime_dir
        for pattern in (f'crcache.daemons.agent {runtime}/',
                        f'crcache.sources.ssh.holder {runtime}/'):
            out = subprocess.run(['pgrep', '-f', pattern],
                                 capture_output=True, text=True).stdout
            for pid in out.split():
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass


class TestSSHThroughHolder(SSHServer, testing.SourceConformance,
                           testtools.TestCase):
    """Commands handed to the connection holder: the usual case."""


class TestSSHDirect(SSHServer, RunChecks, testtools.TestCase):
    """Commands on connections of their own (no holder)."""

    overrides = {'ssh_persist': 0}
