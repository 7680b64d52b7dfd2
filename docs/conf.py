"""Sphinx configuration for flask-reflectsync."""

from __future__ import annotations

import flask_reflectsync

project = "flask-reflectsync"
copyright = "2026, the flask-reflectsync developers"
release = flask_reflectsync.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
# No intersphinx: CI builds the docs offline, and an inventory that cannot be
# fetched is a warning (the build runs with -W).

html_theme = "furo"
html_title = f"flask-reflectsync {release}"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
exclude_patterns = ["_build"]
