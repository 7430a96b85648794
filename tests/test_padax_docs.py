"""padax's docstrings: complete, their examples run, the API reference builds
(issue 15, point 3 and 4)."""

import doctest
import importlib.util
import inspect
import os
import subprocess
import sys

import pytest

import padax
from padax import _checks
from padax import alias
from padax import transform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_FUNCTIONS = (padax.padam, padax.padamw, padax.scale_by_partial_adaptive,
                    padax.check_hyperparameters)
SECTIONS = ('Args:', 'Returns:', 'Examples:', 'References:')


@pytest.mark.parametrize('function', PUBLIC_FUNCTIONS,
                         ids=lambda f: f.__name__)
def test_docstring_has_every_section(function):
  doc = inspect.getdoc(function)
  for section in SECTIONS:
    assert f'\n{section}\n' in f'\n{doc}\n', (function.__name__, section)
  assert '>>> ' in doc.split('Examples:')[1]
  assert 'arXiv:1806.06763' in doc


@pytest.mark.parametrize('module', (transform, alias, _checks),
                         ids=lambda m: m.__name__)
def test_doctests_pass(module):
  finder = doctest.DocTestFinder()
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  tests = [t for t in finder.find(module, module.__name__,
                                  globs={}) if t.examples]
  assert tests, f'{module.__name__} has no doctest'
  for test in tests:
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, result


def test_every_public_function_is_doctested():
  tested = set()
  for module in (transform, alias, _checks):
    for test in doctest.DocTestFinder().find(module, module.__name__):
      if test.examples:
        tested.add(test.name.rsplit('.', 1)[-1])
  assert {f.__name__ for f in PUBLIC_FUNCTIONS} <= tested, tested


def test_api_reference_builds_without_warnings(tmp_path):
  if importlib.util.find_spec('sphinx') is None:
    pytest.skip('Sphinx is not installed: it comes with requirements/docs.txt '
                '(pip install -r requirements/docs.txt), which '
                'requirements/test.txt includes')
  out = subprocess.run(
      [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b', 'html',
       os.path.join(ROOT, 'docs', 'api'), str(tmp_path / 'html')],
      capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
  assert out.returncode == 0, out.stdout + out.stderr
  assert not out.stderr.strip(), out.stderr
  api = (tmp_path / 'html' / 'api.html').read_text()
  for name in ('padam', 'padamw', 'scale_by_partial_adaptive',
               'check_hyperparameters', 'ScaleByPartialAdaptiveState'):
    assert f'id="padax.{name}"' in api, name
  assert 'arXiv:1901.09878' in api and 'Examples' in api
  # Type aliases by name, not expanded (issue 22): ArrayLike is 8 types.
  assert 'ScalarOrSchedule' in api and 'ndarray' not in api
  assert 'The three formulations' in (
      tmp_path / 'html' / 'formulations.html').read_text()
