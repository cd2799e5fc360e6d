"""Output formatters registered under crcache's own namespace.

``table`` prints plain aligned columns, as the user's guide shows, instead
of cliff's boxed tables. ``value`` and ``csv`` are cliff's, printing a
missing value (None) as an empty field and booleans as JSON does
(``true``, ``false``) rather than as Python's ``None`` and ``True``.
``json`` and ``yaml`` are cliff's own, registered again under
``crcache.formatter.list`` so that crcache loads exactly the formatters
it offers.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from cliff.formatters import base
from cliff.formatters import commaseparated
from cliff.formatters import value


def _cell(value: Any) -> str:
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    return str(value)


def _field(value: Any) -> Any:
    """A value as the text formats print it."""
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return value


class ValueFormatter(value.ValueFormatter):
    """Values only, space-separated, one row per line; None is empty."""

    def emit_list(self, column_names: Sequence[str],
                  data: Iterable[Sequence[Any]], stdout: TextIO,
                  parsed_args: argparse.Namespace) -> None:
        super().emit_list(column_names,
                          ([_field(v) for v in row] for row in data),
                          stdout, parsed_args)

    def emit_one(self, column_names: Sequence[str], data: Sequence[Any],
                 stdout: TextIO, parsed_args: argparse.Namespace) -> None:
        super().emit_one(column_names, [_field(v) for v in data], stdout,
                         parsed_args)


class CSVFormatter(commaseparated.CSVLister):
    """Comma-separated values with a header line; None is empty."""

    def emit_list(self, column_names: Sequence[str],
                  data: Iterable[Sequence[Any]], stdout: TextIO,
                  parsed_args: argparse.Namespace) -> None:
        super().emit_list(column_names,
                          ([_field(v) for v in row] for row in data),
                          stdout, parsed_args)


class PlainTableFormatter(base.ListFormatter):
    """Aligned columns separated by two spaces, with a header line."""

    def add_argument_group(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group('table formatter')
        group.add_argument(
            '--no-header', action='store_true', dest='no_header',
            help='Do not print the line of column names.')

    def emit_list(self, column_names: Sequence[str],
                  data: Iterable[Sequence[Any]], stdout: TextIO,
                  parsed_args: argparse.Namespace) -> None:
        rows = [[_cell(v) for v in row] for row in data]
        if not getattr(parsed_args, 'no_header', False):
            rows.insert(0, list(column_names))
        if not rows:
            return
        widths = [max(len(row[i]) for row in rows)
                  for i in range(len(column_names))]
        for row in rows:
            line = '  '.join(cell.ljust(width)
                             for cell, width in zip(row, widths))
            stdout.write(line.rstrip() + '\n')
