"""A docker source's keys: their declarations and their checks.

Every key of the type is named ``docker_*`` (the rule for every source
type, see the plugin author's guide); the unprefixed names of the first
release (``image``, ``pull``, ``user``...) still work, each with a
deprecation warning naming its new name (see
:func:`crcache.config.files.load`).
"""

from __future__ import annotations

import re
from typing import Any

from oslo_config import cfg

KEEP_ALIVE = ('trap "exit 0" TERM INT; '
              'while :; do sleep 3600 & wait $!; done')
_MEMORY = re.compile(r'^\s*(\d+)\s*([kmgKMG]?)[bB]?\s*$')

OPTS = [
    cfg.StrOpt(
        'docker_image', deprecated_name='image',
        help='For docker: the image to make containers from. Required '
             'for type=docker.'),
    cfg.StrOpt(
        'docker_host',
        help='For docker: the engine to use, as unix:///path or '
             'tcp://host:port (default: $DOCKER_HOST, else '
             'unix:///var/run/docker.sock).'),
    cfg.StrOpt(
        'docker_pull', deprecated_name='pull',
        default='missing',
        choices=('never', 'missing'),
        help='For docker: pull the image when it is missing, or never '
             '(a missing image is then an error).'),
    cfg.StrOpt(
        'docker_workdir', deprecated_name='workdir',
        help='For docker: the directory commands run in (default: the '
             'image\'s).'),
    cfg.ListOpt(
        'docker_env', deprecated_name='env',
        default=[],
        help='For docker: environment variables of the containers, as '
             'comma-separated KEY=VALUE.'),
    cfg.ListOpt(
        'docker_volumes', deprecated_name='volumes',
        default=[],
        help='For docker: bind mounts, as comma-separated '
             'host_path:container_path[:ro].'),
    cfg.StrOpt(
        'docker_network', deprecated_name='network',
        help='For docker: the network to attach containers to '
             '(default: the engine\'s).'),
    cfg.StrOpt(
        'docker_user', deprecated_name='user',
        help='For docker: the user commands run as (default: the '
             'image\'s).'),
    cfg.BoolOpt(
        'docker_privileged', deprecated_name='privileged',
        default=False,
        help='For docker: run privileged containers.'),
    cfg.FloatOpt(
        'docker_cpus', deprecated_name='cpus',
        min=0,
        help='For docker: a CPU limit per container (for example 2 or '
             '0.5); also the concurrency reported unless set.'),
    cfg.StrOpt(
        'docker_memory', deprecated_name='memory',
        help='For docker: a memory limit per container (for example '
             '512m or 2g).'),
    cfg.StrOpt(
        'docker_keep_alive_command', deprecated_name='keep_alive_command',
        default=KEEP_ALIVE,
        help='For docker: the command (run by /bin/sh) that keeps a '
             'container running between commands.'),
]


def memory_bytes(text: str) -> int:
    """``512m``, ``2g``... as a number of bytes (ValueError if not)."""
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(f'{text!r} is not a size (like 512m or 2g)')
    scale = {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30}
    return int(match.group(1)) * scale[match.group(2).lower()]


def problems(conf: Any) -> list[tuple[str, str]]:
    """What is wrong with the docker keys of ``conf``, as (key, problem)."""
    found = []
    if not (conf.docker_image or '').strip():
        found.append(('docker_image', 'required for type=docker'))
    for item in conf.docker_env:
        if '=' not in item:
            found.append(('docker_env', f'{item!r} is not KEY=VALUE'))
    for item in conf.docker_volumes:
        parts = item.split(':')
        if len(parts) not in (2, 3) or (len(parts) == 3
                                        and parts[2] not in ('ro', 'rw')):
            found.append(
                ('docker_volumes', f'{item!r} is not host:container[:ro]'))
    if conf.docker_memory:
        try:
            memory_bytes(conf.docker_memory)
        except ValueError as err:
            found.append(('docker_memory', str(err)))
    return found


def list_opts() -> list[tuple[str | None, list]]:
    """``oslo.config.opts`` entry point for the docker keys."""
    return [(None, OPTS)]
