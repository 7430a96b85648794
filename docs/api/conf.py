"""Sphinx configuration of padax's API reference (built by tests/test_padax_docs.py).

Build: sphinx-build -W -b html docs/api build/api  (build/ is git-ignored)
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

project = 'padax'
author = 'padax contributors'
copyright = '2026, padax contributors'  # pylint: disable=redefined-builtin

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_typehints = 'signature'
autodoc_member_order = 'bysource'
default_role = 'py:obj'
exclude_patterns = ['_build']
html_theme = 'alabaster'
