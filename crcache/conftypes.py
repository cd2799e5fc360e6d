"""Value types of crcache's configuration keys, beyond oslo.config's.

Shared by every definition file (sources and stores, and plugins'
keys): a duration is written ``90``, ``90s``, ``15m``, ``2h`` or ``1d``
and read as seconds (see :func:`crcache.stamps.parse_duration`).
"""

from __future__ import annotations

from crcache import lazyimports

# Before oslo.config is imported: see crcache.lazyimports.
lazyimports.defer(*lazyimports.UNUSED_BY_CRCACHE)

from oslo_config import types  # noqa: E402

from crcache.stamps import parse_duration  # noqa: E402


class Duration(types.ConfigType):
    """An oslo.config type: a duration, read as seconds."""

    def __init__(self) -> None:
        super().__init__(type_name='duration value')

    def __call__(self, value: str | float) -> float:
        return parse_duration(value)

    def _formatter(self, value: float) -> str:
        return f'{value:g}'
