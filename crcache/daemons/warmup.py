"""What the crcache agent loads once, and how it notices that went stale.

The agent (:mod:`crcache.daemons.agent`) pays crcache's import cost once
for all the commands it serves: :func:`preload` imports crcache's own
modules, every installed plugin and what each source or store type names
in its ``warm_modules``, and returns the plugins' files as they were
then. :func:`changed_plugin` tells the agent when one of them has changed
since, so that it retires instead of serving stale code.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys


#: crcache's own modules every command may need, and the libraries they
#: import; what a plugin needs besides its own module, it names itself
#: (``warm_modules``, see :func:`preload`).
PRELOAD = (
    'crcache.app', 'crcache.api', 'crcache.cache', 'crcache.cache.gc',
    'crcache.cache.autogc', 'crcache.cache.queue', 'crcache.cache.resets',
    'crcache.config',
    'crcache.store.sqlite', 'crcache.transport.tarcopy',
    'crcache.transport.untar', 'crcache.transport.localcopy',
    'crcache.transport.process', 'crcache.formatters', 'crcache.progress',
    'cliff.formatters.json_format', 'cliff.formatters.yaml_format',
    'cliff.help', 'cliff.complete', 'yaml', 'subprocess', 'tarfile',
    'tempfile', 'shutil', 'threading', 'getpass', 'difflib',
)


#: The entry point groups whose plugins workers load.
PLUGIN_NAMESPACES = ('crcache.cmd', 'crcache.sources', 'crcache.stores',
                     'crcache.formatter.list')


def preload() -> dict[str, tuple[int, int]]:
    """Import what workers use, including every installed plugin.

    That is crcache's own :data:`PRELOAD` and every plugin of
    :data:`PLUGIN_NAMESPACES`. The libraries a source or store type
    names in its ``warm_modules`` (paramiko, the Docker SDK, psycopg:
    tens of MiB each) are imported later, by :func:`warm_for`, only once
    a configuration uses that type. Returns the plugins' files with
    their modification times and sizes (see :func:`plugin_files`).
    """
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    from stevedore import extension
    entry_points = []
    for namespace in PLUGIN_NAMESPACES:
        with contextlib.suppress(Exception):
            manager = extension.ExtensionManager(
                namespace, on_load_failure_callback=lambda *a: None)
            entry_points.extend(manager.list_entry_points())
    with contextlib.suppress(Exception):
        from crcache import version
        version.version_string()
    _remember_translations()
    from crcache import app
    app.quiet_libraries()  # set once here, not in every worker
    return plugin_files(entry_points)


def _remember_translations() -> None:
    """Look each message catalogue up once per language, not per message.

    argparse translates every string it prints or registers through
    :mod:`gettext`, whose ``find`` reads the locale variables and looks
    for catalogue files each time: a few hundred microseconds of every
    command. The agent remembers the answers (for each set of locale
    variables) and its workers inherit them; a catalogue installed while
    the agent runs is seen by the next agent.
    """
    import gettext
    find = gettext.find
    if getattr(find, 'remembered', False):
        return
    answers: dict = {}

    def remembered_find(domain: str, localedir: str | None = None,
                        languages: list[str] | None = None,
                        all: bool = False) -> object:
        key = (domain, localedir, tuple(languages or ()), all,
               *(os.environ.get(name) for name in
                 ('LANGUAGE', 'LC_ALL', 'LC_MESSAGES', 'LANG')))
        if key not in answers:
            answers[key] = find(domain, localedir, languages, all)
        found = answers[key]
        return list(found) if isinstance(found, list) else found

    remembered_find.remembered = True  # type: ignore[attr-defined]
    gettext.find = remembered_find
    gettext.gettext('usage: ')  # the agent's own locale, answered now


def config_wanted(reports: list[tuple]) -> tuple[dict, str] | None:
    """The configuration a finished worker loaded itself (the last one),
    as ``(environment, working directory)``, from its ``reports``."""
    found = None
    for report in reports:
        if (len(report) == 3 and report[0] == 'config'
                and isinstance(report[1], dict)
                and all(isinstance(k, str) and isinstance(v, str)
                        for k, v in report[1].items())
                and isinstance(report[2], str)):
            found = (report[1], report[2])
    return found


#: Counts what the agent loaded since it started (configurations ahead,
#: libraries): a spare worker forked before the last change is retired
#: (see :mod:`crcache.daemons.spare`).
generation = 0


def prepare_config(wanted: tuple[dict, str]) -> None:
    """Load the configuration ``wanted`` (see :func:`config_wanted`) for
    the workers forked from now on (:mod:`crcache.config.prepared`),
    and what its types need (:func:`warm_for`)."""
    global generation
    with contextlib.suppress(Exception):
        from crcache.config import prepared
        before = prepared._prepared.get(prepared.key(*wanted))
        prepared.last_loaded = None
        config = prepared.prepare(*wanted)
        if config is not None and (before is None
                                   or before[0] is not config):
            generation += 1
        # Kept or not (one that warns is loaded by every worker itself),
        # its types' libraries are worth having here.
        if prepared.last_loaded is not None:
            warm_for(prepared.last_loaded)
            prepared.last_loaded = None


#: Modules imported for the types of the configurations seen so far.
_warmed: set[str] = set()


def warm_for(config: object) -> None:
    """Import the ``warm_modules`` of every source and store type
    ``config`` uses (the libraries their commands would import later:
    worth loading once, here), then keep them out of the garbage
    collector's way as :meth:`Agent.serve` does for the rest."""
    types = [type(source) for source in config._sources.values()]
    types += [cls for cls, _ in config._stores.values()]
    modules = [module for cls in types
               for module in getattr(cls, 'warm_modules', ())
               if module not in _warmed]
    if not modules:
        return
    global generation
    generation += 1
    for module in modules:
        _warmed.add(module)
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    import gc
    gc.collect()
    gc.freeze()


def report_memory(worker_rss: int) -> None:
    """Say on stderr (the agent's log) how large the agent and its
    largest worker grew (their maximum resident set sizes, in KiB):
    ``benchmarks/`` read it from there."""
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f'crcache agent: max RSS {own} KiB, largest '
                         f'worker {worker_rss} KiB\n')
        sys.stderr.flush()


def plugin_files(entry_points: list) -> dict[str, tuple[int, int]]:
    """The files that make up the plugins behind ``entry_points``.

    For each entry point: every ``.py`` file of the top-level package its
    module belongs to, so an edit anywhere in it counts, and so does a
    reinstall, which rewrites them. (A distribution installed, removed or
    upgraded changes its ``sys.path`` directory, which the client's
    fingerprint covers, as it covers crcache's own package.)
    """
    # crcache's own package (this module is in crcache/daemons/).
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files: dict[str, tuple[int, int]] = {}
    for entry_point in entry_points:
        top = entry_point.value.split(':')[0].split('.')[0]
        module = sys.modules.get(top)
        path = getattr(module, '__file__', None)
        if path:
            directory = os.path.dirname(os.path.abspath(path))
            if os.path.basename(path) == '__init__.py':
                if directory != own:
                    _walk(directory, files)
            else:
                _stamp(os.path.abspath(path), files)
    return files


def _walk(directory: str, files: dict[str, tuple[int, int]]) -> None:
    stack = [directory]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.name in ('__pycache__', 'tests'):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.name.endswith('.py'):
                _stamp(entry.path, files)


def _stamp(path: str, files: dict[str, tuple[int, int]]) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    files[path] = (st.st_mtime_ns, st.st_size)


def changed_plugin(files: dict[str, tuple[int, int]]) -> str | None:
    """The first of ``files`` changed (or gone) since it was stamped."""
    for path, stamp in files.items():
        try:
            st = os.stat(path)
        except OSError:
            return path
        if (st.st_mtime_ns, st.st_size) != stamp:
            return path
    return None
