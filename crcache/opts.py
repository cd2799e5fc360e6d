"""The ``source.conf`` keys every source type shares.

``list_opts`` is the ``oslo.config.opts`` entry point that lets
``oslo-config-generator`` document them; each source type documents its
own keys through its module's ``list_opts``.
"""

from __future__ import annotations

from oslo_config import cfg

COMMON_OPTS = [
    cfg.StrOpt(
        'type',
        required=True,
        help='What sort of source this is: the name of an installed source '
             'type (crcache.sources entry point), such as local, pool or '
             'ssh.'),
    cfg.IntOpt(
        'reserve',
        default=0,
        min=0,
        help='Keep up to this many instances cached rather than discarding '
             'them on release. 0 discards every released instance, which '
             'avoids caching expensive resources without warning.'),
    cfg.IntOpt(
        'maximum',
        default=0,
        min=0,
        help='Never have more than this many live instances of this source '
             '(provisioning, in use, cached or being discarded). 0 means no '
             'limit, except where the source type has a natural one (local '
             'defaults to 1; a pool defaults to the sum of its sources).'),
    cfg.IntOpt(
        'concurrency',
        default=0,
        min=0,
        help='The number of parallel jobs each instance of this source can '
             'take. 0 probes the instance (its CPU count).'),
]


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """Return the common options for the sample configuration generator."""
    return [(None, COMMON_OPTS)]
