"""``crcache status``: sources, their instances and their limits.

What ``take_action`` returns is the data, the same for every format: one
row per source (``-t``: per source under each pool that draws on it, with
``parent`` and ``depth``), one per instance (``-v``) or one figure
(``--query``). Only the table view decorates it, as the user's guide
shows: ``-t`` draws children as ``+ name`` lines under their pool and
``-v`` prints the source table above the instances.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

from crcache import exceptions
from crcache.cmd import base

LOG = logging.getLogger(__name__)

COLUMNS = ('source', 'cached', 'in-use', 'max')
TREE_COLUMNS = ('parent', 'depth')
INSTANCE_COLUMNS = ('name', 'source', 'store', 'state', 'concurrency',
                    'held-by', 'machine', 'pid', 'ppid', 'since',
                    'lease-expires', 'command')
QUERY_COLUMNS = ('query', 'value')
#: status -v's table of captures (crcache snapshot list has them all).
CAPTURE_COLUMNS = ('source', 'snapshot', 'fingerprint', 'capture', 'age')
QUERIES = ('cached', 'in-use', 'max', 'available')


def _stamp(when: float | None) -> str | None:
    if not when:
        return None
    from crcache import stamps
    return stamps.utc(when)


def instance_row(inst: Any) -> tuple[Any, ...]:
    """One instance as ``status -v`` shows it (see INSTANCE_COLUMNS).

    held-by is the pool instance holding it, or user@host of the process
    that acquired it, whose machine id (two machines may share a host
    name), pid, parent pid and command line follow.
    """
    holder = inst.holder or {}
    if inst.parent:
        held_by = inst.parent
    elif holder:
        held_by = f"{holder.get('user')}@{holder.get('host')}"
    else:
        held_by = None
    argv = holder.get('argv')
    # Since when the instance has been in its state: held, or being
    # made or destroyed.
    if inst.state in ('provisioning', 'discarding'):
        since = (inst.op or {}).get('since') or inst.updated
    else:
        since = holder.get('since') or inst.updated
    machine = holder.get('machine')
    return (inst.name, inst.source, inst.store, inst.state,
            inst.concurrency, held_by, machine[:12] if machine else None,
            holder.get('pid'), holder.get('ppid'), _stamp(since),
            _stamp(inst.lease_expires),
            shlex.join(argv) if argv else None)


class Status(base.Lister):
    """Show each source's cached and in-use instances and its maximum.

    A maximum of 0 means the source has no limit. Pool instances hold an
    instance of one of the pool's sources, which therefore shows as in use
    by its own source as well. A source whose definition is broken is
    listed with its error in an ``error`` column (shown only then), the
    error is also printed on stderr and the exit status is 1. Instances
    that have been provisioning or discarding for a while are pointed out
    on stderr, with what they are waiting for.
    """

    _failed = False
    _summary: tuple[Sequence[str], list] | None = None
    _captures: list = []

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        # The default format depends on --query: resolved in run().
        parser.set_defaults(formatter=None)
        for action in parser._actions:
            if action.dest == 'formatter':
                action.help = ('the output format, defaults to table '
                               '(value with --query)')
        parser.add_argument(
            'sources', nargs='*', metavar='SOURCE',
            help='Only show these sources (default: all, or the global '
                 '-s source).')
        parser.add_argument(
            '-t', '--tree', action='store_true',
            help='List each pool with the sources it draws from beneath '
                 'it (indented in the table; other formats give each row '
                 'a parent and a depth).')
        parser.add_argument(
            '-v', '--verbose', action='store_true',
            help='Also list every instance: its name, source, state, '
                 'concurrency, who holds it (user@host, pid, parent pid, '
                 'since when, command line) and when its lease expires. '
                 'Machine formats (-f json ...) then list the instances '
                 'only.')
        parser.add_argument(
            '-a', '--all', action='store_true', dest='all_definitions',
            help='Also list source definitions shadowed by an earlier '
                 'configuration root, with the file and the store of each '
                 'definition; the table then lists the state stores too, '
                 'as crcache stores does (-f json: use crcache stores).')
        parser.add_argument(
            '--query', choices=QUERIES,
            help='Print one figure for the selected sources, counting '
                 'each instance once (a pool instance and the instance it '
                 'wraps are one, counted for the pool when both sources '
                 'are selected): cached, in-use, max (the most instances '
                 'they can have at once, a pool\'s drawn from its '
                 'sources; 0 when nothing limits them) or available (the '
                 'cached instances plus the new ones there is room for '
                 'now; "unlimited" when nothing limits them). Printed '
                 'bare, or with -f json as {"query": ..., "value": ...}.')
        return parser

    def run(self, parsed_args: argparse.Namespace) -> int:
        if parsed_args.formatter is None:
            parsed_args.formatter = 'value' if parsed_args.query else 'table'
        status = super().run(parsed_args)
        return status or (1 if self._failed else 0)

    def _selected(self, parsed_args: argparse.Namespace) -> list[str]:
        if parsed_args.sources:
            return list(dict.fromkeys(parsed_args.sources))
        global_source = getattr(self.app.options, 'source', None)
        return [global_source] if global_source else []

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        if parsed_args.query and (parsed_args.verbose or parsed_args.tree
                                  or parsed_args.all_definitions):
            raise exceptions.CrcacheError(
                '--query prints one figure: it cannot be combined with '
                '-v, -t or -a')
        statuses = self.cache.status(self._selected(parsed_args) or None)
        for status in statuses:
            if status.error and self.cache.broken(status.name):
                LOG.error('%s', status.error)
                self._failed = True
        instances = self.cache.instances()
        names = {s.name for s in statuses}
        for line in self.cache.slow(i for i in instances
                                    if i.source in names):
            LOG.warning('%s', line)
        for line in self.cache.reset_failures(sorted(names)):
            LOG.warning('%s', line)
        if parsed_args.query:
            value = self.cache.query(parsed_args.query,
                                     [s.name for s in statuses])
            if parsed_args.formatter == 'value' and not parsed_args.columns:
                return ('value',), [(value,)]
            return QUERY_COLUMNS, [(parsed_args.query, value)]
        if parsed_args.verbose:
            if self._decorated(parsed_args):
                self._summary = self._source_rows(statuses, parsed_args)
                self._captures = self.cache.captures(sorted(
                    n for n in names if not self.cache.broken(n)
                    and n in self.cache.config.definitions))
            names = {s.name for s in statuses}
            return INSTANCE_COLUMNS, [instance_row(i) for i in instances
                                      if i.source in names]
        return self._source_rows(statuses, parsed_args)

    def _decorated(self, parsed_args: argparse.Namespace) -> bool:
        """Whether the output is for reading: the table, whole."""
        return parsed_args.formatter == 'table' and not parsed_args.columns

    def _source_rows(self, statuses: list, parsed_args: argparse.Namespace
                     ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        columns: tuple[str, ...] = COLUMNS
        if parsed_args.all_definitions:
            columns += ('path', 'shadowed', 'store')
        broken = any(s.error for s in statuses)
        if broken:
            columns += ('error',)
        tree = parsed_args.tree
        if tree:
            columns += TREE_COLUMNS

        def row(status: Any, parent: str | None = None,
                depth: int = 0) -> tuple[Any, ...]:
            values: tuple[Any, ...] = (
                status.name, status.cached, status.in_use, status.maximum)
            if parsed_args.all_definitions:
                values += (self.cache.definition_path(status.name), False,
                           status.store)
            if broken:
                values += (status.error,)
            if tree:
                values += (parent, depth)
            return values

        rows: list[tuple[Any, ...]] = []
        if tree:
            every = {s.name: s for s in self.cache.status()}
            every.update((s.name, s) for s in statuses)

            def subtree(status: Any, depth: int) -> None:
                for child in self._children(status.name):
                    if child in every:
                        rows.append(row(every[child], status.name, depth))
                        subtree(every[child], depth + 1)

            for status in [s for s in statuses if s.children]:
                rows.append(row(status))
                subtree(status, 1)
            rows.extend(row(s) for s in statuses if not s.children)
        else:
            rows.extend(row(s) for s in statuses)
        if parsed_args.all_definitions:
            selected = {s.name for s in statuses}
            for name, path in self.cache.shadowed():
                if selected and name not in selected:
                    continue
                rows.append((name, None, None, None, path, True, None)
                            + ((None,) if broken else ())
                            + ((None, 0) if tree else ()))
        return columns, rows

    def _children(self, name: str) -> list[str]:
        return self.cache.children(name)

    def produce_output(self, parsed_args: argparse.Namespace,
                       column_names: Sequence[str], data: Any) -> int:
        if parsed_args.query and hasattr(self.formatter, 'emit_one'):
            # One figure is one object (JSON, YAML), not a list of one.
            columns, selector = self._generate_columns_and_selector(
                parsed_args, column_names)
            [values] = data
            if selector:
                values = list(itertools.compress(values, selector))
            self.formatter.emit_one(columns, values, self.app.stdout,
                                    parsed_args)
            return 0
        if self._decorated(parsed_args):
            if self._summary is not None:
                summary, self._summary = self._summary, None
                if parsed_args.tree:
                    summary = _drawn_tree(*summary)
                super().produce_output(parsed_args, *summary)
                self.app.stdout.write('\n')
            elif parsed_args.tree:
                column_names, data = _drawn_tree(column_names, data)
        status = super().produce_output(parsed_args, column_names, data)
        if self._decorated(parsed_args) and self._captures:
            # Each source's capture (snapshot = provisioned).
            from crcache.cmd import snapshot
            self.app.stdout.write('\n')
            super().produce_output(
                parsed_args, CAPTURE_COLUMNS,
                [(row.source, row.state, row.fingerprint,
                  snapshot.short(row.capture), snapshot.age(row.created))
                 for row, _ in self._captures])
        if self._decorated(parsed_args) and parsed_args.all_definitions:
            # The stores too, as crcache stores lists them.
            from crcache.cmd import stores
            self.app.stdout.write('\n')
            super().produce_output(parsed_args, stores.COLUMNS, [
                stores.store_row(s) for s in self.cache.store_report()])
        return status


def _drawn_tree(column_names: Sequence[str], rows: Iterable[Sequence[Any]]
                ) -> tuple[Sequence[str], list[tuple[Any, ...]]]:
    """The tree as the table draws it: ``+ child`` beneath its pool."""
    width = len(column_names) - len(TREE_COLUMNS)
    drawn = []
    for row in rows:
        depth = row[-1]
        if depth:
            drawn.append(('  ' * (depth - 1) + '+ ' + row[0],)
                         + (None,) * (width - 1))
        else:
            drawn.append(tuple(row[:width]))
    return column_names[:width], drawn
