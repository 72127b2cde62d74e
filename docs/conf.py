"""Sphinx configuration for the periodic documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``; it needs no network.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Document the package in this checkout, even when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import periodic

project = "periodic"
author = "The periodic maintainers"
copyright = "the periodic maintainers"
release = periodic.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]

# Warnings are errors (-W) but unresolved cross-references are not warnings: the docs
# mention Trio and standard-library names without linking them.
nitpicky = False

# intersphinx is loaded for its roles only; with no mapping it never touches the network.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# The attrs records list their fields under "Attributes:"; as :ivar: fields they do not
# clash with the attributes autodoc documents itself.
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = f"periodic {release}"
