"""Example crcache source types, packaged as a third party would.

* ``dirs`` (:mod:`crcache_dirs.dirs`): each instance a fresh directory on
  this machine;
* ``roundrobin`` (:mod:`crcache_dirs.roundrobin`): a pool that draws its
  instances from its sources in turn.

Both are written against version 1 of crcache's source contract
(:mod:`crcache.sources.base`) and use nothing else of crcache's but its
errors and the function that turns a ``crcache run`` argv into a command
line, so they load and behave exactly as crcache's own types.
"""

from crcache.sources import base

#: The version of crcache's source contract these types implement.
API_VERSION = 1

if base.API_VERSION != API_VERSION:
    # Refusing to load shows as "source type 'dirs' is installed but
    # failed to load: ..." wherever a source uses it.
    raise ImportError(
        f'crcache-dirs implements crcache source API version '
        f'{API_VERSION}, but this crcache has version {base.API_VERSION}')
