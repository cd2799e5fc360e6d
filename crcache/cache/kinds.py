"""The one place the cache tells source kinds apart.

A source either makes resources itself
(:class:`~crcache.sources.base.BackendSource`) or draws each of its
instances from other sources (:class:`~crcache.sources.base.LayeredSource`,
whose ``children`` name them). The cache asks these functions rather
than testing classes anywhere else, so the two kinds are told apart here
only.
"""

from __future__ import annotations

from crcache import exceptions
from crcache.sources import base


def backend(source: base.Source) -> base.BackendSource | None:
    """``source`` if it makes resources itself, else None."""
    return source if isinstance(source, base.BackendSource) else None


def layered(source: base.Source) -> base.LayeredSource | None:
    """``source`` if it draws its instances from others, else None."""
    return source if isinstance(source, base.LayeredSource) else None


def require_backend(source: base.Source, instance: str
                    ) -> base.BackendSource:
    """``source`` as the backend doing ``instance``'s work, or an error."""
    found = backend(source)
    if found is None:
        raise exceptions.StoreError(
            f"instance '{instance}' belongs to '{source.name}', which "
            'cannot run commands')
    return found
