"""crcache's version, found without importing importlib.metadata.

``crcache --version`` is answered before anything heavy is imported, so
the installed distribution's version is read from the name of its
``.dist-info`` directory; importlib.metadata is the fallback.
"""

from __future__ import annotations

import functools
import os
import sys


@functools.lru_cache(maxsize=1)
def version_string() -> str:
    """Return the installed crcache version, or 'unknown'."""
    prefix = 'crcache-'
    for entry in sys.path:
        try:
            names = os.listdir(entry or '.')
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix) and name.endswith('.dist-info'):
                return name[len(prefix):-len('.dist-info')]
    try:
        from importlib import metadata
        return metadata.version('crcache')
    except Exception:  # running from a tree that was never installed
        return 'unknown'
