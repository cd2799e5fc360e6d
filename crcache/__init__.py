"""crcache: obtain, use, cache and discard compute resources.

The ``crcache`` command and a Python library. The library's API is what
``__all__`` lists (see :mod:`crcache.api` for the whole story)::

    import crcache

    with crcache.Client().acquire('pool', count=3) as instances:
        ...

Importing the package costs next to nothing (the command line imports
it first): each name is imported when first used.
"""

# Not typing's: importing typing would cost more than the rest of the
# package's start-up. Type checkers know the name.
TYPE_CHECKING = False

#: The public API: its names, and the module each comes from.
_API = {
    'Client': 'crcache.api',
    'Acquisition': 'crcache.api',
    'Instance': 'crcache.api',
    'InstanceInfo': 'crcache.api',
    'SourceInfo': 'crcache.api',
    'GcAction': 'crcache.api',
    'CaptureInfo': 'crcache.api',
    'CrcacheError': 'crcache.exceptions',
    'ConfigError': 'crcache.exceptions',
    'UnknownSource': 'crcache.exceptions',
    'UnknownInstance': 'crcache.exceptions',
    'InstanceStateError': 'crcache.exceptions',
    'InvalidName': 'crcache.exceptions',
    'CapacityError': 'crcache.exceptions',
    'StoreError': 'crcache.exceptions',
    'SourceError': 'crcache.exceptions',
    'CaptureGone': 'crcache.exceptions',
    'CaptureInUse': 'crcache.exceptions',
    'CopyError': 'crcache.exceptions',
    'InstancePathError': 'crcache.exceptions',
    'PartialFailure': 'crcache.exceptions',
    'CommandFailed': 'crcache.exceptions',
}

__all__ = [*_API, '__version__']

if TYPE_CHECKING:
    from typing import Any

    from crcache.api import Acquisition as Acquisition
    from crcache.api import Client as Client
    from crcache.api import CaptureInfo as CaptureInfo
    from crcache.api import GcAction as GcAction
    from crcache.api import Instance as Instance
    from crcache.api import InstanceInfo as InstanceInfo
    from crcache.api import SourceInfo as SourceInfo
    from crcache.exceptions import CapacityError as CapacityError
    from crcache.exceptions import CommandFailed as CommandFailed
    from crcache.exceptions import ConfigError as ConfigError
    from crcache.exceptions import CaptureGone as CaptureGone
    from crcache.exceptions import CaptureInUse as CaptureInUse
    from crcache.exceptions import CopyError as CopyError
    from crcache.exceptions import CrcacheError as CrcacheError
    from crcache.exceptions import InstancePathError as InstancePathError
    from crcache.exceptions import InstanceStateError as InstanceStateError
    from crcache.exceptions import InvalidName as InvalidName
    from crcache.exceptions import PartialFailure as PartialFailure
    from crcache.exceptions import SourceError as SourceError
    from crcache.exceptions import StoreError as StoreError
    from crcache.exceptions import UnknownInstance as UnknownInstance
    from crcache.exceptions import UnknownSource as UnknownSource

    __version__: str


def __getattr__(name: str) -> 'Any':
    """Import an API name on first use (PEP 562).

    Any other name fails at once, before anything is imported:
    ``from crcache import finish`` asks here first for every submodule
    not yet imported, on every command.
    """
    if name == '__version__':
        module = 'crcache.version'
    elif name in _API:
        module = _API[name]
    else:
        raise AttributeError(f"module 'crcache' has no attribute {name!r}")
    import importlib
    imported = importlib.import_module(module)
    value: 'Any' = (imported.version_string() if name == '__version__'
                    else getattr(imported, name))
    globals()[name] = value
    return value


def __dir__() -> 'list[str]':
    return sorted(set(globals()) | set(__all__))
