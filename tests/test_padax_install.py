"""Install honesty (issue 15, point 6): a wheel built from the tree holds only
the `padax` package (with its py.typed and the license), and installs in a
fresh virtual environment where `import padax` works outside the checkout."""

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What setup.cfg's metadata reads besides the package.
BUILD_INPUTS = ('setup.cfg', 'pyproject.toml', 'README.md', 'LICENSE')


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  """A wheel built from a copy of the build inputs, so nothing is written
  into the checkout: without build isolation (no network) where setuptools
  and wheel are installed, else with it (pip fetches them), else skipped."""
  try:
    import setuptools  # pylint: disable=g-import-not-at-top,unused-import
    import wheel as _  # pylint: disable=g-import-not-at-top
    isolation = ['--no-build-isolation', '--no-index']
  except ImportError:
    isolation = []
  source = tmp_path_factory.mktemp('source')
  for name in BUILD_INPUTS:
    shutil.copy(os.path.join(ROOT, name), source / name)
  shutil.copytree(os.path.join(ROOT, 'padax'), source / 'padax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  out = tmp_path_factory.mktemp('wheel')
  result = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', *isolation, '-q',
       '-w', str(out), str(source)], capture_output=True, text=True,
      timeout=300, check=False)
  if result.returncode and not isolation:
    pytest.skip('no setuptools and wheel here, and pip could not fetch them '
                f'for an isolated build: {result.stderr[-500:]}')
  assert result.returncode == 0, result.stdout + result.stderr
  wheels = list(out.glob('padax-*.whl'))
  assert len(wheels) == 1, wheels
  return wheels[0]


def test_wheel_holds_only_padax(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  top = {n.split('/')[0] for n in names}
  assert top == {'padax', 'padax-0.1.0.dist-info'}, top
  package = sorted(n for n in names if n.startswith('padax/'))
  sources = sorted(f'padax/{f}' for f in os.listdir(os.path.join(ROOT, 'padax'))
                   if f.endswith('.py') or f == 'py.typed')
  assert package == sources, package
  assert any(n.endswith('LICENSE') for n in names), names


def test_install_requires_are_the_tested_minimums():
  """The bounds the CHANGELOG and the report name: the oldest versions the
  padax tests were run against (jax 0.6.0, optax 0.2.5, numpy 1.26.4)."""
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, 'setup.cfg'))
  requires = config['options']['install_requires'].split()
  assert requires == ['jax>=0.6.0', 'optax>=0.2.5', 'numpy>=1.26.4'], requires


def test_wheel_installs_in_a_fresh_venv(wheel, tmp_path):
  """A new venv (seeing the system's jax, optax and numpy, so no network):
  pip installs the wheel with its requirements already met, and padax
  imports from the venv, not from the checkout, run from elsewhere."""
  env_dir = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages',
                  '--without-pip', str(env_dir)], check=True, timeout=120)
  python = env_dir / 'bin' / 'python'
  install = subprocess.run(
      [sys.executable, '-m', 'pip', '--python', str(python), 'install', '-q',
       '--no-index', str(wheel)], capture_output=True, text=True,
      timeout=300, check=False)
  assert install.returncode == 0, install.stdout + install.stderr
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run(
      [str(python), '-c', 'import padax, os; print(os.path.realpath('
       'padax.__file__)); print(padax.__version__); '
       'print(padax.padam(0.1) is not None)'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
      check=False)
  assert result.returncode == 0, result.stderr
  location, version, built = result.stdout.split()
  assert location.startswith(os.path.realpath(env_dir)), location
  assert not location.startswith(ROOT)
  assert version == '0.1.0' and built == 'True'
