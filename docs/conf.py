"""Sphinx configuration for divak's documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import divak  # noqa: E402

project = "divak"
author = "The divak developers"
copyright = "2026, The divak developers"
version = release = divak.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
intersphinx_mapping = {}
exclude_patterns = ["_build"]
html_theme = "alabaster"
