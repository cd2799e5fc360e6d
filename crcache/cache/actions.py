"""What a garbage collection pass (or a drop) did or found, row by row.

Shared by :mod:`crcache.cache.gc` (instances) and
:mod:`crcache.cache.snapshots` (captures), which report alike.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Action:
    """One thing a pass did or found."""

    #: None when the row is about a source, not an instance.
    instance: str | None
    source: str
    action: str
    reason: str
