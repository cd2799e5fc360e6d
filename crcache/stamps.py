"""The one way crcache prints a moment: ISO 8601, in UTC, with a ``Z``.

Scripts read these stamps (``status -v``'s ``since`` and
``lease-expires``, gc's reasons), so they never depend on the reader's
time zone. Milliseconds are kept, truncated, so a stamp is never later
than the moment it records and a script can time what follows from it.
"""

from __future__ import annotations

import time


def utc(when: float) -> str:
    """Seconds since the epoch as ``2026-12-02T06:30:01.250Z``."""
    seconds = int(when)
    millis = int((when - seconds) * 1000)
    return (time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))
            + f'.{millis:03d}Z')

