"""Release artefacts, installs and CI's set-up (issue 15, point 6; issue 22,
points 1, 4).

`python -m build` on a copy of the checkout makes an sdist and, from that
sdist, a wheel: both pass `twine check --strict`, the long description
renders as PyPI renders Markdown, the wheel holds only the `padax` package
(with its py.typed and the license), and it installs in a fresh virtual
environment where `import padax` works outside the checkout, whether these
tests run from a virtualenv or from a system Python. .ci/run runs the
README's test command in a fresh virtual environment.
"""

import configparser
import email
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = '0.1.0'
# Not part of a clone (.gitignore), or written by builds and test runs.
NOT_IN_A_CLONE = ('.git', '__pycache__', '*.egg-info', 'build', 'dist',
                  'workdirs', '.venv*', '.pytest_cache', '.whl', '.gl')


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
  """{'sdist': path, 'wheel': path} built by `python -m build` from a copy of
  the checkout (setuptools writes its egg-info into the source folder), with
  the test environment's setuptools and wheel (requirements/test.txt), so
  offline and without a nested environment."""
  source = tmp_path_factory.mktemp('checkout') / 'padax'
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
  out = tmp_path_factory.mktemp('dist')
  result = subprocess.run(
      [sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(out),
       str(source)], capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  built = sorted(p.name for p in out.iterdir())
  assert built == [f'padax-{VERSION}-py3-none-any.whl',
                   f'padax-{VERSION}.tar.gz'], built
  return {'sdist': out / f'padax-{VERSION}.tar.gz',
          'wheel': out / f'padax-{VERSION}-py3-none-any.whl'}


def test_twine_check_strict_accepts_both(dists):
  result = subprocess.run(
      [sys.executable, '-m', 'twine', 'check', '--strict',
       str(dists['sdist']), str(dists['wheel'])],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.count('PASSED') == 2, result.stdout


def test_long_description_renders_as_on_pypi(dists):
  """twine check does not render Markdown (it cannot fail, it says); PyPI
  renders it with readme_renderer's GFM variant, which this runs on the
  wheel's metadata: headings, tables and code blocks come out as HTML."""
  from readme_renderer import markdown  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(dists['wheel']) as wheel:
    metadata = email.message_from_string(
        wheel.read(f'padax-{VERSION}.dist-info/METADATA').decode('utf-8'))
  assert metadata['Description-Content-Type'] == 'text/markdown'
  description = metadata.get_payload()
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    assert description.strip() == f.read().strip()
  html = markdown.render(description, variant='GFM')
  assert html is not None, 'readme_renderer[md] is not installed'
  headings, tables, fences, in_fence = 0, 0, 0, False
  for line in description.splitlines():
    if line.lstrip().startswith('```'):
      in_fence = not in_fence
      fences += in_fence
    elif not in_fence:
      headings += bool(re.match(r'#{1,6} ', line))
      tables += line.startswith('|---')
  assert not in_fence and fences > 5 and tables > 1 and headings > 10
  assert len(re.findall(r'<h[1-6][ >]', html)) == headings
  assert html.count('<table>') == tables
  assert html.count('<pre') == fences
  assert re.search(r'<h1[^>]*>padax', html), html[:300]


def test_sdist_holds_the_package_not_the_training_code(dists):
  with tarfile.open(dists['sdist']) as sdist:
    names = {n.split('/', 1)[1] for n in sdist.getnames() if '/' in n}
  package = {f'padax/{f}' for f in os.listdir(os.path.join(ROOT, 'padax'))
             if f.endswith('.py') or f == 'py.typed'}
  assert package <= names, package - names
  for name in ('README.md', 'LICENSE', 'setup.cfg', 'pyproject.toml',
               'PKG-INFO'):
    assert name in names, name
  top = {n.split('/')[0] for n in names}
  assert not top & {'tests', 'training', 'models', 'train.py', 'benchmarks'}


def test_wheel_holds_only_padax(dists):
  names = zipfile.ZipFile(dists['wheel']).namelist()
  top = {n.split('/')[0] for n in names}
  assert top == {'padax', f'padax-{VERSION}.dist-info'}, top
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


def _site_dirs_of_this_interpreter():
  """Where this interpreter imports installed packages from: its
  site-packages, a virtualenv's included (`--system-site-packages` of
  sys.executable would see the base interpreter's instead, without jax)."""
  dirs = list(site.getsitepackages())
  if site.ENABLE_USER_SITE:
    dirs.append(site.getusersitepackages())
  return [d for d in dirs if os.path.isdir(d)]


def test_wheel_installs_in_a_fresh_venv(dists, tmp_path):
  """A new venv that sees this environment's jax, optax and numpy (a .pth
  file naming its site-packages; no network): pip installs the wheel with
  its requirements already met, and padax imports from the venv, not from
  the checkout, run from elsewhere."""
  env_dir = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(env_dir)],
                 check=True, timeout=120)
  python = env_dir / 'bin' / 'python'
  purelib = subprocess.run(
      [str(python), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
      capture_output=True, text=True, timeout=60, check=True).stdout.strip()
  assert purelib.startswith(str(env_dir)), purelib
  # Lines of a .pth file are appended to sys.path after the venv's own
  # site-packages; .pth files inside them (an editable padax) are not run.
  with open(os.path.join(purelib, 'outer_environment.pth'), 'w',
            encoding='utf-8') as f:
    f.write(''.join(d + '\n' for d in _site_dirs_of_this_interpreter()))
  install = subprocess.run(
      [sys.executable, '-m', 'pip', '--python', str(python), 'install', '-q',
       '--no-index', str(dists['wheel'])],
      capture_output=True, text=True, timeout=300, check=False)
  assert install.returncode == 0, install.stdout + install.stderr
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
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
  assert version == VERSION and built == 'True'


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
  """.ci/run installs and tests as the README tells a user: its last line is
  the README's test command, run in a virtual environment it has just made;
  and the README promises no install from the package index."""
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    readme = f.read()
  with open(os.path.join(ROOT, '.ci', 'run'), encoding='utf-8') as f:
    ci = f.read().strip().splitlines()
  commands = re.findall(r'^pip install -e \. -r requirements/test\.txt && .+$',
                        readme, re.M)
  assert len(commands) == 1 and ci[-1] == commands[0], (commands, ci[-1])
  venv = ci.index('"${PYTHON:-python3}" -m venv --clear .venv-ci')
  assert ci.index('source .venv-ci/bin/activate') > venv
  assert 'pip install padax' not in readme
