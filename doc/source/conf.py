"""Sphinx configuration: crcache's documentation and its crcache(1) page.

``tox -e docs`` builds both from these sources, warnings being errors:
the HTML pages into doc/build/html and the manual page into
doc/build/man/crcache.1. The reference pages are generated from the
installed crcache: the CLI from its cliff commands (``cliff.sphinxext``),
the configuration keys from its oslo.config options
(``oslo_config.sphinxext``), the Python API from its docstrings
(``sphinx.ext.autodoc``) and the release notes from releasenotes/notes
(``reno.sphinxext``).
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata

project = 'crcache'
author = 'crcache developers'
copyright = '2026, crcache developers'
try:
    release = metadata.version('crcache')
except metadata.PackageNotFoundError:  # building from a bare tree
    release = 'unknown'
version = release

extensions = [
    'sphinx.ext.autodoc',
    'cliff.sphinxext',
    'oslo_config.sphinxext',
    'reno.sphinxext',
]


exclude_patterns = ['build']

root_doc = 'index'
templates_path: list[str] = []
pygments_style = 'sphinx'
# A console block is shown as typed; doc/source is also read by
# crcache/tests/functional/test_docs_examples.py, which runs them.
highlight_language = 'none'

# -- cliff.sphinxext: the CLI reference --------------------------------------
autoprogram_cliff_application = 'crcache'
autoprogram_cliff_ignored = ['--help']

# -- sphinx.ext.autodoc: the Python API --------------------------------------
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {
    'members': True,
    'show-inheritance': True,
}

# -- HTML --------------------------------------------------------------------
# Sphinx's own default theme: nothing to install or fetch.
html_theme = 'alabaster'
html_title = f'crcache {release}'
html_static_path: list[str] = []
html_show_sourcelink = False

# -- The manual page ---------------------------------------------------------
man_pages = [
    ('man/crcache', 'crcache',
     'obtain, use, cache and discard compute resources',
     [author], 1),
]
man_show_urls = True
# doc/build/man/crcache.1, not doc/build/man/man1/crcache.1.
man_make_section_directory = False


def _copy_schemas(app, exception) -> None:
    """Publish the JSON Schemas beside the pages that link to them.

    output.rst links to ``schemas/<command>.json``, a path that works
    when the sources are browsed (on a forge, in a checkout) and, thanks
    to this copy, in the HTML build.
    """
    if exception is not None or app.builder.format != 'html':
        return
    source = os.path.join(app.srcdir, 'schemas')
    shutil.copytree(source, os.path.join(app.outdir, 'schemas'),
                    dirs_exist_ok=True)


def setup(app) -> None:
    app.connect('build-finished', _copy_schemas)
