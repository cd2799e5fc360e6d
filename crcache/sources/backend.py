"""Backend sources: types that make, use and destroy real resources.

A :class:`BackendSource` provisions and discards resources (a process on
this machine, an ssh host, a container), runs commands on them and
copies files, identifying each by the reference
(:data:`crcache.sources.base.Ref`) it returned when it made it.
Everything but :meth:`~BackendSource.provision`,
:meth:`~BackendSource.discard` and :meth:`~BackendSource.run` has a
default built on ``run``. Plugins import it from
:mod:`crcache.sources.base`.
"""

from __future__ import annotations

import abc
import threading
from typing import ClassVar

from crcache import exceptions
from crcache.sources.source import Source
from crcache.transport import runner

Ref = runner.Ref


class BackendSource(Source):
    """A source that makes, uses and destroys real resources.

    A driver implements :meth:`provision`, :meth:`discard` and
    :meth:`run`; everything else has a default built on :meth:`run`.
    Streams are OS file descriptors: whatever the backend, bytes move
    between the caller's descriptors and the instance's command unchanged.
    """

    #: The state store's id, set by the cache on every backend source it
    #: loads, before any other call. Label what :meth:`provision` makes
    #: with it (and :attr:`name`, and the instance's name) so that
    #: :meth:`list_owned` can find this store's resources and no one
    #: else's; it is the same value crcache passes to :meth:`list_owned`.
    #: Empty when a source is used outside a cache.
    owner: str = ''
    #: Whether the backend can capture a provisioned instance and start
    #: new instances from the capture (``snapshot = provisioned``): then
    #: implement :meth:`snapshot_basis`, :meth:`take_capture`,
    #: :meth:`provision_from`, :meth:`list_captures` and
    #: :meth:`drop_capture`. ``snapshot = provisioned`` on a type that
    #: cannot is a configuration error naming the key.
    supports_snapshot: ClassVar[bool] = False

    @abc.abstractmethod
    def provision(self, names: list[str]) -> dict[str, Ref]:
        """Create one resource per crcache instance name.

        crcache calls it with one name at a time, from up to 8 threads
        at once (an ``acquire -n 8``); accept any number all the same.
        The instance's row is in the store before this is called, so a
        crash at any point leaves a trace that ``crcache gc`` follows up
        with :meth:`discard`.

        :param names: crcache instance names (``box-3``), each new: a
            name is never reused while the store remembers the source.
            Label each resource with its name, :attr:`name` and
            :attr:`owner` where the backend can (see :meth:`list_owned`).
        :returns: a :data:`Ref` for every name, in a dict keyed by name.
        :raises ~crcache.exceptions.SourceError: when the backend refuses
            or fails. There is no way to return references while raising:
            destroy what was made for the names before raising, or make
            sure :meth:`discard` finds it from the name alone, since
            crcache then calls ``discard({name: {}})`` for every name it
            got no reference for.
        """

    @abc.abstractmethod
    def discard(self, refs: dict[str, Ref]) -> None:
        """Destroy resources by name; one that is already gone is success.

        Called once per instance (``{name: ref}``), possibly from several
        threads at once, and called again by ``crcache gc`` for an
        instance whose discarding was interrupted: it must be idempotent.

        :param refs: instance name to the reference :meth:`provision`
            returned, or ``{}`` when none was recorded (provisioning
            failed, or crashed before it returned): then find what was
            made for the name by its labels, if the backend has them.
        :raises ~crcache.exceptions.SourceError: when a resource could not
            be destroyed (the instance stays ``discarding`` for gc to
            retry). With several references, try every one, then raise
            :class:`~crcache.exceptions.PartialFailure` for the failed.
        """

    @abc.abstractmethod
    def run(self, ref: Ref, argv: list[str], stdin: int, stdout: int,
            stderr: int) -> int:
        """Run ``argv`` on the resource and return its exit status.

        :param ref: the instance's reference.
        :param argv: a non-empty ``argv`` becomes one shell command line
            with :func:`crcache.transport.cmdline.join` (to be
            ``crcache.transport.cmdline.join``), run by a POSIX shell on
            the resource (``sh -c LINE``, or the login shell as ``ssh
            host LINE`` does): one word passes unchanged, several are
            quoted, leading ``NAME=value`` words stay assignments. An
            empty ``argv`` starts the resource's interactive shell,
            reading commands from ``stdin`` when it is not a terminal.
        :param stdin: a descriptor to read the command's input from until
            end of file; the command sees end of file when it does.
        :param stdout: a descriptor for the command's standard output.
        :param stderr: a descriptor for its standard error, kept apart
            from standard output.
        :returns: the command's exit status; 128+N when it was killed by
            signal N.
        :raises ~crcache.exceptions.SourceError: when the command could
            not be run at all (the resource is gone, the backend is
            unreachable); never for a command that ran and failed.

        The descriptors may be pipes, terminals, regular files (``cp``
        hands a file's own descriptor over, and watches its offset to
        show progress) or ``/dev/null``; they belong to the caller: do
        not close them. Bytes pass unchanged both ways, however many
        (gigabytes) and whatever they are; a reader that stops early
        (``crcache run x yes | head -1``) must end the command, not hang.

        Signals: ``crcache run`` calls this from its main thread. A
        SIGINT, SIGTERM, SIGHUP or SIGQUIT reaching crcache meanwhile
        must end the command on the resource, its whole process group,
        within a few seconds, and leave no process of it behind; return
        then (128+N), and crcache exits 128+N (130 for SIGINT, 143 for
        SIGTERM). Install handlers for the duration of the call (only the
        main thread can: ``signal.signal`` raises ValueError in others)
        and restore the previous ones before returning. Several calls
        may run at once on one resource, from several processes.
        """

    def concurrency(self, ref: Ref) -> int:
        """Return how many parallel jobs the resource can take.

        Called once, right after :meth:`provision`, unless the source's
        ``concurrency`` key is set; the result is stored with the
        instance. The default asks the resource for its CPU count over
        :meth:`run`.

        :returns: 1 or more.
        :raises ~crcache.exceptions.SourceError: when it cannot tell.
        """
        status, out, err = self.capture(
            ref, ['nproc 2>/dev/null || getconf _NPROCESSORS_ONLN'])
        try:
            return max(1, int(out.split()[0]))
        except (IndexError, ValueError):
            raise exceptions.SourceError(
                self.name, f'could not read the CPU count (exit {status}): '
                f'{err.decode(errors="replace").strip()[-200:]}')

    def is_alive(self, ref: Ref, timeout: float = 10.0) -> bool:
        """Whether the resource still answers; checked before reuse.

        A cached instance is checked before it is handed out again
        (unless its source sets ``verify_cached = false``); a dead one is
        discarded and replaced. Must not raise, and must not take much
        longer than ``timeout`` seconds.

        The default runs ``true`` in a thread of its own and waits at
        most ``timeout`` seconds.
        """
        result: list[int] = []

        def probe() -> None:
            try:
                result.append(self.capture(ref, ['true'])[0])
            except Exception:
                result.append(-1)

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout)
        return result == [0]

    def list_owned(self, store_id: str) -> dict[str, str | None] | None:
        """Backend resources labelled as this store's, if it can tell.

        ``crcache gc`` calls it on every pass to find leaks: resources
        that a crash left behind and that the store no longer knows.
        List only what carries both ``store_id`` and this source's
        :attr:`name`: other stores (another user, a deleted state file)
        and other sources may share the backend.

        :param store_id: the state store's id; always the value of
            :attr:`owner` when crcache calls it (it was an argument
            before :attr:`owner` existed; either may be used).
        :returns: ``{resource id: crcache instance name}`` (the name None
            when the label is missing), or None when the backend has no
            way to find them (so leaks cannot be looked for, the
            default). The ids are shown to the user and given back to
            :meth:`destroy_owned`.
        :raises ~crcache.exceptions.SourceError: when the backend cannot
            be asked (reported for this source; gc goes on).
        """
        return None

    def destroy_owned(self, resource_id: str) -> None:
        """Destroy a resource found by :meth:`list_owned` (a leak).

        Called by ``crcache gc --leaks`` for each resource whose instance
        the store does not know. One that is already gone is success.

        :param resource_id: an id :meth:`list_owned` returned.
        :raises ~crcache.exceptions.SourceError: when it cannot be
            destroyed.
        """
        raise NotImplementedError(
            f'{type(self).__name__} cannot list resources, so it has no '
            'leaks to destroy')

    def validate(self) -> list[tuple[str, str]]:
        problems = super().validate()
        kind = self.conf.type
        if self.conf.snapshot != 'none' and not self.supports_snapshot:
            problems.append((
                'snapshot',
                f'snapshot={self.conf.snapshot} needs a source type that '
                f'can capture instances, and type {kind} cannot (docker '
                'can); use snapshot=none'))
        if self.reset_mode == 'snapshot':
            # The contract has no in-place restore yet: no backend crcache
            # knows can put a container or a host back to a capture
            # without making it anew, which is what recreate does.
            problems.append((
                'reset',
                f'reset=snapshot needs a source type that can restore an '
                f'instance in place, and type {kind} cannot (no type can '
                'yet); use reset=recreate, which makes a fresh one (from '
                'the capture, with snapshot=provisioned)'))
        if self.reset_mode != 'none' and not self.reserve:
            problems.append((
                'reset',
                f'reset={self.reset_mode} acts on released instances that '
                'stay cached, and reserve=0 caches none: set reserve too'))
        return problems

    # -- snapshots (supports_snapshot) --------------------------------------

    def snapshot_basis(self) -> dict[str, str]:
        """What the backend has that shapes a provisioned instance.

        crcache's fingerprint of a capture covers the source's type, its
        keys (but its ``local_keys``) and the content of every
        provision.d script; this adds what only the backend knows, such
        as the id the base image has now (a tag may move). A change
        here makes the next acquire provision afresh and capture again.
        It may ask the backend (it is called before each provisioning
        and by gc), and raises :class:`~crcache.exceptions.SourceError`
        when it cannot tell.
        """
        return {}

    def take_capture(self, ref: Ref, fingerprint: str) -> str:
        """Capture the provisioned resource; return the capture's id.

        Called once provision.d has run, before anyone is handed the
        instance, by the one process that claimed the capture of this
        ``fingerprint`` (hex digits). Label the capture with
        :attr:`owner`, :attr:`name` and ``fingerprint`` so that
        :meth:`list_captures` finds it even if this process is killed
        before it records the id. The resource itself must be left as
        it was, and usable.

        :raises ~crcache.exceptions.SourceError: when it cannot.
        """
        raise NotImplementedError(
            f'{type(self).__name__} cannot capture instances')

    def provision_from(self, names: list[str],
                       capture: str) -> dict[str, Ref]:
        """:meth:`provision`, starting each resource from ``capture``.

        provision.d is not run for them: they start provisioned.

        :raises ~crcache.exceptions.CaptureGone: when the capture no
            longer exists (removed behind crcache's back): crcache then
            forgets it and provisions afresh.
        """
        raise NotImplementedError(
            f'{type(self).__name__} cannot start instances from captures')

    def list_captures(self, store_id: str) -> dict[str, str]:
        """This store's captures of this source: ``{id: fingerprint}``.

        Everything labelled with ``store_id`` and :attr:`name`, whether
        crcache recorded it or not (gc drops the stale ones and lists the
        unrecorded ones as leaks).
        """
        return {}

    def drop_capture(self, capture: str) -> None:
        """Remove a capture; one already gone is success.

        :raises ~crcache.exceptions.CaptureInUse: while instances still
            use it (crcache tries again at a later gc).
        :raises ~crcache.exceptions.SourceError: when it cannot be
            removed for another reason.
        """
        raise NotImplementedError(
            f'{type(self).__name__} has no captures to drop')

    def copy_in(self, ref: Ref, src: str, dst: str, recursive: bool) -> None:
        """Copy local ``src`` to ``dst`` on the resource (like ``cp -p``).

        :param src: a local path: a file, or with ``recursive`` a
            directory.
        :param dst: a path on the resource as the user wrote it; a
            relative one is relative to the directory :meth:`run`'s
            commands start in. An existing directory receives ``src``
            under its own name; anything else is the new name.
        :param recursive: whether directories may be copied (``-r``).
        :raises ~crcache.exceptions.InstancePathError: for a path on the
            resource (``dst``'s directory missing), with the path as
            given.
        :raises ~crcache.exceptions.CopyError: for a local path.

        Permission bits and modification times are kept, owners and
        set-id bits are not. The default streams a tar archive into ``tar
        -x`` run on the resource (``crcache.transport.tarcopy``), so every
        backend that can run commands can copy; override it where the
        backend has something faster, with the same results.
        """
        from crcache.transport import tarcopy
        tarcopy.copy_in(self, ref, src, dst, recursive)

    def copy_out(self, ref: Ref, src: str, dst: str,
                 recursive: bool) -> None:
        """Copy ``src`` on the resource to local ``dst`` (like ``cp -p``).

        :param src: a path on the resource as the user wrote it (relative
            to the directory :meth:`run`'s commands start in).
        :param dst: a local path: an existing directory receives ``src``
            under its own name; anything else is the new name.
        :param recursive: whether directories may be copied (``-r``).
        :raises ~crcache.exceptions.InstancePathError: for ``src``
            missing, or a directory without ``recursive`` (``is a
            directory (use -r to copy directories)``), or an archive
            member refused.
        :raises ~crcache.exceptions.CopyError: for a local path.

        What comes from the resource is untrusted: nothing may be
        written outside ``dst``, whatever links or names it holds. The
        default runs ``tar -c`` on the resource and extracts the stream
        locally with ``crcache.transport.tarcopy``, which refuses any
        member that would land outside ``dst``; an override must extract
        through the same code (or be as careful).
        """
        from crcache.transport import tarcopy
        tarcopy.copy_out(self, ref, src, dst, recursive)

    def capture(self, ref: Ref, argv: list[str],
                input: bytes = b'') -> tuple[int, bytes, bytes]:
        """Run ``argv`` with ``input`` on stdin; return (status, out, err).

        A convenience over :meth:`run` for short commands whose output
        fits in memory.
        """
        return runner.capture(
            lambda i, o, e: self.run(ref, argv, i, o, e), input)
