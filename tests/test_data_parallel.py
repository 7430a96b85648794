"""Data parallelism: `train_step` sharded over 4 CPU devices = on 1 device.

The 4 simulated devices need XLA_FLAGS=--xla_force_host_platform_device_count=4
before jax is imported, so the steps run in a subprocess
(tests/scripts/data_parallel_steps.py): tiny_cnn, Padam from configs/quick.py
via `optimizers.create_optimizer`, 3 steps on global batches of 32 random
uint8 images, through `MeshSteps` over a 4-device mesh (8 images per device),
over a 1-device mesh, and through plain `jax.jit(train_step)`. This file
compares the final states (params, batch_stats, optimizer state, rng, step)
and each step's metrics.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from training import configuration

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, 'tests', 'scripts', 'data_parallel_steps.py')
NUM_DEVICES = 4

# 4-device vs 1-device: the batch reductions (BatchNorm statistics, the mean
# loss and its gradient) and XLA's convolution blocking differ (4 partial sums
# of 8 and an all-reduce vs one sum of 32), so results differ by float32
# rounding. Measured max |a - b| / max|b| per leaf, XLA:CPU with
# host_devices.CPU_XLA_FLAGS, over data seeds 0-5 (2026-11-30, BatchNorm
# sums per example, models.xla_cpu's BatchNorm): 5.0e-6 (params),
# 1.6e-5 (Adam moments), 1.8e-7 (batch_stats), 2e-7 (metrics). Seed 3 also
# had a near-tie flip (a max-pool or ReLU decision that the rounding turned):
# up to 2% on a few conv/bn elements; the data seed here (0) has none.
# Each element must agree to 1e-5 of its own value or 5e-5 of its leaf's
# largest magnitude (the worst, 1.6e-5, is a first moment of conv1): ~3x the
# worst rounding seen, and >1000x below what a missing gradient all-reduce
# (per-device gradients, an O(1) change) would give.
RTOL = 1e-5
LEAF_ATOL = 5e-5
# XLA's backend optimisation off (as tests/test_multihost.py and
# tests/test_kernels.py FAST_COMPILE): a third less compile time, most of
# this file's. Every run of the script compiles with the same flags; the HLO
# passes (the all-reduce combiner included) still run, and the 4- vs
# 1-device differences stay within the same band (measured 2026-12-02: the
# worst element 0.10 of its tolerance, 0.11 with full optimisation; the same
# 11 all-reduces).
FAST_XLA_FLAGS = ('--xla_backend_optimization_level=0 '
                  '--xla_llvm_disable_expensive_passes=true')


def _subprocess_env():
  env = dict(os.environ)
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                 env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = (
      f'{flags} --xla_force_host_platform_device_count={NUM_DEVICES} '
      f'{FAST_XLA_FLAGS}').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  return env


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp('data_parallel') / 'states.npz'
  proc = subprocess.run([sys.executable, SCRIPT, str(out)], cwd=ROOT,
                        env=_subprocess_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, (
      f'{SCRIPT} failed:\n{proc.stdout}\n{proc.stderr[-5000:]}')
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  with np.load(out) as f:
    arrays = dict(f)
  return report, arrays


def _leaves(arrays, prefix):
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def test_runs_on_4_devices_with_batch_sharded(runs):
  report, _ = runs
  assert report['device_count'] == NUM_DEVICES
  # The script also asserts each shard sits on its own device and that the
  # gathered batch equals the host batch.
  assert report['mesh4_shard_shapes'] == [[32 // NUM_DEVICES, 32, 32, 3]]
  assert report['mesh1_shard_shapes'] == [[32, 32, 32, 3]]


def test_one_device_mesh_is_bitwise_plain_jit(runs):
  _, arrays = runs
  mesh1, plain = _leaves(arrays, 'mesh1/'), _leaves(arrays, 'jit/')
  assert mesh1.keys() == plain.keys() and plain
  for key in plain:
    np.testing.assert_array_equal(mesh1[key], plain[key], err_msg=key)


def test_data_parallel_state_matches_single_device(runs):
  _, arrays = runs
  sharded, single = _leaves(arrays, 'mesh4/'), _leaves(arrays, 'jit/')
  assert sharded.keys() == single.keys()
  groups = {'params', 'batch_stats', 'opt_state', 'rng', 'step', 'metrics'}
  seen = {g for g in groups for k in single if g in k}
  assert seen == groups, seen
  for key, expected in single.items():
    actual = sharded[key]
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if not np.issubdtype(expected.dtype, np.floating):
      np.testing.assert_array_equal(actual, expected, err_msg=key)  # step, rng
      continue
    scale = float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=RTOL,
                               atol=LEAF_ATOL * scale, err_msg=key)


def _elements(shapes):
  """(array elements, scalars) of HLO result shapes like 'f32[3,3]{1,0}' or
  '(f32[16]{0}, s32[])'."""
  arrays = scalars = 0
  for dims in re.findall(r'\b[a-z]+\d+\[([\d,]*)\]', ' '.join(shapes)):
    if dims:
      arrays += int(np.prod([int(d) for d in dims.split(',')]))
    else:
      scalars += 1
  return arrays, scalars


def test_collectives_are_what_the_math_needs(runs):
  """The compiled 4-device train step all-reduces exactly the gradients,
  BatchNorm's batch statistics forward (mean and variance, per channel) and
  a few metric scalars: no activations, no other kind of collective.

  BatchNorm's two backward sums (of dy and of dy * (x - mean), per channel)
  are its bias gradient and, times 1/std, its scale gradient:
  models.xla_cpu's BatchNorm all-reduces each once and uses it for
  both. (Autodiff of the plain formula all-reduced them twice: 4 values per
  channel.) XLA combines many all-reduces (the gradients go in a few
  tuples). Measured on tiny_cnn (3 BatchNorm layers): 11 all-reduces, jax
  0.10.2; a change that adds one (or moves more data) fails here.
  """
  report, arrays = runs
  found = report['mesh4_collectives']
  assert set(found) == {'all-reduce'}, found
  assert report['mesh1_collectives'] == {}
  init = _leaves(arrays, 'init/')
  num_params = sum(v.size for k, v in init.items() if k.startswith('.params'))
  bn_channels = sum(v.size for k, v in init.items()
                    if k.startswith('.batch_stats')) // 2  # mean, var
  assert bn_channels == 16 + 32 + 64
  elements, scalars = _elements(found['all-reduce'])
  assert elements == num_params + 2 * bn_channels, found
  assert scalars <= 2, found  # Summed metrics (loss, correct).
  assert len(found['all-reduce']) <= 11, found


def test_steps_changed_the_state(runs):
  # Not a vacuous comparison: 3 steps moved every parameter and statistic
  # leaf by more than 3x the tolerance band (BatchNorm scales, near 1.0, move
  # least: ~2e-4, 3.9x to 11x; the other leaves 96x to 17000x).
  _, arrays = runs
  init, final = _leaves(arrays, 'init/'), _leaves(arrays, 'jit/final/')
  moved = [k for k in init if k.startswith(('.params', '.batch_stats'))]
  assert len(moved) == 17, moved  # tiny_cnn: 11 param and 6 statistic leaves
  for key in moved:
    change = np.max(np.abs(final[key] - init[key]))
    band = (RTOL + LEAF_ATOL) * np.max(np.abs(final[key]))
    assert change > 3 * band, (key, change, band)
  assert int(final['.step']) == 3


def test_indivisible_batch_sizes_refused_on_4_devices(runs):
  # Real 4 devices: train_and_evaluate refuses before writing the workdir.
  report, _ = runs
  assert report['indivisible_batch_errors'] == {
      'batch_size': 'batch_size=30 does not divide evenly over 4 devices; '
                    'allowed: a multiple of 4.',
      'eval_batch_size': 'eval_batch_size=250 does not divide evenly over 4 '
                         'devices; allowed: a multiple of 4.',
  }


@pytest.mark.parametrize('batch_size,num_devices', [(30, 4), (128, 3), (1, 2)])
def test_check_batch_divides_raises(batch_size, num_devices):
  with pytest.raises(ValueError, match=(
      rf'^batch_size={batch_size} does not divide evenly over {num_devices} '
      rf'devices; allowed: a multiple of {num_devices}\.$')):
    configuration.check_batch_divides(batch_size, num_devices, 'batch_size')


@pytest.mark.parametrize('batch_size,num_devices', [(32, 4), (128, 8), (5, 1)])
def test_check_batch_divides_accepts(batch_size, num_devices):
  configuration.check_batch_divides(batch_size, num_devices, 'batch_size')
