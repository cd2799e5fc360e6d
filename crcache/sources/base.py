"""The contract every source type implements (API version 1).

A source type is a class registered in the ``crcache.sources`` entry
point group; a third-party package adds one by declaring an entry point
there, and it is then used like a built-in one (``type = NAME`` in a
``source.conf``). ``doc/source/plugins.rst`` is the plugin author's
guide; this module is the reference. :data:`API_VERSION` names the
version of the contract described here.

Two kinds exist:

* :class:`BackendSource` makes real resources (a process on this machine,
  an ssh host, a container). It provisions, discards, runs commands and
  copies files; it never touches crcache's state store, which the cache
  layer owns.
* :class:`LayeredSource` makes no resources of its own: each of its
  instances wraps an instance of one of its ``children`` sources (a pool).
  The cache layer claims the child instance in the same transaction as the
  wrapper, and asks the layered source only which child to draw from
  (:meth:`LayeredSource.choose`), so it needs no backend methods at all.

Both share :class:`Source`. Each of the three lives in a module of its
own (:mod:`crcache.sources.source`, :mod:`crcache.sources.backend`,
:mod:`crcache.sources.layered`); this module hands them on, with
:class:`Candidate` and :data:`Ref`, and is the one to import them from.

Lifecycle
    Every crcache invocation is a process of its own (the agent forks one
    per command), and each one loads the whole configuration: it
    constructs one object per configured source, of every type, even for
    ``crcache status``. So ``__init__`` and :meth:`Source.validate` must
    be cheap and must not reach the backend (no connection, no file
    beyond ``source.conf``, no import of a heavy client library): do that
    lazily, in the methods that need it. Nothing kept on the object
    outlives the invocation; what must last belongs in the backend (its
    labels) or in the reference :meth:`BackendSource.provision` returns,
    which crcache stores and hands back to every later call.

Threads and processes
    Any method but ``__init__`` and :meth:`Source.validate` may be called
    from several threads of one process at once: crcache provisions up to
    8 instances in parallel threads, each thread calling ``provision``
    with one name, then ``concurrency`` on the new reference, and
    ``discard`` when one fails. :meth:`BackendSource.is_alive` runs
    ``run`` in a thread of its own. Several crcache processes may also
    use one instance at once (an instance with ``concurrency`` 4 serves 4
    test workers, each its own ``crcache run``). ``crcache run`` and
    ``crcache cp`` call ``run`` and the copies from the process's main
    thread; the probes (``concurrency``, ``is_alive``) and provisioning
    may call ``run`` from other threads, where no signal handler can be
    installed.

Errors
    Raise :class:`~crcache.exceptions.SourceError` (the source's name and
    a one-line reason) for a backend that refuses or fails,
    :class:`~crcache.exceptions.InstancePathError` (the path as the user
    gave it, and a reason) for a path on an instance that is missing or
    refused, and :class:`~crcache.exceptions.CopyError` for a local path.
    Any other exception is wrapped into one line (``source 'NAME':
    ACTION failed: ERROR``); nothing a driver raises reaches the user as
    a traceback.
    An operation over several items (``discard`` of several references)
    tries every one, then raises
    :class:`~crcache.exceptions.PartialFailure` naming the items that
    failed.

Configuration
    The class attribute :attr:`Source.opts` is what is enforced: crcache
    registers the common keys (:mod:`crcache.opts`) and these, and
    refuses any other key in the file. Name every key of a type with the
    type's name as prefix (``dirs_root`` for type ``dirs``): keys of all
    types share one namespace in the generated sample configuration. The
    ``oslo.config.opts`` entry point a package also declares (a function
    returning ``[(None, Class.opts)]``) feeds ``oslo-config-generator``
    only; it must return the very same options.
"""

from __future__ import annotations

from crcache.sources.backend import BackendSource
from crcache.sources.layered import Candidate, LayeredSource
from crcache.sources.source import Source
from crcache.transport import runner

# In the order the reference shows them.
__all__ = ['API_VERSION', 'Ref', 'Source', 'Candidate', 'LayeredSource',
           'BackendSource']

#: The version of the contract this module describes. It changes only
#: when a driver written for the previous version could misbehave: a new
#: abstract method, a changed signature or meaning, a method called from
#: a context it was never called from before. Optional methods with a
#: default, new fields of :class:`Candidate` and new keyword arguments
#: with defaults do not change it. A plugin may check it at import time
#: and refuse to load (crcache then reports the type as failing to load,
#: with the plugin's message).
API_VERSION = 1

Ref = runner.Ref
"""A backend's reference to one resource; stored as JSON by the cache.

Whatever :meth:`BackendSource.provision` returned for an instance, handed
back to every later call about it. It must survive a JSON round trip
(strings, numbers, booleans, None, lists and dicts of those) and should be
small. It may be empty (``{}``): for an instance whose provisioning
failed or was interrupted before a reference was recorded, ``discard``
gets ``{}``.
"""
