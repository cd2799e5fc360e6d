"""Base classes shared by crcache's commands.

They give every command the app's :class:`~crcache.cache.Cache`, the
Python API's :class:`~crcache.api.Client` over it (commands that have an
API counterpart go through it, so both behave the same), the
``crcache.formatter.list`` formatters, and replace cliff's help epilog,
which scans every installed distribution to name a command's plugin
package (about 80 ms per invocation, for a line crcache never needs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cliff import command
from cliff import lister

from crcache import exceptions

if TYPE_CHECKING:
    from crcache.api import Client
    from crcache.cache import Cache


class _Common:
    app: object
    _epilog: str | None = None

    def get_epilog(self) -> str:
        return self._epilog or ''

    @property
    def cache(self) -> 'Cache':
        """The invocation's cache (configuration and state store)."""
        return self.app.cache  # type: ignore[attr-defined]

    @property
    def client(self) -> 'Client':
        """The Python API's client, over the invocation's cache."""
        from crcache import api
        return api.Client._for(lambda: self.cache)

    def default_source(self, explicit: str | None) -> str:
        """The source named here, else by the global -s, else local."""
        global_source = getattr(self.app.options, 'source', None)  # type: ignore[attr-defined]  # noqa: E501
        return explicit or global_source or 'local'


class Command(_Common, command.Command):
    """A crcache command that prints nothing of its own on success."""


class Lister(_Common, lister.Lister):
    """A crcache command whose output is a table (or JSON, YAML, ...)."""

    @property
    def formatter_namespace(self) -> str:
        return 'crcache.formatter.list'

    @property
    def formatter_default(self) -> str:
        return 'table'

    @staticmethod
    def _normalize_column_name(column_name: str) -> str:
        # -c takes the keys as printed (in-use), and also in_use or IN-USE.
        return column_name.strip().lower().replace('_', '-').replace(
            ' ', '-')

    def _generate_columns_and_selector(
            self, parsed_args: argparse.Namespace,
            column_names: Sequence[str]
    ) -> tuple[list[str], list[bool] | None]:
        # cliff drops a column it does not know when another is known: a
        # typo would silently lose the field a script asked for.
        known = {self._normalize_column_name(c): c for c in column_names}
        for asked in parsed_args.columns or ():
            if self._normalize_column_name(asked) not in known:
                raise exceptions.CrcacheError(
                    f'unknown column {asked!r}'
                    f'{exceptions.did_you_mean(asked, column_names)}; '
                    f"columns: {', '.join(column_names)}")
        return super()._generate_columns_and_selector(parsed_args,
                                                      column_names)
