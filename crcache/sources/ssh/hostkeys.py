"""Trusting an ssh host: its key against ``known_hosts``.

Host keys are always verified against ``known_hosts`` (the user's and
the system's): a key on record must match, a first-seen key is recorded
only under the ``accept-new`` policy, and a changed key is always
refused, with the way to clear the old entry.
"""

from __future__ import annotations

import base64
import hashlib
import os

import paramiko

from crcache.sources.ssh.target import Target

SYSTEM_KNOWN_HOSTS = '/etc/ssh/ssh_known_hosts'


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return 'SHA256:' + base64.b64encode(digest).decode().rstrip('=')


def load(target: Target) -> paramiko.HostKeys:
    """The known host keys: the system's, then the user's file."""
    keys = paramiko.HostKeys()
    for path in (SYSTEM_KNOWN_HOSTS, target.known_hosts):
        try:
            keys.load(path)
        except FileNotFoundError:
            continue
        except (OSError, paramiko.SSHException, ValueError) as err:
            raise target.error(
                f'cannot read known hosts file {path}: {err}')
    return keys


def known_types(target: Target) -> set[str]:
    """The key types known hosts holds for ``target``'s host."""
    entry = load(target).lookup(target.known_hosts_name)
    return set(entry.keys()) if entry else set()


def verify(target: Target, key: paramiko.PKey) -> None:
    """Trust ``key`` as ``target``'s host key, or raise why not.

    A known key must match; an unknown one is recorded only under the
    ``accept-new`` policy; a changed one is always refused.
    """
    name = target.known_hosts_name
    entry = load(target).lookup(name)
    key_type = key.get_name()
    if entry:
        known = entry.get(key_type)
        if known is not None and known.asbytes() == key.asbytes():
            return
        if known is not None:
            raise target.error(
                f'HOST KEY CHANGED: {name} now presents {key_type} '
                f'{fingerprint(key)}, which does not match '
                f'{target.known_hosts}; refusing to connect (someone '
                'may be intercepting the connection). If the host was '
                'reinstalled, remove its old entry with ssh-keygen -R '
                f"'{name}' -f {target.known_hosts}")
        raise target.error(
            f'{name} presents a {key_type} host key '
            f'({fingerprint(key)}) but known hosts only has '
            f'{", ".join(sorted(entry.keys()))} for it; refusing to '
            'connect')
    if target.policy == 'accept-new':
        _record(target, name, key)
        return
    raise target.error(
        f'unknown host key {key_type} {fingerprint(key)}; to trust it, '
        f'add it to {target.known_hosts} (for example ssh-keyscan -p '
        f'{target.port} {target.hostname} >> {target.known_hosts}) or '
        'set ssh_host_key_policy=accept-new')


def _record(target: Target, name: str, key: paramiko.PKey) -> None:
    path = target.known_hosts
    line = f'{name} {key.get_name()} {key.get_base64()}\n'
    try:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o600)
        with os.fdopen(fd, 'a') as f:
            if f.tell():
                with open(path, 'rb') as existing:
                    existing.seek(-1, os.SEEK_END)
                    if existing.read(1) != b'\n':
                        f.write('\n')
            f.write(line)
    except OSError as err:
        raise target.error(
            f'cannot record the host key in {path}: '
            f'{err.strerror or err}')
