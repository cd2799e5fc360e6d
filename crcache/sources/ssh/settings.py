"""An ssh source's connection settings, shared with its holder.

What decides how a host is reached and trusted, as one value that the
source, the connection and the connection holder (a process of its own,
which gets them as JSON) all read, and that names the holder's socket.
This module imports nothing heavy: the holder's client half uses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Settings:
    """A source's ssh keys as configured, before ~/.ssh/config applies.

    Everything here decides how the host is reached and trusted, so it
    also names the connection holder: change any of it (or edit
    ~/.ssh/config) and the next command gets a fresh connection.
    """

    source: str
    host: str
    port: int | None
    user: str | None
    key: str | None
    known_hosts: str
    policy: str
    timeout: float
    ssh_config: str
    ssh_config_stamp: str

    @property
    def label(self) -> str:
        user = f'{self.user}@' if self.user else ''
        return f'{user}{self.host}:{self.port or 22}'

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> 'Settings':
        return cls(**json.loads(text))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return 'absent'
    return f'{st.st_mtime_ns}:{st.st_size}:{st.st_ino}'


def warner(settings: Settings, fd: int) -> Callable[[str], None]:
    """A one-line warning about ``settings``' host, written to ``fd``."""

    def warn(message: str) -> None:
        from crcache.transport import fdio
        line = (f"crcache: source '{settings.source}': {settings.label}: "
                f'{message}\n')
        try:
            fdio.write_all(fd, line.encode(errors='replace'))
        except OSError:
            pass

    return warn
