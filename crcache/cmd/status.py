"""``crcache status``: sources, their instances and their limits."""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from typing import Any

from crcache import exceptions
from crcache.cmd import base

LOG = logging.getLogger(__name__)
#: Instances provisioning or discarding longer than this are pointed out.
SLOW = 5.0

COLUMNS = ('source', 'cached', 'in-use', 'max')
INSTANCE_COLUMNS = ('name', 'source', 'state', 'concurrency', 'held-by',
                    'pid', 'ppid', 'since', 'lease-expires', 'command')
QUERIES = ('cached', 'in-use', 'max', 'available')


def _stamp(when: float | None) -> str | None:
    if not when:
        return None
    from crcache import stamps
    return stamps.utc(when)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


def instance_row(inst: Any) -> tuple[Any, ...]:
    """One instance as ``status -v`` shows it (see INSTANCE_COLUMNS).

    held-by is the pool instance holding it, or user@host of the process
    that acquired it, whose pid, parent pid and command line follow.
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
    return (inst.name, inst.source, inst.state, inst.concurrency, held_by,
            holder.get('pid'), holder.get('ppid'), _stamp(since),
            _stamp(inst.lease_expires),
            shlex.join(argv) if argv else None)


def query(statuses: list, what: str) -> str:
    """Sum one figure over ``statuses``; see the --query help."""
    if what == 'cached':
        return str(sum(s.cached for s in statuses))
    if what == 'in-use':
        return str(sum(s.in_use for s in statuses))
    if what == 'max':
        if any(not s.maximum for s in statuses):
            return '0'
        return str(sum(s.maximum for s in statuses))
    if any(s.available is None for s in statuses):
        return 'unlimited'
    return str(sum(s.available for s in statuses))


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

    def run(self, parsed_args: argparse.Namespace) -> int:
        status = super().run(parsed_args)
        return status or (1 if self._failed else 0)

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            'sources', nargs='*', metavar='SOURCE',
            help='Only show these sources (default: all, or the global '
                 '-s source).')
        parser.add_argument(
            '-t', '--tree', action='store_true',
            help='List each pool with the sources it draws from indented '
                 'beneath it.')
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
                 'configuration root, with the file of each definition.')
        parser.add_argument(
            '--query', choices=QUERIES,
            help='Print one number summed over the selected sources: '
                 'cached, in-use, max (0 when any has no limit) or '
                 'available (how many an acquire could get now; '
                 '"unlimited" when any has no limit).')
        return parser

    def _selected(self, parsed_args: argparse.Namespace) -> list[str]:
        if parsed_args.sources:
            return parsed_args.sources
        global_source = getattr(self.app.options, 'source', None)
        return [global_source] if global_source else []

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        statuses = self.cache.status(self._selected(parsed_args) or None)
        for status in statuses:
            if status.error and status.name in self.cache.config.errors:
                LOG.error('%s', status.error)
                self._failed = True
        self._point_out_slow(statuses)
        if parsed_args.query:
            parsed_args.formatter = 'value'
            parsed_args.columns = []
            return ('value',), [(query(statuses, parsed_args.query),)]
        if parsed_args.verbose:
            self._summary = self._source_rows(statuses, parsed_args)
            names = [s.name for s in statuses]
            return INSTANCE_COLUMNS, [
                instance_row(i) for i in self.cache.instances(names)]
        return self._source_rows(statuses, parsed_args)

    def _source_rows(self, statuses: list, parsed_args: argparse.Namespace
                     ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        by_name = {s.name: s for s in statuses}
        columns: tuple[str, ...] = COLUMNS
        if parsed_args.all_definitions:
            columns = COLUMNS + ('path', 'shadowed')

        broken = any(s.error for s in statuses)
        if broken:
            columns = columns + ('error',)

        def row(status: Any, label: str | None = None) -> tuple[Any, ...]:
            values: tuple[Any, ...] = (
                label or status.name, status.cached, status.in_use,
                status.maximum)
            if parsed_args.all_definitions:
                definition = self.cache.config.definitions.get(status.name)
                values += (definition.path if definition else None, False)
            if broken:
                values += (status.error,)
            return values

        rows: list[tuple[Any, ...]] = []
        if parsed_args.tree:
            pools = [s for s in statuses if s.children]
            others = [s for s in statuses if not s.children]
            for status in pools:
                rows.append(row(status))
                rows.extend(self._tree_children(status.name, 1, columns))
            rows.extend(row(s) for s in others)
        else:
            rows.extend(row(s) for s in statuses)
        if parsed_args.all_definitions:
            for definition in self.cache.config.shadowed:
                if by_name and definition.name not in by_name:
                    continue
                rows.append((definition.name, None, None, None,
                             definition.path, True)
                            + ((None,) if broken else ()))
        return columns, rows

    def _point_out_slow(self, statuses: list) -> None:
        """Say which instances are stuck changing state, and on what."""
        now = time.time()
        names = [s.name for s in statuses]
        for inst in self.cache.instances(names):
            if inst.state not in ('provisioning', 'discarding'):
                continue
            op = inst.op or {}
            since = op.get('since') or inst.updated
            if now - since < SLOW:
                continue
            hook = op.get('hook') or {}
            doing = (f"{hook.get('script')} running, pid {hook.get('pid')}"
                     if hook.get('script') else
                     f"pid {op.get('pid')} on {op.get('host')}" if op
                     else 'nobody is working on it')
            LOG.warning('%s has been %s for %s (%s)', inst.name, inst.state,
                        _duration(now - since), doing)

    def _tree_children(self, name: str, depth: int,
                       columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        rows = []
        try:
            children = self.cache.config.source(name).children
        except (exceptions.CrcacheError, AttributeError):
            return rows
        for child in children:
            label = '  ' * (depth - 1) + '+ ' + child
            rows.append((label,) + (None,) * (len(columns) - 1))
            rows.extend(self._tree_children(child, depth + 1, columns))
        return rows

    def produce_output(self, parsed_args: argparse.Namespace,
                       column_names: Any, data: Any) -> int:
        # take_action may have switched the format (--query prints a bare
        # value), and cliff picked the formatter before calling it.
        self.formatter = self._formatter_plugins[parsed_args.formatter].obj
        summary = getattr(self, '_summary', None)
        if (summary is not None and parsed_args.formatter == 'table'
                and not parsed_args.columns):
            super().produce_output(parsed_args, *summary)
            self.app.stdout.write('\n')
        return super().produce_output(parsed_args, column_names, data)
