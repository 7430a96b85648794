"""The environment that decides float rounding, for fixtures recorded per environment.

The same code gives other last bits on another CPU (XLA:CPU and the numeric
libraries dispatch on its features) or with other numeric packages. A fixture
that pins float results bit for bit therefore holds one recording per
`environment()`, plus the baseline commit whose code made them; where the
current environment has no recording, a test runs that commit's code from git
(`baseline_checkout`) and takes its output as the reference.
"""

import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMERIC_PACKAGES = ('jax', 'jaxlib', 'numpy', 'ml_dtypes', 'flax', 'optax',
                    'orbax-checkpoint')


def environment() -> dict:
  """What decides float rounding besides the code: the CPU (XLA:CPU and the
  numeric libraries dispatch on its features) and the numeric packages."""
  model, flags = platform.processor(), ''
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and model in ('', platform.processor()):
          model = value.strip()
        elif key.strip() == 'flags' and not flags:
          flags = ' '.join(sorted(value.split()))
  except OSError:
    pass
  packages = {}
  for name in NUMERIC_PACKAGES:
    try:
      packages[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      packages[name] = None
  return {'machine': platform.machine(), 'cpu': model,
          'cpu_flags_sha256': hashlib.sha256(flags.encode()).hexdigest()[:16],
          'packages': packages}


def recording_for(fixture: dict):
  """The entry of `fixture['recordings']` made in this environment, or None."""
  here = environment()
  return next((r for r in fixture['recordings'] if r['environment'] == here),
              None)


def baseline_checkout(commit: str, path) -> str:
  """The tree of `commit`, from this clone's git history, extracted to `path`
  (a pathlib.Path that does not exist yet). Skips the calling test, with the
  reason, where git or the commit is unavailable (an exported tree, a shallow
  clone)."""
  import pytest  # pylint: disable=g-import-not-at-top  # only tests call this
  git = shutil.which('git')
  # `.git` is a file, not a folder, in a `git worktree` checkout.
  if git is None or subprocess.run(
      [git, '-C', ROOT, 'rev-parse', '--git-dir'],
      capture_output=True).returncode:
    pytest.skip('no recording for this environment and no git history to '
                'run the baseline commit from')
  archive = path.with_suffix('.tar')
  done = subprocess.run([git, '-C', ROOT, 'archive', '-o', str(archive),
                         commit], capture_output=True, text=True, check=False)
  if done.returncode:
    pytest.skip(f'no recording for this environment and baseline commit '
                f'{commit} is not in this clone: {done.stderr.strip()}')
  with tarfile.open(archive) as tar:
    tar.extractall(path, filter='data')
  os.remove(archive)
  return str(path)
