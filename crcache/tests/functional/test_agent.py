"""The agent: invisible, self-starting, self-stopping, never in the way."""

from __future__ import annotations

import glob
import marshal
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time

from crcache.daemons import client as agentclient
from crcache.daemons import messages
from crcache.daemons import worker
from crcache.tests.functional import base
from crcache.tests.functional import hostile

#: How an agent's command line names it.
AGENT = 'crcache.daemons.agent'


def _cmdline(pid: int) -> str:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
        return f.read().replace(b'\0', b' ').decode()


def _parent(pid: int) -> int | None:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _comm(pid: int) -> str | None:
    try:
        with open(f'/proc/{pid}/comm') as f:
            return f.read().strip()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split()[2] != 'Z'
    except FileNotFoundError:
        return False


class AgentTestCase(base.CLITestCase):
    """A runtime directory of the test's own, its agent watched."""

    def setUp(self) -> None:
        super().setUp()
        # A runtime directory of this test's own, to watch its agent.
        self.runtime = os.path.join(self.home, 'run')
        os.mkdir(self.runtime, 0o700)
        self.env['XDG_RUNTIME_DIR'] = self.runtime
        self.env['CRCACHE_AGENT_IDLE'] = '60'
        self.addCleanup(self._stop_agents)

    def _sockets(self) -> list[str]:
        return glob.glob(os.path.join(self.runtime, 'crcache', '*.sock'))

    def _agent_pids(self) -> list[int]:
        """The agents (not their workers, nor the spare one ready: forked
        from the agent, they have its command line)."""
        out = subprocess.run(['pgrep', '-f', f'{AGENT} {self.runtime}'],
                             capture_output=True, text=True).stdout
        pids = [int(pid) for pid in out.split()]
        return [pid for pid in pids if _parent(pid) not in pids]

    def _stop_agents(self) -> None:
        for pid in self._agent_pids():
            os.kill(pid, signal.SIGTERM)

    def _runner_of_command(self) -> str:
        # The command line of the process that ran the user's command.
        return self.crcache('run', self.name,
                            'cat /proc/$PPID/cmdline | tr "\\0" " "').stdout


class TestAgent(AgentTestCase):

    def test_first_command_starts_it_and_later_ones_use_it(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: self._sockets())
        self.assertEqual(0o700, os.stat(os.path.dirname(
            self._sockets()[0])).st_mode & 0o777)
        self.wait_for(lambda: AGENT in self._runner_of_command())

    def test_configuration_loaded_ahead_never_hides_an_edit(self) -> None:
        # Old enough for the agent to load it ahead (see
        # crcache.config.prepared.SETTLE), for the workers it forks next.
        self.write_source('box', type='local', maximum=2)
        time.sleep(2.2)
        for _ in range(3):
            self.assertEqual(2, self.status('box')['box']['max'])
        # Rewritten in place, same size; then another source appears.
        self.write_source('box', type='local', maximum=3)
        self.assertEqual(3, self.status('box')['box']['max'])
        self.write_source('more', type='local')
        self.assertEqual(['box', 'local', 'more'], sorted(self.status()))
        # And a key the user must be warned about is warned about by
        # every command.
        self.write_source('ship', type='docker', image='debian')
        time.sleep(2.2)
        for _ in range(3):
            result = self.crcache('status', 'box')
            self.assertIn("key 'image' is deprecated", result.stderr)

    def test_libraries_are_loaded_for_the_types_configured(self) -> None:
        def loaded(library: str) -> bool:
            with open(f'/proc/{self._agent_pids()[0]}/maps') as f:
                return library in f.read()

        # Only local sources: the agent never loads paramiko (and with
        # it cryptography's OpenSSL bindings, tens of MiB).
        self.write_source('box', type='local')
        time.sleep(2.2)  # settled: see crcache.config.prepared.SETTLE
        self.wait_for(lambda: self.crcache('status') and self._agent_pids(),
                      20, 'an agent')
        for _ in range(3):
            self.crcache('status')
        self.assertFalse(loaded('cryptography'))
        # Once a configuration it loads has an ssh source, it does.
        self.write_source('far', type='ssh', ssh_host='127.0.0.1')
        time.sleep(2.2)
        self.wait_for(lambda: self.crcache('status', 'box')
                      and loaded('cryptography'), 20, 'paramiko loaded')

    def test_off_switch(self) -> None:
        self.env['CRCACHE_AGENT'] = '0'
        self.name = self.crcache('acquire').stdout.strip()
        self.assertIn('bin/crcache run', self._runner_of_command())
        self.assertEqual([], self._sockets())

    def test_terminal_stdin_runs_directly(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: self._sockets())
        _, output = self.in_terminal(
            'run', self.name, 'cat /proc/$PPID/cmdline | tr "\\0" " "')
        self.assertIn(b'bin/crcache run', output)

    def test_idle_agent_exits(self) -> None:
        self.env['CRCACHE_AGENT_IDLE'] = '1'
        self.crcache('status')
        self.wait_for(lambda: self._agent_pids())
        self.crcache('status')  # through the agent: a spare follows
        spares = self.spares()
        self.wait_for(lambda: not self._agent_pids())
        self.assertEqual([], self._sockets())
        # Its spare worker went with it.
        self.wait_for(lambda: not [p for p in spares if _alive(p)],
                      what='the spare worker to go')

    def test_a_spare_worker_waits_and_serves_the_next_command(
            self) -> None:
        self.crcache('status')
        self.wait_for(lambda: self._agent_pids())
        name = self.crcache('acquire').stdout.strip()
        self.wait_for(self.spares, what='a spare worker')
        [spare] = self.spares()
        marker = os.path.join(self.home, 'ran-here')
        proc = subprocess.Popen(
            [base.CRCACHE, 'run', name, '--', 'sh', '-c',
             f'pwd > {marker}; echo "$PROBE" >> {marker}; sleep 2'],
            env=dict(self.env, PROBE='the client\'s'), cwd=self.home,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.wait)
        # The command is the spare's child, and the spare has its own
        # name back.
        self.wait_for(lambda: [p for p, _, ppid, _ in base.processes()
                               if ppid == spare], what='the command')
        self.assertNotEqual(worker.SPARE_NAME, _comm(spare))
        self.assertEqual(0, proc.wait(timeout=30), proc.stderr.read())
        with open(marker) as f:
            self.assertEqual(f"{self.home}\nthe client's\n", f.read())
        self.crcache('release', name)
        # And another spare waits.
        self.wait_for(lambda: self.spares() and self.spares() != [spare],
                      what='the next spare worker')

    def spares(self) -> list[int]:
        """The agent's spare workers (named so until they serve)."""
        return [pid for pid, _, ppid, _ in base.processes()
                if ppid in self._agent_pids()
                and _comm(pid) == worker.SPARE_NAME]

    def test_dead_agent_is_replaced(self) -> None:
        self.crcache('status')
        self.wait_for(lambda: self._agent_pids())
        for pid in self._agent_pids():
            os.kill(pid, signal.SIGKILL)
        self.wait_for(lambda: not self._agent_pids())
        self.assertNotEqual([], self._sockets())  # left behind, stale
        self.assertIn('local', self.crcache('status').stdout)
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: AGENT in self._runner_of_command())

    def test_environment_directory_and_umask_follow_the_client(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: AGENT in self._runner_of_command())
        sub = os.path.join(self.project, 'sub')
        os.mkdir(sub)
        old = os.umask(0o027)
        try:
            out = self.crcache('run', self.name, 'echo "$X"; pwd; umask',
                               cwd=sub, env={'X': 'y z'}).stdout
        finally:
            os.umask(old)
        self.assertEqual(f'y z\n{sub}\n0027\n', out)

    def test_killed_client_takes_its_worker_along(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: AGENT in self._runner_of_command())
        proc = self.start('run', self.name, 'echo $PPID; exec sleep 20')
        worker = int(proc.stdout.readline())
        self.assertIn(AGENT, _cmdline(worker))
        proc.kill()
        proc.wait()
        self.wait_for(lambda: not _alive(worker))
        # The agent itself carries on.
        self.assertIn(AGENT, self._runner_of_command())

    def test_worker_killed_by_signal_kills_the_client_alike(self) -> None:
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: AGENT in self._runner_of_command())
        proc = self.start('run', self.name, 'echo $PPID; exec sleep 20')
        worker = int(proc.stdout.readline())
        os.kill(worker, signal.SIGKILL)
        self.assertEqual(-signal.SIGKILL, proc.wait(timeout=30))


class TestSameAsDirect(AgentTestCase):
    """Through the agent, a command behaves exactly as run directly."""

    PLUGIN = textwrap.dedent('''\
        """A crcache command plugin for the agent's tests."""
        import os
        from cliff import command

        VERSION = 'v1'


        class Hello(command.Command):
            """Say which version of this plugin runs, and in what."""

            def take_action(self, parsed_args):
                with open(f'/proc/{os.getppid()}/cmdline', 'rb') as f:
                    parent = f.read().replace(b'\\0', b' ').decode()
                runner = 'agent' if 'daemons.agent' in parent else 'direct'
                self.app.stdout.write(f'{VERSION} {runner}\\n')
    ''')

    def plugin(self) -> str:
        """A plugin distribution on PYTHONPATH adding ``crcache hello``."""
        top = os.path.join(self.home, 'plugins')
        package = os.path.join(top, 'crcache_hello')
        os.makedirs(package)
        module = os.path.join(package, '__init__.py')
        with open(module, 'w') as f:
            f.write(self.PLUGIN)
        info = os.path.join(top, 'crcache_hello-1.0.dist-info')
        os.mkdir(info)
        with open(os.path.join(info, 'METADATA'), 'w') as f:
            f.write('Metadata-Version: 2.1\nName: crcache-hello\n'
                    'Version: 1.0\n')
        with open(os.path.join(info, 'entry_points.txt'), 'w') as f:
            f.write('[crcache.cmd]\nhello = crcache_hello:Hello\n')
        self.env['PYTHONPATH'] = top
        return module

    def hello_through_the_agent(self, version: str) -> None:
        self.wait_for(lambda: self.crcache('hello').stdout
                      == f'{version} agent\n', 20,
                      f'{version} through the agent')

    def test_an_edited_plugin_is_seen_by_the_next_command(self) -> None:
        module = self.plugin()
        self.hello_through_the_agent('v1')
        # Edited in place: its directory (on sys.path) does not change.
        with open(module) as f:
            text = f.read()
        with open(module, 'w') as f:
            f.write(text.replace("VERSION = 'v1'", "VERSION = 'v2'"))
        later = time.time() + 5
        os.utime(module, (later, later))
        self.assertEqual('v2 direct\n', self.crcache('hello').stdout)
        self.hello_through_the_agent('v2')

    def test_listings_are_byte_identical(self) -> None:
        self.write_source('pool', type='pool', sources='local', reserve=1)
        self.crcache('acquire', '-s', 'pool')
        env = {'TZ': 'America/New_York', 'LANG': 'C.UTF-8',
               'LC_TIME': 'C.UTF-8'}
        self.crcache('status', env=env)
        self.wait_for(lambda: self._agent_pids(), what='the agent to start')
        commands = [('status',), ('status', '-v'), ('status', '-t'),
                    ('status', '-a'), ('status', '-v', '-f', 'json'),
                    ('status', '-t', '-f', 'yaml'),
                    ('status', '-f', 'csv'), ('status', '-f', 'value'),
                    ('status', '--query', 'available'),
                    ('gc', '-f', 'json'), ('help', 'status'),
                    ('status', 'nosuch'), ('frobnicate',)]
        for command in commands:
            agent = self.crcache(*command, env=env, expect=None)
            direct = self.crcache(*command, expect=None,
                                  env=dict(env, CRCACHE_AGENT='0'))
            self.assertEqual(
                (direct.returncode, direct.stdout, direct.stderr),
                (agent.returncode, agent.stdout, agent.stderr), command)

    def test_a_signal_ignored_by_the_caller_stays_ignored(self) -> None:
        # As under nohup: SIGHUP is ignored by the caller, so neither
        # crcache nor the command it runs may die of it.
        name = self.crcache('acquire').stdout.strip()
        self.crcache('status')
        self.wait_for(lambda: self._agent_pids(), what='the agent to start')
        proc = subprocess.Popen(
            [base.CRCACHE, 'run', name, 'echo ready; sleep 1; echo done'],
            env=self.env, cwd=self.project, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGHUP,
                                             signal.SIG_IGN))
        self.addCleanup(proc.kill)
        self.assertEqual(b'ready\n', proc.stdout.readline())
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=20)
        self.assertEqual((0, b'done\n', b''), (proc.returncode, out, err))


class TestAgentProtocol(AgentTestCase):
    """Clients that misbehave on the agent's socket: slow, silent or
    malformed ones hold nobody up and leak nothing."""

    def setUp(self) -> None:
        super().setUp()
        self.name = self.crcache('acquire').stdout.strip()
        self.wait_for(lambda: AGENT in self._runner_of_command())
        [self.socket] = self._sockets()
        [self.agent] = self._agent_pids()

    def _prompt(self) -> None:
        # Commands go through the agent and return promptly.
        started = time.monotonic()
        self.assertIn(AGENT,
                      self.crcache('run', self.name,
                                   'cat /proc/$PPID/cmdline | tr "\\0" " "',
                                   timeout=10).stdout)
        self.assertIn('local', self.crcache('status', timeout=10).stdout)
        self.assertLess(time.monotonic() - started, 2)

    def test_silent_and_trickling_clients_hold_nobody_up(self) -> None:
        connected = time.monotonic()
        silent = hostile.raw_connect(self.socket)
        self.addCleanup(silent.close)
        trickler = hostile.raw_connect(self.socket)
        self.addCleanup(trickler.close)
        dropped = []

        def trickle() -> None:
            # A plausible request, one byte every 0.2 s: it would take
            # minutes to arrive.
            data = hostile.frame(marshal.dumps(tuple(range(500))))
            try:
                for byte in data:
                    trickler.send(bytes([byte]))
                    time.sleep(0.2)
            except OSError:
                dropped.append(time.monotonic())

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 30)
        time.sleep(0.5)  # both are well into their "requests"
        self._prompt()
        # Both are dropped at the request deadline, not served forever.
        self.assertTrue(hostile.hung_up_on(silent, 15))
        self.assertLess(time.monotonic() - connected, 5 + 3)
        thread.join(15)
        self.assertEqual(1, len(dropped))
        self.assertLess(dropped[0] - connected, 5 + 3)
        self.assertEqual([self.agent], self._agent_pids())
        self._prompt()

    def test_stuck_agent_is_given_up_on_and_runs_nothing(self) -> None:
        counter = os.path.join(self.home, 'counter')
        os.kill(self.agent, signal.SIGSTOP)
        self.addCleanup(os.kill, self.agent, signal.SIGCONT)
        started = time.monotonic()
        result = self.crcache('run', self.name, f'echo once >> {counter}',
                              timeout=40)
        self.assertLess(time.monotonic() - started, 10 + 5)
        self.assertEqual(
            f'crcache: the crcache agent ({self.socket}) did not answer '
            'within 10s; running directly\n', result.stderr)
        os.kill(self.agent, signal.SIGCONT)
        # Awake, it finds a request whose client hung up: it runs nothing
        # (the command ran once, directly) and serves the next ones.
        self._prompt()
        with open(counter) as f:
            self.assertEqual('once\n', f.read())

    def _idle_fd_count(self) -> int:
        # With no worker left (reaped: its client's socket closed), and
        # its spare worker ready (its socket and report pipe counted).
        def settled() -> bool:
            kids = [p for p, _, ppid, _ in base.processes()
                    if ppid == self.agent]
            return [_comm(p) for p in kids] == [worker.SPARE_NAME]
        self.wait_for(settled, what='the agent to reap its workers')
        return hostile.fd_count(self.agent)

    def _request(self, command: list[str], **changes: object) -> tuple:
        """What the client sends to run ``crcache COMMAND``, with
        ``changes`` to its fields."""
        fields = {
            'protocol': agentclient.PROTOCOL,
            'argv': command, 'env': dict(self.env), 'cwd': self.project,
            'umask': 0o22, 'pid': os.getpid(), 'ppid': os.getppid(),
            'argv0': base.CRCACHE, 'warned': [],
            'identity': [os.getuid(), os.geteuid(), os.getgid(),
                         os.getegid(), *sorted(set(os.getgroups()))],
            'ignored': []}
        fields.update(changes)
        return tuple(fields.values())

    def test_malformed_requests_are_dropped_and_leak_nothing(self) -> None:
        marker = os.path.join(self.home, 'ran')
        good = framed(self._request(['run', self.name, 'touch', marker]))
        fds = framed(('fds',))
        null = os.open(os.devnull, os.O_RDWR)
        self.addCleanup(os.close, null)
        three, one, five = [null] * 3, [null], [null] * 5
        # What goes wrong with the request itself (descriptors sent along
        # must be closed all the same) ...
        first = {
            'not marshal data': (hostile.frame(b'\xffnot marshal'), three),
            'not a tuple': (framed(42), three),
            'another protocol': (framed(self._request([], protocol=99)),
                                 three),
            'too few fields': (framed(self._request([])[:5]), three),
            'argv not a list': (framed(self._request([], argv='run x')),
                                three),
            'environment not text': (
                framed(self._request([], env={'A': 1})), three),
            'other group ids than the agent': (
                framed(self._request([], identity=[0, 0, 12345])), three),
            'ignored signals not numbers': (
                framed(self._request([], ignored=['HUP'])), three),
            'empty message': (hostile.frame(b''), three),
            'length past the data, then hang-up': (
                hostile.frame(good[4:], len(good) + 100), three),
            'length over the limit': (
                hostile.frame(b'x' * 16, 1 << 30), three),
            'descriptors and one byte, then hang-up': (b'\0', three),
            'descriptors with the request': (good, three),
            'bytes after the request': (good + b'xx', None),
        }
        # ... and with the descriptors, once the agent said "ready".
        second = {
            'one descriptor': (fds, one),
            'five descriptors': (fds, five),
            'no descriptors': (fds, None),
            'another message': (framed(('files',)), three),
            'bytes after the descriptors': (fds + b'xx', three),
            'hang-up instead': (b'', None),
            'length past the data, then hang-up': (
                hostile.frame(fds[4:], 100), three),
        }
        before = self._idle_fd_count()
        cases = [(False, label, case) for label, case in first.items()]
        cases += [(True, label, case) for label, case in second.items()]
        for after_ready, label, (data, attached) in cases:
            sock = hostile.raw_connect(self.socket)
            try:
                if after_ready:
                    hostile.send_raw(sock, good)
                    self.assertEqual(('ready', None),
                                     messages.receive_message(sock)[0])
                if data:
                    hostile.send_raw(sock, data, attached)
                sock.shutdown(socket.SHUT_WR)
                self.assertTrue(hostile.hung_up_on(sock, 10), label)
            finally:
                sock.close()
        self.wait_for(lambda: hostile.fd_count(self.agent) == before, 5,
                      f'the agent to be back at {before} descriptors, not '
                      f'{hostile.fd_count(self.agent)}')
        self.assertFalse(os.path.exists(marker))
        self.assertEqual([self.agent], self._agent_pids())
        self._prompt()
        # The same request, well formed, does run: the cases above were
        # refused for what is wrong with them, not for being made here.
        sock = hostile.raw_connect(self.socket)
        self.addCleanup(sock.close)
        hostile.send_raw(sock, good)
        self.assertEqual(('ready', None), messages.receive_message(sock)[0])
        hostile.send_raw(sock, fds, three)
        self.assertEqual('pid', messages.receive_message(sock)[0][0])
        self.assertEqual(('exit', 0), messages.receive_message(sock)[0])
        self.assertTrue(os.path.exists(marker))
        self.wait_for(lambda: hostile.fd_count(self.agent) == before, 5,
                      'the agent to close the last request\'s descriptors')


def framed(message: object) -> bytes:
    """``message`` as the daemons frame it."""
    return hostile.frame(marshal.dumps(message))
