"""The ``ssh`` source type: an existing machine reached over ssh.

One instance per source: the host. Commands run through the remote user's
shell, as ``ssh host command`` does; files are copied with tar streamed
over an exec channel (measured faster than paramiko's SFTP). Host keys are
always verified. After a command, a connection holder
(:mod:`crcache.sources.ssh.holder`) keeps the connection open for
``ssh_persist`` seconds, so later commands skip the connection set-up
entirely and never import paramiko.

This module imports neither paramiko nor
:mod:`crcache.sources.ssh.connection` until a connection is actually
needed.
"""

from __future__ import annotations

import os

from oslo_config import cfg

from crcache.sources import base
from crcache.sources.ssh.settings import Settings, stamp, warner
from crcache.transport import cmdline
from crcache.transport import process

POLICIES = ('reject', 'accept-new')


class SshSource(base.BackendSource):
    """An existing host, reached with paramiko and verified known_hosts."""

    default_maximum = 1
    warm_modules = ('crcache.sources.ssh.holder',
                    'crcache.sources.ssh.connection',
                    'crcache.sources.ssh.command', 'paramiko',
                    'paramiko.config')
    # How this machine reaches and trusts the host, not which host it is.
    local_keys = frozenset({'ssh_user', 'ssh_key', 'ssh_known_hosts',
                            'ssh_host_key_policy', 'ssh_connect_timeout',
                            'ssh_persist'})
    opts = [
        cfg.StrOpt(
            'ssh_host',
            help='For ssh: the host to connect to, a name or an address. '
                 'A Host entry of ~/.ssh/config applies (HostName, Port, '
                 'User, IdentityFile); keys set here take precedence. '
                 'Required for type=ssh.'),
        cfg.PortOpt(
            'ssh_port',
            help='For ssh: the port (default: from ~/.ssh/config, else '
                 '22).'),
        cfg.StrOpt(
            'ssh_user',
            help='For ssh: the user to log in as (default: from '
                 '~/.ssh/config, else the local user name).'),
        cfg.StrOpt(
            'ssh_key',
            help='For ssh: the private key file to authenticate with. '
                 'Default: the keys of the ssh agent, then IdentityFile '
                 'from ~/.ssh/config, then ~/.ssh/id_ed25519, id_ecdsa and '
                 'id_rsa. A key with a passphrase must be in the agent.'),
        cfg.StrOpt(
            'ssh_known_hosts',
            default='~/.ssh/known_hosts',
            help='For ssh: the known_hosts file holding the host\'s key '
                 '(/etc/ssh/ssh_known_hosts is read as well).'),
        cfg.StrOpt(
            'ssh_host_key_policy',
            default='reject',
            choices=POLICIES,
            help='For ssh: what to do with a host key that is not in '
                 'known_hosts: reject it, or accept-new to record it in '
                 'ssh_known_hosts. A changed host key is always refused.'),
        cfg.FloatOpt(
            'ssh_connect_timeout',
            default=10.0,
            min=0.1,
            help='For ssh: seconds to wait for the connection and its key '
                 'exchange.'),
        cfg.FloatOpt(
            'ssh_persist',
            default=60.0,
            min=0,
            help='For ssh: keep the connection open this many seconds '
                 'after the last command, for later commands to reuse '
                 '(as OpenSSH\'s ControlPersist); 0 turns this off.'),
    ]

    def validate(self) -> list[tuple[str, str]]:
        problems = super().validate()
        if not (self.conf.ssh_host or '').strip():
            problems.append(('ssh_host', 'required for type=ssh'))
        return problems

    def settings(self) -> Settings:
        """This source's connection settings (reads no ssh config)."""
        conf = self.conf
        ssh_config = os.path.expanduser('~/.ssh/config')
        return Settings(
            source=self.name,
            host=conf.ssh_host.strip(),
            port=conf.ssh_port,
            user=conf.ssh_user,
            key=conf.ssh_key,
            known_hosts=os.path.abspath(
                os.path.expanduser(conf.ssh_known_hosts)),
            policy=conf.ssh_host_key_policy,
            timeout=conf.ssh_connect_timeout,
            ssh_config=ssh_config,
            ssh_config_stamp=stamp(ssh_config),
        )

    @property
    def persist(self) -> float:
        return self.conf.ssh_persist

    # -- the contract --------------------------------------------------------

    def provision(self, names: list[str]) -> dict[str, base.Ref]:
        # The host exists already; make sure it can be reached and trusted
        # before handing it out.
        status, _, err = self.capture({}, ['true'])
        if status != 0:
            from crcache import exceptions
            raise exceptions.SourceError(
                self.name, f'{self.settings().label}: running true failed '
                f'(exit {status}): {err.decode(errors="replace").strip()}')
        return {name: {} for name in names}

    def discard(self, refs: dict[str, base.Ref]) -> None:
        # The host stays; there is nothing of crcache's on it to remove.
        return None

    def run(self, ref: base.Ref, argv: list[str], stdin: int, stdout: int,
            stderr: int) -> int:
        if not argv:
            return self._interactive(stdin, stdout)
        line = cmdline.join(argv)
        settings = self.settings()
        if self.persist:
            from crcache.sources.ssh import holder as sshholder
            status = sshholder.run(settings, line, stdin, stdout, stderr)
            if status is not None:
                return status
        return self._run_direct(settings, line, stdin, stdout, stderr)

    # -- without a holder ----------------------------------------------------

    def _run_direct(self, settings: Settings, line: str, stdin: int,
                    stdout: int, stderr: int) -> int:
        from crcache.sources.ssh import command as sshcommand
        from crcache.sources.ssh import connection as sshconn
        from crcache.sources.ssh import target as sshtarget
        conn = sshconn.Connection(sshtarget.resolve(settings)).open()
        try:
            command = sshcommand.RemoteCommand(
                conn, conn.session(), warn=warner(settings, stderr))
            with process.foreground(process.REMOTE, ()) as job:
                command.exec(line)
                job.started(command)
                status = sshcommand.pump(command.chan, stdin, stdout,
                                         stderr, command.report)
        finally:
            conn.close()
        if self.persist:
            from crcache.sources.ssh import holder as sshholder
            sshholder.spawn(settings, self.persist)
        return status

    def _interactive(self, stdin: int, stdout: int) -> int:
        """A login shell on a pty sized like ours, as plain ssh gives."""
        import signal
        import termios
        import tty

        import paramiko

        from crcache import exceptions
        from crcache.sources.ssh import command as sshcommand
        from crcache.sources.ssh import connection as sshconn
        from crcache.sources.ssh import target as sshtarget
        conn = sshconn.Connection(sshtarget.resolve(self.settings())).open()
        saved = None
        try:
            chan = conn.session()
            if os.isatty(stdin):
                size = os.get_terminal_size(stdin)
                try:
                    chan.get_pty(term=os.environ.get('TERM', 'vt100'),
                                 width=size.columns, height=size.lines)
                except (EOFError, OSError, paramiko.SSHException) as err:
                    raise exceptions.SourceError(
                        self.name, f'{self.settings().host} gave no '
                        'terminal for the shell: '
                        f"{err or 'it closed the session'} (the server's "
                        'log says why)')

                def resized(signum: int, frame: object) -> None:
                    new = os.get_terminal_size(stdin)
                    chan.resize_pty(width=new.columns, height=new.lines)

                signal.signal(signal.SIGWINCH, resized)
                saved = termios.tcgetattr(stdin)
                # TCSADRAIN, as OpenSSH: TCSAFLUSH (the default) would drop
                # what was typed while the connection was being made.
                tty.setraw(stdin, termios.TCSADRAIN)
            chan.invoke_shell()
            return sshcommand.pump(chan, stdin, stdout, stdout)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            conn.close()


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point for the ssh keys."""
    return [(None, SshSource.opts)]
