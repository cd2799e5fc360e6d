"""The installed types of sources and stores (stevedore entry points).

A ``type`` in a ``source.conf`` names an entry point of the group
``crcache.sources``; in a ``store.conf``, one of ``crcache.stores``. A
type that is not installed is an error listing the installed ones.
"""

from __future__ import annotations

from crcache import exceptions

SOURCES = 'crcache.sources'
STORES = 'crcache.stores'


def installed(namespace: str) -> list[str]:
    """Names of the types installed in ``namespace``."""
    from stevedore import extension
    manager = extension.ExtensionManager(
        namespace, on_load_failure_callback=lambda *a: None)
    return sorted(set(manager.entry_points_names()))


def load_class(namespace: str, type_name: str, path: str,
               base_class: type, what: str) -> type:
    """The class ``type_name`` names in ``namespace``, which must be a
    ``base_class``; errors name the file ``path``."""
    from stevedore import driver
    from stevedore import exception as stevedore_exc

    failures: list[BaseException] = []

    def failed(manager: object, entry_point: object,
               err: BaseException) -> None:
        failures.append(err)

    try:
        manager = driver.DriverManager(
            namespace, type_name, on_load_failure_callback=failed,
            warn_on_missing_entrypoint=False)
    except stevedore_exc.NoMatches:
        if failures:
            raise exceptions.ConfigError(
                path, f"{what} type '{type_name}' is installed but failed "
                f"to load: {failures[0]}")
        known = installed(namespace)
        raise exceptions.ConfigError(
            path, f"unknown type '{type_name}'"
            f"{exceptions.did_you_mean(type_name, known)}; "
            f"installed types: {', '.join(known)}")
    cls = manager.driver
    if not (isinstance(cls, type) and issubclass(cls, base_class)):
        raise exceptions.ConfigError(
            path, f"{what} type '{type_name}' is not a crcache "
            f'{base_class.__name__} class')
    return cls
