"""The errors users see.

Every error crcache reports on purpose is a :class:`CrcacheError`; its
``str()`` is the single line printed on stderr, so each subclass builds a
message that names the file, key, source or instance at fault.
"""

from __future__ import annotations

import difflib
import subprocess
from collections.abc import Iterable, Sequence


class CrcacheError(Exception):
    """Base class for every error crcache reports to its user."""


def shown(text: str) -> str:
    """``text`` as it may appear in a one-line message: quoted (with
    escapes) if it holds a newline or another control character."""
    if text.isprintable():
        return text
    return repr(text)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ''."""
    match = difflib.get_close_matches(word, list(candidates), n=1)
    return f' (did you mean {match[0]!r}?)' if match else ''


class ConfigError(CrcacheError):
    """A configuration file or value is wrong.

    The message always starts with the path of the file at fault.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f'{shown(path)}: {message}')


class UnknownSource(CrcacheError):
    """A source name that no configuration root defines."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        known = sorted(known)
        super().__init__(
            f'unknown source {name!r}{did_you_mean(name, known)}; '
            f"configured sources: {', '.join(map(shown, known)) or 'none'}")


class UnknownInstance(CrcacheError):
    """An instance name the state store does not hold."""

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name
        super().__init__(
            f'unknown instance {name!r}{did_you_mean(name, known)}')


class InstanceStateError(CrcacheError):
    """An instance exists but is not in a state that allows the action."""


class InvalidName(CrcacheError):
    """A name or path that is refused before it reaches a shell or a disk."""


class CapacityError(CrcacheError):
    """A source cannot supply the instances asked for."""


class StoreError(CrcacheError):
    """The state store cannot be opened, read or written."""


class SourceError(CrcacheError):
    """A source's backend failed (provisioning, discarding, running)."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"source '{source}': {message}")


class CaptureGone(SourceError):
    """A source's capture (snapshot) no longer exists on its backend."""


class CaptureInUse(SourceError):
    """A capture cannot be removed yet: instances still use it."""


class CopyError(CrcacheError):
    """A copy could not be made; nothing was written past the fault."""


class InstancePathError(CopyError):
    """A path on an instance is missing, refused or cannot be written.

    Drivers and the shared copy code raise it with the path as the user
    gave it; the cache layer, which knows the instance's name, adds it
    (:meth:`on`), so the user reads ``INSTANCE:PATH: reason`` exactly as
    they wrote the location.
    """

    def __init__(self, path: str, reason: str,
                 instance: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.instance = instance
        where = f'{instance}:{path}' if instance else path
        super().__init__(f'{where}: {reason}')

    def on(self, instance: str) -> 'InstancePathError':
        """The same error, naming the instance the path is on."""
        if self.instance:
            return self
        return InstancePathError(self.path, self.reason, instance)


class PartialFailure(CrcacheError):
    """Some items of a multi-item operation failed; the others were done."""

    def __init__(self, verb: str, total: int,
                 failures: list[tuple[str, BaseException]]) -> None:
        self.failures = failures
        details = '; '.join(f'{name}: {err}' for name, err in failures)
        noun = 'instance' if total == 1 else 'instances'
        super().__init__(
            f'{len(failures)} of {total} {noun} failed to {verb}: {details}')


class CommandFailed(CrcacheError, subprocess.CalledProcessError):
    """A command run with ``check=True`` exited with a non-zero status.

    Raised by :meth:`crcache.api.Instance.run`. It is also a
    :class:`subprocess.CalledProcessError`, with the same attributes
    (``returncode``, ``cmd``, ``output``/``stdout`` and ``stderr``, the
    latter two None unless captured), so code written for
    ``subprocess.run(..., check=True)`` handles it unchanged;
    ``instance`` names the instance the command ran on.
    """

    def __init__(self, returncode: int, cmd: str | Sequence[str],
                 output: bytes | None = None, stderr: bytes | None = None,
                 instance: str | None = None) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, cmd,
                                               output, stderr)
        self.instance = instance

    def __str__(self) -> str:
        import shlex
        cmd = self.cmd if isinstance(self.cmd, str) else \
            shlex.join(self.cmd)
        if len(cmd) > 60:
            cmd = cmd[:57] + '...'
        where = f'{self.instance}: ' if self.instance else ''
        return f'{where}command {cmd!r} exited with status {self.returncode}'

    def __reduce__(self) -> tuple:
        return (type(self), (self.returncode, self.cmd, self.output,
                             self.stderr, self.instance))
