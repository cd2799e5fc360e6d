"""Moments and durations, as crcache prints and reads them.

A moment is printed one way: ISO 8601, in UTC, with a ``Z``. Scripts read
these stamps (``status -v``'s ``since`` and ``lease-expires``, gc's
reasons), so they never depend on the reader's time zone. Milliseconds
are kept, truncated, so a stamp is never later than the moment it
records and a script can time what follows from it; progress lines, for
people, stop at the second.

A duration is read one way, in configuration and on the command line
alike: ``90``, ``90s``, ``15m``, ``2h`` or ``1d``.
"""

from __future__ import annotations

import re
import time

_DURATION = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$')
_UNIT = {'': 1, 's': 1, 'm': 60, 'h': 3600, 'd': 86400}


def utc(when: float, millis: bool = True) -> str:
    """Seconds since the epoch as ``2026-12-02T06:30:01.250Z`` (or, with
    ``millis`` False, ``2026-12-02T06:30:01Z``)."""
    seconds = int(when)
    stamp = time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))
    if not millis:
        return stamp + 'Z'
    return stamp + f'.{int((when - seconds) * 1000):03d}Z'


def parse_duration(text: str | float) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h`` or ``1d``."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f'{text!r} is not a duration (like 90, 90s, 15m, 2h or 1d)')
    return float(match.group(1)) * _UNIT[match.group(2)]

