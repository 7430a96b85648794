"""Shared test set-up: run from the repository root so `models`, `training` import."""
import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# The XLA:CPU options train.py and sweep.py run with, for in-process tests
# too (before any test starts JAX's backend).
from training import host_devices  # pylint: disable=g-import-not-at-top,wrong-import-position
host_devices.set_cpu_xla_flags()

from tests import data_fixtures  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def cifar10_subset():
  """The folder of genuine CIFAR-10 images named by $PADAX_TEST_CIFAR10_SUBSET
  (holding cifar-10-batches-py/ and cifar-10-batches-bin/; .ci/run sets it
  where such a copy exists); the test is skipped when the variable is unset."""
  path = data_fixtures.cifar10_subset_path()
  if path is None:
    pytest.skip(f'genuine CIFAR-10 images: set {data_fixtures.SUBSET_ENV} '
                'to a folder holding cifar-10-batches-py/ and '
                'cifar-10-batches-bin/ (python -m training.cifar10_subset DIR '
                'builds one from the downloaded CIFAR-10)')
  return path


@pytest.fixture(autouse=True, scope='session')
def _temporary_files_under_basetemp(tmp_path_factory):
  """Libraries' own temporary files (TFDS leaves empty `tmp*tfds` folders
  behind for every unprepared builder) go under pytest's basetemp, which
  pytest prunes, not into /tmp; subprocesses inherit it through TMPDIR."""
  path = str(tmp_path_factory.mktemp('tempfile'))
  saved = tempfile.tempdir, os.environ.get('TMPDIR')
  tempfile.tempdir = path
  os.environ['TMPDIR'] = path
  yield
  tempfile.tempdir = saved[0]
  if saved[1] is None:
    os.environ.pop('TMPDIR', None)
  else:
    os.environ['TMPDIR'] = saved[1]
