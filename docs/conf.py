"""Sphinx configuration for divak's documentation."""

import divak

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
