"""Sphinx configuration of padax's API reference (built by tests/test_padax_docs.py).

Build: sphinx-build -W -b html docs/api build/api  (build/ is git-ignored)
"""

import ast
import inspect
import os
import sys

from sphinx.util import inspect as sphinx_inspect

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
# A class's fields have their types, by name, in its signature.
napoleon_attr_annotations = False
autodoc_typehints = 'signature'
autodoc_member_order = 'bysource'
default_role = 'py:obj'
exclude_patterns = ['_build']
html_theme = 'alabaster'


def _annotations_as_written(obj):
  """({parameter or field: annotation}, return annotation) as padax's source
  spells them, a module-level alias of padax's own (MaskOrFn) replaced by
  its definition; None where the source is not found."""
  try:
    tree = ast.parse(inspect.getsource(inspect.getmodule(obj)))
  except (OSError, TypeError):
    return None
  aliases = {node.targets[0].id: ast.unparse(node.value) for node in tree.body
             if isinstance(node, ast.Assign) and len(node.targets) == 1 and
             isinstance(node.targets[0], ast.Name)}
  spelled = lambda node: aliases.get(ast.unparse(node), ast.unparse(node))
  for node in tree.body:
    if getattr(node, 'name', None) != obj.__name__:
      continue
    if isinstance(node, ast.FunctionDef):
      args = node.args
      every = (args.posonlyargs + args.args + args.kwonlyargs +
               [a for a in (args.vararg, args.kwarg) if a])
      return ({a.arg: spelled(a.annotation) for a in every if a.annotation},
              spelled(node.returns) if node.returns else None)
    if isinstance(node, ast.ClassDef):
      return ({n.target.id: spelled(n.annotation) for n in node.body
               if isinstance(n, ast.AnnAssign)}, None)
  return None


def _signature_with_type_aliases(app, what, name, obj, options, signature,
                                 return_annotation):
  """Type aliases by name (optax.ScalarOrSchedule, jax.typing.ArrayLike), as
  the source writes them and optax's reference shows them: evaluated, each
  is a long union of its members, which autodoc would print in full."""
  del app, name, options
  if what not in ('function', 'class') or signature is None:
    return None
  written = _annotations_as_written(obj)
  if written is None:
    return None
  annotations, returns = written
  parameters = inspect.signature(obj).parameters.values()
  parameters = [p.replace(annotation=annotations[p.name])
                if p.name in annotations else p for p in parameters]
  text = sphinx_inspect.stringify_signature(
      inspect.Signature(parameters), show_return_annotation=False)
  return text, returns if returns is not None else return_annotation


def setup(app):
  app.connect('autodoc-process-signature', _signature_with_type_aliases)
