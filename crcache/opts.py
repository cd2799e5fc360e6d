"""The keys every ``source.conf`` (and every ``store.conf``) shares.

``list_opts`` is the ``oslo.config.opts`` entry point that lets
``oslo-config-generator`` document them; each source type documents its
own keys through its module's ``list_opts``.
"""

from __future__ import annotations

from crcache import lazyimports

# Before oslo.config is imported: see crcache.lazyimports.
lazyimports.defer(*lazyimports.UNUSED_BY_CRCACHE)

from oslo_config import cfg  # noqa: E402

from crcache.conftypes import Duration  # noqa: E402

COMMON_OPTS = [
    cfg.StrOpt(
        'type',
        required=True,
        help='What sort of source this is: the name of an installed source '
             'type (crcache.sources entry point), such as local, pool or '
             'ssh.'),
    cfg.StrOpt(
        'store',
        default='local',
        help='The state store that keeps this source\'s instances: the '
             'name of a store defined in <root>/stores/<name>/store.conf, '
             'or local (the embedded SQLite store, needing no setup). A '
             'pool and every source it draws from must share one store; a '
             'source bound to this machine (type=local) cannot live in a '
             'shared (PostgreSQL) store.'),
    cfg.IntOpt(
        'reserve',
        default=0,
        min=0,
        help='Keep up to this many instances cached rather than discarding '
             'them on release. 0 discards every released instance, which '
             'avoids caching expensive resources without warning.'),
    cfg.IntOpt(
        'maximum',
        min=0,
        sample_default='0',
        help='Never have more than this many live instances of this source '
             '(provisioning, in use, cached or being discarded). 0 means no '
             'limit. Unset, it is 0 except where the source type has a '
             'natural limit: local and ssh have 1 (the machine), a pool '
             'the sum of its sources\' maxima.'),
    cfg.IntOpt(
        'concurrency',
        default=0,
        min=0,
        help='The number of parallel jobs each instance of this source can '
             'take. 0 probes the instance (its CPU count).'),
    cfg.Opt(
        'max_idle',
        type=Duration(),
        default=0,
        help='Discard cached instances left unused longer than this (a '
             'duration: 90, 90s, 15m, 2h or 1d), at the next gc pass '
             '(crcache gc, or the start of an acquire). 0 keeps them '
             'forever.'),
    cfg.Opt(
        'lease',
        type=Duration(),
        default=0,
        help='How long an acquired instance may be held before crcache '
             'gc may reclaim it (discarding it: its state is unknown), '
             'unless acquire --lease says otherwise. 0 is forever.'),
    cfg.BoolOpt(
        'verify_cached',
        default=True,
        help='Before handing out a cached instance, check that it still '
             'answers (runs true); a dead one is discarded and replaced.'),
    cfg.Opt(
        'provision_timeout',
        type=Duration(),
        default=600,
        help='The most time provision.d may take for one instance (a '
             'duration: 90, 90s, 15m, 2h or 1d; 0 for no limit). A script '
             'still running then is stopped with its whole process group '
             'and the instance is undone. An instance still provisioning '
             'after twice this long is taken to be abandoned and is '
             'discarded by crcache gc, even if the process that started '
             'it still runs.'),
    cfg.StrOpt(
        'snapshot',
        default='none',
        choices=[('none', 'every instance runs provision.d'),
                 ('provisioned', 'the first instance runs provision.d and '
                  'is captured; later ones start from the capture')],
        help='Provision once: with provisioned, the first instance runs '
             'provision.d as usual and the backend then captures it (a '
             'docker source commits it to a local image); every later '
             'instance starts from that capture without running '
             'provision.d. The capture is made again when anything that '
             'shaped it changes (the base image, the source\'s keys, the '
             'content of a provision.d script); crcache gc removes old '
             'ones. Only source types that can capture accept it (docker '
             'does; local and ssh do not).'),
    cfg.StrOpt(
        'reset',
        default='none',
        choices=[('none', 'a released instance is cached as it is'),
                 ('recreate', 'a released instance is discarded and a '
                  'fresh one made in the background'),
                 ('snapshot', 'a released instance is restored to the '
                  'capture in place (no source type can yet)')],
        help='What release does to an instance that stays cached (see '
             'reserve): none keeps it as the last user left it; recreate '
             'discards it and makes a fresh one in the background (from '
             'the capture, with snapshot=provisioned), so the next '
             'acquire gets a pristine instance; snapshot is kept for source '
             'types that will restore an instance to its capture in place '
             '(none can yet: it is refused).'),
    cfg.Opt(
        'discard_timeout',
        type=Duration(),
        default=120,
        help='The most time discard.d may take for one instance (a '
             'duration; 0 for no limit). A script still running then is '
             'stopped with its whole process group and the instance is '
             'discarded anyway. An instance still being discarded after '
             'twice this long is taken to be abandoned and is discarded '
             'again by crcache gc.'),
]


STORE_OPTS = [
    cfg.StrOpt(
        'type',
        required=True,
        help='What sort of store this is: the name of an installed store '
             'type (crcache.stores entry point): sqlite (embedded, one '
             'machine) or postgresql (shared by many).'),
]


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """Return the common options for the sample configuration generator."""
    return [(None, COMMON_OPTS)]
