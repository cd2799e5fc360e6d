"""Where and as whom an ssh source connects, once ``~/.ssh/config``
applies.

:func:`resolve` turns a source's :class:`~crcache.sources.ssh.settings.
Settings` (its keys as configured) into a :class:`Target`: the host name,
port, user, keys to try and how to trust the host, with the ``Host``
entry of ``~/.ssh/config`` filling in what the keys leave unset. Errors
name the source, the host and port, and the cause, in one line.
"""

from __future__ import annotations

import dataclasses
import getpass
from typing import Any

import paramiko

from crcache import exceptions

DEFAULT_KEY_FILES = ('~/.ssh/id_ed25519', '~/.ssh/id_ecdsa', '~/.ssh/id_rsa')


@dataclasses.dataclass(frozen=True)
class Target:
    """Everything needed to reach and trust one ssh host."""

    source: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    explicit_key: bool
    known_hosts: str
    policy: str
    timeout: float

    @property
    def label(self) -> str:
        return f'{self.user}@{self.hostname}:{self.port}'

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts names it."""
        if self.port == 22:
            return self.hostname
        return f'[{self.hostname}]:{self.port}'

    def error(self, message: str) -> exceptions.SourceError:
        return exceptions.SourceError(self.source, f'{self.label}: {message}')


def resolve(settings: Any) -> Target:
    """Apply ``~/.ssh/config`` to a source's settings; keys set win."""
    found: dict[str, Any] = {}
    try:
        ssh_config = paramiko.SSHConfig.from_path(settings.ssh_config)
    except FileNotFoundError:
        ssh_config = None
    except Exception as err:
        raise exceptions.SourceError(
            settings.source, f'cannot read {settings.ssh_config}: {err}')
    if ssh_config is not None:
        try:
            found = ssh_config.lookup(settings.host)
        except Exception as err:
            raise exceptions.SourceError(
                settings.source, f'{settings.ssh_config}: cannot look up '
                f'{settings.host}: {err}')
    try:
        port = settings.port or int(found.get('port', 22))
    except ValueError:
        raise exceptions.SourceError(
            settings.source, f'{settings.ssh_config}: bad Port for '
            f'{settings.host}: {found.get("port")!r}')
    if settings.key:
        key_files: tuple[str, ...] = (settings.key,)
    else:
        key_files = tuple(found.get('identityfile', [])) + DEFAULT_KEY_FILES
    return Target(
        source=settings.source,
        hostname=found.get('hostname', settings.host),
        port=port,
        user=settings.user or found.get('user') or getpass.getuser(),
        key_files=key_files,
        explicit_key=bool(settings.key),
        known_hosts=settings.known_hosts,
        policy=settings.policy,
        timeout=settings.timeout,
    )
