"""Output formatters registered under crcache's own namespace.

``table`` prints plain aligned columns, as the user's guide shows, instead
of cliff's boxed tables; ``json``, ``yaml``, ``csv`` and ``value`` are
cliff's own, registered again under ``crcache.formatter.list`` so that
crcache loads exactly the formatters it offers.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from cliff.formatters import base


def _cell(value: Any) -> str:
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    return str(value)


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
