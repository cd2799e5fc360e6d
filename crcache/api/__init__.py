"""crcache's Python API: acquire instances, run on them, copy, release.

Everything the ``crcache`` command does, for programs that would rather
not run it and parse its output: test runners, build tools, notebooks::

    import crcache

    client = crcache.Client()
    with client.acquire('pool', count=3) as instances:
        for inst in instances:
            result = inst.run(['make', 'check'], capture_output=True)
            print(inst.name, result.returncode, result.stdout)
    # released here, even when the block raised

A :class:`Client` finds the configuration and the state stores as the
command line does (``CRCACHE_CONFIG_PATH``, else ``$XDG_CONFIG_HOME/crcache``
and ``./.crcache``; state under ``$XDG_CACHE_HOME/crcache``), in
``os.environ`` or in the environment it is given, and shares them with
every ``crcache`` command and every other client: whichever process
asks, an instance is handed to one holder at a time, and an acquisition
gets everything it asked for or nothing. The command line itself goes
through this module (``crcache acquire``, ``release``, ``run``, ``cp``,
``fill`` and ``gc``), so both behave the same.

Threads
    A client may be used from several threads at once, each working on
    instances of its own: running commands, copying files, acquiring and
    releasing. Only a command run from the main thread is passed the
    signals the process receives (SIGINT, SIGTERM, SIGHUP, SIGQUIT), as
    ``crcache run`` passes them: the first Ctrl-C goes to the command,
    which may stop as it likes, a second one gives up on it with
    :class:`KeyboardInterrupt`. Python lets no other thread install
    signal handlers.

Processes
    Any number of processes may use the same instances and sources at
    once, each with a client of its own. A client carried into a child
    process by ``fork`` (``multiprocessing``) opens the stores afresh
    there, as a new client would.

Errors
    Failures crcache reports are :class:`~crcache.exceptions.CrcacheError`
    subclasses (see :mod:`crcache.exceptions`), whose ``str()`` is the
    one line the command line prints: among them
    :class:`~crcache.exceptions.UnknownSource`,
    :class:`~crcache.exceptions.ConfigError`,
    :class:`~crcache.exceptions.CapacityError` (no room, and ``wait``
    not given or run out), :class:`~crcache.exceptions.UnknownInstance`,
    :class:`~crcache.exceptions.InstanceStateError` (not acquired, or
    released), :class:`~crcache.exceptions.SourceError` (the backend
    failed), :class:`~crcache.exceptions.CopyError` and
    :class:`~crcache.exceptions.InstancePathError`,
    :class:`~crcache.exceptions.PartialFailure` (some of several
    releases failed; the others were done),
    :class:`~crcache.exceptions.StoreError` and
    :class:`~crcache.exceptions.CommandFailed` (``run(..., check=True)``).
    Arguments of the wrong type or value raise :class:`TypeError` or
    :class:`ValueError`, as elsewhere in Python.

Stability
    What ``crcache.__all__`` lists is the API. It is versioned with the
    package (``crcache.__version__``): a change to it comes with a
    release note, and nothing is removed or changed incompatibly without
    a release that first deprecates it.
"""

from __future__ import annotations

from crcache.api.client import Client
from crcache.api.instances import Acquisition, Instance
from crcache.api.results import CaptureInfo, GcAction, InstanceInfo
from crcache.api.results import SourceInfo

__all__ = ['Acquisition', 'CaptureInfo', 'Client', 'GcAction', 'Instance',
           'InstanceInfo', 'SourceInfo']
