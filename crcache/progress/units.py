"""How progress shows quantities to people: sizes, durations, moments."""

from __future__ import annotations

import time


def size(count: float) -> str:
    """``count`` bytes for people: 512 B, 1.5 KiB, 200.0 MiB."""
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(count) < 1024 or unit == 'GiB':
            break
        count /= 1024
    if unit == 'B':
        return f'{count:.0f} B'
    return f'{count:.1f} {unit}'


def duration(seconds: float) -> str:
    """An elapsed time for people: 0.4s, 12s, 3m05s, 1h02m."""
    if seconds < 10:
        return f'{seconds:.1f}s'
    seconds = int(seconds)
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def stamp(when: float | None = None) -> str:
    """ISO 8601 UTC time, to the second: 2026-12-02T06:30:01Z."""
    from crcache import stamps
    return stamps.utc(time.time() if when is None else when, millis=False)
