"""Instances a client holds, and the acquisitions that took them."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Union, overload

from crcache import exceptions
from crcache.api import streams
from crcache.api.results import InstanceInfo
from crcache.api.streams import Input, Output

if TYPE_CHECKING:
    from crcache.cache import Cache

#: A path, as ``os.fspath`` takes it.
PathLike = Union[str, 'os.PathLike[str]']


class Client(Protocol):
    """What an instance needs of the :class:`crcache.Client` that made
    it (declared here, so that this module does not import that one)."""

    def _opened(self) -> Cache: ...

    def release(self, names: str | Iterable[str], *,
                force: bool = False) -> None: ...


class Instance:
    """One acquired instance: run commands on it, copy files, release it.

    Made by :meth:`Client.acquire` (in an :class:`Acquisition`) or
    :meth:`Client.instance`. Different instances may be used from
    different threads at once; so may one instance, from several
    threads or processes, as far as its ``concurrency`` allows.
    """

    def __init__(self, client: Client, name: str,
                 source: str | None = None,
                 concurrency: int | None = None) -> None:
        self._client = client
        self._name = name
        self._source = source
        self._concurrency = concurrency
        self._known = source is not None
        self._released = False

    @property
    def name(self) -> str:
        """Its name, as ``crcache`` commands take it (``pool-0``)."""
        return self._name

    @property
    def source(self) -> str:
        """The name of the source it was acquired from."""
        self._learn()
        assert self._source is not None
        return self._source

    @property
    def concurrency(self) -> int | None:
        """How many jobs it takes in parallel (its CPUs, unless its
        source's ``concurrency`` says otherwise)."""
        self._learn()
        return self._concurrency

    def _learn(self) -> None:
        if not self._known:
            inst = self._client._opened().instance(self._name)
            self._source = inst.source
            self._concurrency = inst.concurrency
            self._known = True

    def info(self) -> InstanceInfo:
        """What the state store says of it now."""
        return InstanceInfo._of(self._client._opened().instance(self._name))

    def __repr__(self) -> str:
        return f'<crcache.Instance {self._name}>'

    def _usable(self) -> 'Cache':
        if self._released:
            raise exceptions.InstanceStateError(
                f"instance '{self._name}' was released by this handle; "
                'acquire another')
        return self._client._opened()

    # -- running --------------------------------------------------------

    def run(self, argv: str | Sequence[str], *, stdin: Input = None,
            stdout: Output = None, stderr: Output = None,
            capture_output: bool = False, check: bool = False,
            cwd: PathLike | None = None,
            env: Mapping[str, str] | None = None
            ) -> 'subprocess.CompletedProcess[Any]':
        """Run a command on the instance, like :func:`subprocess.run`.

        :param argv: a list of words, each passed to the command exactly
            (the instance's shell is handed them quoted), or a string,
            which is a shell command line of its own (``'make && make
            check'``). An empty list starts the instance's shell, which
            reads its commands from ``stdin``.
        :param stdin: None (this process's standard input), bytes to
            feed it (then end of file), a descriptor, a file object with
            a ``fileno()``, or ``subprocess.DEVNULL``.
        :param stdout: None (this process's standard output), a
            descriptor, a file object, ``subprocess.DEVNULL`` or
            ``subprocess.PIPE`` (to capture it as bytes).
        :param stderr: the same, or ``subprocess.STDOUT`` to send it
            where ``stdout`` goes.
        :param capture_output: capture both (as ``stdout=PIPE,
            stderr=PIPE``).
        :param check: raise :class:`~crcache.exceptions.CommandFailed`
            (also a :class:`subprocess.CalledProcessError`) when the
            status is not 0.
        :param cwd: the directory on the instance to run in (default: the
            caller's on a local instance, the home directory on a remote
            one).
        :param env: variables set on the instance for the command, on top
            of the environment its shell starts with (which is kept).
        :returns: a :class:`subprocess.CompletedProcess` whose ``args``
            is ``argv``, ``returncode`` the command's exit status
            (128+N when it died of signal N, as a shell says), and
            ``stdout``/``stderr`` the bytes captured, else None.
        :raises ~crcache.exceptions.InstanceStateError: the instance is
            not acquired (or was released through this handle).
        :raises ~crcache.exceptions.SourceError: the command could not
            be run at all (never for a command that ran and failed).
        """
        if isinstance(argv, (bytes, bytearray)):
            raise TypeError('argv must be a string or a list of strings')
        if isinstance(argv, str):
            words = [argv]
        else:
            argv = list(argv)
            for word in argv:
                if not isinstance(word, str):
                    raise TypeError(
                        f'argv words must be strings, not {word!r}')
            words = [shlex.join(argv)] if argv else []
        if env:
            from crcache.transport import cmdline
            if not words:
                raise ValueError('env needs a command (argv is empty)')
            words = [cmdline.with_environment(env, words[0])]
        if cwd is not None:
            from crcache.transport import cmdline
            if not words:
                raise ValueError('cwd needs a command (argv is empty)')
            words = [cmdline.in_directory(os.fspath(cwd), words[0])]
        if capture_output:
            if stdout is not None or stderr is not None:
                raise ValueError('stdout and stderr arguments may not be '
                                 'used with capture_output')
            stdout = stderr = subprocess.PIPE
        cache = self._usable()
        status, out, err = streams.with_streams(
            lambda i, o, e: cache.run(self._name, words, i, o, e),
            stdin, stdout, stderr)
        result = subprocess.CompletedProcess(argv, status, out, err)
        if check and status:
            raise exceptions.CommandFailed(status, argv, out, err,
                                           instance=self._name)
        return result

    # -- files ----------------------------------------------------------

    def copy_in(self, local: PathLike, remote: str,
                recursive: bool = False) -> None:
        """Copy the local file (or, with ``recursive``, directory)
        ``local`` to ``remote`` on the instance, as ``cp -p`` would.

        A relative ``remote`` starts in the directory commands run in;
        an existing directory receives ``local`` under its own name.
        """
        self._usable().copy_in(self._name, os.fspath(local), remote,
                               recursive)

    def copy_out(self, remote: str, local: PathLike,
                 recursive: bool = False) -> None:
        """Copy ``remote`` on the instance to the local ``local``.

        What the instance sends is untrusted: nothing is written outside
        ``local``, whatever links or names it holds.
        """
        self._usable().copy_out(self._name, remote, os.fspath(local),
                                recursive)

    def place_files(self, paths: Iterable[PathLike]) -> None:
        """Make local files exist at the same absolute paths on the
        instance (a test runner's list of test ids named in a command);
        nothing to do on an instance of this machine."""
        self._usable().place_files(self._name,
                                   [os.fspath(p) for p in paths])

    def release(self, *, force: bool = False) -> None:
        """Release it: cached if its source's ``reserve`` wants it,
        discarded otherwise. This handle cannot be used afterwards."""
        self._usable().release([self._name], force=force)
        self._released = True


class Acquisition(Sequence[Instance]):
    """The instances one :meth:`Client.acquire` took: a sequence of
    :class:`Instance`, released together by :meth:`release`, or on
    leaving a ``with`` block (whether it raised or not)."""

    def __init__(self, client: Client, instances: list[Instance]) -> None:
        self._client = client
        self._instances = list(instances)
        self._lock = threading.Lock()

    @overload
    def __getitem__(self, index: int) -> Instance: ...

    @overload
    def __getitem__(self, index: slice) -> list[Instance]: ...

    def __getitem__(self, index: int | slice) -> Instance | list[Instance]:
        return self._instances[index]

    def __len__(self) -> int:
        return len(self._instances)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self._instances)

    def __repr__(self) -> str:
        return f'<crcache.Acquisition {" ".join(self.names)}>'

    @property
    def names(self) -> list[str]:
        """The instances' names."""
        return [inst.name for inst in self._instances]

    def release(self, *, force: bool = False) -> None:
        """Release every instance not released yet; failures are raised
        together once every other one was released."""
        with self._lock:
            todo = [i for i in self._instances if not i._released]
            for inst in todo:
                inst._released = True
        if todo:
            self._client.release([i.name for i in todo], force=force)

    def __enter__(self) -> 'Acquisition':
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.release()
            return
        try:
            self.release()
        except exceptions.CrcacheError as err:
            # The block's own error is the one to see; this one says
            # what it left behind.
            note = f'crcache: releasing {" ".join(self.names)}: {err}'
            if hasattr(exc, 'add_note'):
                exc.add_note(note)
            import logging
            logging.getLogger(__name__).warning('%s', note)
