"""What the Python API reports: frozen snapshots of the state store."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ['CaptureInfo', 'GcAction', 'InstanceInfo', 'SourceInfo']


@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    """One instance as the state store knows it, at the time it was read.

    ``state`` is ``provisioning``, ``cached``, ``in-use`` or
    ``discarding``. ``parent`` names the pool instance holding this one,
    ``child`` the instance a pool instance wraps. ``holder`` describes the
    process that acquired it (``user``, ``host``, ``machine``, ``pid``,
    ``ppid``, ``since``, ``argv``), as ``crcache status -v`` shows it.
    Times are seconds since the epoch.
    """

    name: str
    source: str
    state: str
    concurrency: int | None = None
    store: str | None = None
    parent: str | None = None
    child: str | None = None
    holder: Mapping[str, Any] | None = dataclasses.field(
        default=None, compare=False)
    lease_expires: float | None = None
    created: float = 0.0
    updated: float = 0.0

    @classmethod
    def _of(cls, inst: Any) -> 'InstanceInfo':
        """From the store's record."""
        return cls(inst.name, inst.source, inst.state, inst.concurrency,
                   inst.store, inst.parent, inst.child,
                   dict(inst.holder) if inst.holder else None,
                   inst.lease_expires, inst.created, inst.updated)


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """One source and how many instances it has in each state.

    ``type`` is its source type; ``maximum`` the most instances it may
    have at once (0: no limit); ``reserve`` how many it keeps cached;
    ``children`` the sources a pool draws from; ``store`` the state store
    keeping its instances. ``error`` says why the source cannot be used
    (its configuration is broken, its store cannot be reached, it is no
    longer configured), else None; the fields it makes unknown are None.
    """

    name: str
    type: str | None
    maximum: int | None
    reserve: int | None
    children: tuple[str, ...] = ()
    store: str | None = None
    error: str | None = None
    cached: int = 0
    in_use: int = 0
    provisioning: int = 0
    discarding: int = 0

    @property
    def live(self) -> int:
        """Every instance it has, whatever its state."""
        return self.cached + self.in_use + self.provisioning + self.discarding

    @property
    def available(self) -> int | None:
        """Instances an acquire could get now; None when unlimited."""
        if not self.maximum:
            return None
        return self.cached + max(0, self.maximum - self.live)

    @classmethod
    def _of(cls, status: Any) -> 'SourceInfo':
        return cls(status.name, status.type, status.maximum, status.reserve,
                   tuple(status.children), status.store, status.error,
                   status.cached, status.in_use, status.provisioning,
                   status.discarding)


@dataclasses.dataclass(frozen=True)
class GcAction:
    """One thing a garbage collection pass did or found.

    ``action`` is ``discarded``, ``kept`` (cannot be discarded now; the
    reason says why), ``forgotten``, ``leaked`` (a backend resource the
    store does not know; ``instance`` is its id), ``destroyed`` (a leak,
    with ``leaks=True``), ``dropped`` (a capture, by
    :meth:`Client.drop_snapshot`) or ``failed``. ``instance`` is None for
    a row about a whole source, and for captures (the reason names
    them).
    """

    instance: str | None
    source: str
    action: str
    reason: str


@dataclasses.dataclass(frozen=True)
class CaptureInfo:
    """A source's capture (``snapshot = provisioned``), as recorded.

    ``state`` is ``ready`` (new instances start from it) or
    ``capturing`` (being made). ``fingerprint`` hashes what shaped it
    (the base image, the source's keys, provision.d's content);
    ``capture`` is the backend's id for it (a docker image id).
    ``current`` says whether the source would start from it now (False:
    stale, removed by the next gc), when it was checked, else None.
    ``created`` is seconds since the epoch.
    """

    source: str
    state: str
    fingerprint: str
    capture: str | None
    created: float
    current: bool | None = None
