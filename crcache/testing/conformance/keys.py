"""Checks on a type's declared keys, shared by both conformance suites.

Each key of a type is named after the type, and the type's
``oslo.config.opts`` entry point documents exactly the keys crcache
enforces. :meth:`TypeChecks.load_source` loads a configured source as
crcache does, for the checks that look at the driver itself.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any


class TypeChecks:
    """Checks on a type's declared keys, shared by both suites."""

    #: The ``oslo.config.opts`` entry point that documents the type's
    #: keys for ``oslo-config-generator`` (None: not checked).
    opts_namespace: str | None = None
    #: Keys of the type allowed to break the ``TYPE_*`` naming rule (for
    #: crcache's pool, ``sources``, which the user's guide fixes). Keep
    #: it empty in a new type.
    unprefixed_keys: tuple[str, ...] = ()

    def checked_source(self) -> str:
        raise NotImplementedError

    def load_source(self, name: str | None = None) -> Any:
        """The configured source ``name``, loaded as crcache loads it.

        From this test's configuration root, through the
        ``crcache.sources`` entry point its ``type`` names, with its
        ``source.conf`` parsed and checked. Its :attr:`owner` is not set
        (crcache's cache sets it); set it before provisioning.
        """
        from crcache import config
        name = name or self.checked_source()
        with self.world.applied():
            loaded = config.Config(roots=[self.world.config_root])
            return loaded.source(name)

    def test_keys_carry_the_type_name(self) -> None:
        """Each key of the type is named ``TYPE_...``."""
        source = self.load_source()
        type_name = source.conf.type
        wrong = [opt.dest for opt in type(source).opts
                 if not opt.dest.startswith(f'{type_name}_')
                 and opt.dest not in self.unprefixed_keys]
        self.assertEqual([], wrong, f'keys of type {type_name!r} must '
                         f'start with {type_name + "_"!r}')

    def test_sample_config_documents_the_keys(self) -> None:
        """The ``oslo.config.opts`` entry point lists exactly the keys
        crcache enforces (the class's ``opts``)."""
        if self.opts_namespace is None:
            self.skipTest('no opts_namespace declared')
        found = [ep for ep in importlib.metadata.entry_points(
            group='oslo.config.opts') if ep.name == self.opts_namespace]
        self.assertEqual(1, len(found),
                         f'oslo.config.opts entry point '
                         f'{self.opts_namespace!r}')
        documented = set()
        for group, opts in found[0].load()():
            self.assertIn(group, (None, 'DEFAULT'),
                          'source keys live in [DEFAULT]')
            documented.update(opt.dest for opt in opts)
        enforced = {opt.dest for opt in type(self.load_source()).opts}
        self.assertEqual(enforced, documented)
