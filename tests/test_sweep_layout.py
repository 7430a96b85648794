"""A resumed sweep computes on the device layout it was trained on, or is
refused before anything is written (issue 25, class 5).

The layout (grid x data devices) decides the float rounding of every row;
sweep.py records it in config.json (`sweep_layout`). Each case resumes a copy
of one 1-epoch sweep (chunks of one member, so 4 devices for the one member
trained at a time) to 2 epochs and compares it with the uninterrupted 2-epoch
sweep, or checks the refusal: exit 2, one line, no traceback, and no file
changed in or around the workdir.
"""

import json
import os
import shutil
from typing import Callable, Optional

import pytest

from tests import fault_harness as harness
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import

pytestmark = pytest.mark.slow


def _sweep(workdir, num_epochs, cache_dir, extra=(), env=None):
  return harness.run_script(
      [harness.FAULT_RUN, '--mock_num_train=128', '--mock_num_test=64',
       f'--workdir={workdir}', *harness.sweep_flags(num_epochs=num_epochs),
       *extra], os.path.dirname(str(workdir)),
      env={**harness.env_with_cache(cache_dir), **(env or {})})


def _rows(workdir):
  return {name: harness.without_timing(rows) for name, rows in
          harness.metrics_files(str(workdir)).items() if name != '.'}


@pytest.fixture(scope='module')
def sweeps(tmp_path_factory, compilation_cache_dir):  # pylint: disable=redefined-outer-name
  """(1-epoch workdir, rows of the uninterrupted 2-epoch sweep, cache)."""
  root = tmp_path_factory.mktemp('layout')
  for name, epochs in (('straight', 2), ('one_epoch', 1)):
    result = _sweep(root / name, epochs, compilation_cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
  return root / 'one_epoch', _rows(root / 'straight'), compilation_cache_dir


def _drop_layout(workdir):
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    config = json.load(f)
  del config['sweep_layout']
  with open(path, 'w') as f:
    json.dump(config, f, indent=2)


CASES = [
    # (id, change to the 1-epoch workdir, resume flags, resume environment,
    #  None: rows as the uninterrupted sweep's; else the refusal's fragments)
    ('chunks of 1, resumed with --chunk auto (the issue\'s example)', None,
     ['--chunk', 'auto'], {}, None),
    ('resumed with the device count forced by JAX_NUM_CPU_DEVICES', None,
     [], {'JAX_NUM_CPU_DEVICES': '2'},
     ('holds a sweep trained on 1 x 4 devices (grid x data); this process '
      'has 2 device(s)', 'allowed: 4 devices',
      'the device layout changes float rounding')),
    ('resumed with the device count forced by XLA_FLAGS', None,
     [], {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'},
     ('holds a sweep trained on 1 x 4 devices (grid x data); this process '
      'has 8 device(s), giving 2 x 4', 'allowed: 4 devices')),
    ('a sweep recorded before layouts were, resumed as before', _drop_layout,
     [], {}, None),
]


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_resume_on_the_recorded_layout_or_refused(tmp_path, sweeps, case):
  _, change, flags, env, refusal = case
  one_epoch, straight, cache_dir = sweeps
  workdir = tmp_path / 'W'
  shutil.copytree(one_epoch, workdir)
  change: Optional[Callable] = change
  if change is not None:
    change(str(workdir))
  before = harness.snapshot_around(str(tmp_path))
  result = _sweep(workdir, 2, cache_dir, flags, env)
  if refusal is None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert _rows(workdir) == straight
  else:
    harness.assert_one_error(result, refusal)
    assert harness.snapshot_around(str(tmp_path)) == before
