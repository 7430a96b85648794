"""GPU and TPU programs, verified from this CPU host: train.py's train and
eval steps and sweep.py's grid step, lowered for 'cuda' and 'tpu' (as
jax.export does), hold the stock operations and none of models/xla_cpu.py's
kernels.

One subprocess (4 simulated CPU devices, tests/scripts/export_programs.py)
lowers everything and summarises each module's text; this file asserts on
the summaries. The same summary of programs lowered for the CPU finds the
CPU kernels, so the checks can fail.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, 'tests', 'scripts', 'export_programs.py')
MODELS = ('vgg16', 'resnet18', 'wrn16_4')
# Convolutions of each model (forward), and its 2x2 max pools.
CONV_LAYERS = {'vgg16': 13, 'resnet18': 20, 'wrn16_4': 15}
MAX_POOLS = {'vgg16': 5, 'resnet18': 0, 'wrn16_4': 0}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  out = tmp_path_factory.mktemp('export')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                 env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count=4'
  proc = subprocess.run([sys.executable, SCRIPT, str(out)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-5000:]
  with open(out / 'report.json', encoding='utf-8') as f:
    return json.load(f), out


def _rows(report, **labels):
  rows = [r for r in report
          if all(r.get(k) == v for k, v in labels.items())]
  assert rows, labels
  return rows


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
@pytest.mark.parametrize('model', MODELS)
def test_accelerator_steps_hold_only_stock_operations(exported, model,
                                                      platform):
  report, _ = exported
  rows = _rows(report, model=model, platform=platform)
  # 2 dtypes x 2 meshes x (train, eval), jax.export for one of them.
  assert len([r for r in rows if r['step'] != 'grid_train']) == 8
  assert any(r['exported'] for r in rows)
  for r in rows:
    if r['step'] == 'grid_train':
      continue
    # Only platform_dependent's own conditionals, each left with one branch
    # (the plain one) and a constant index: XLA inlines them.
    assert r['multi_branch_cases'] == 0, r
    assert r['one_branch_cases'] == r['platform_selectors'] > 0, r
    assert r['kernel_concatenates'] == 0, r
    # BatchNorm reduces; only the classifier is a dot_general (forward, and
    # its two gradients in training).
    assert r['batched_dot_generals'] == 0, r
    assert r['dot_generals'] == (3 if r['step'] == 'train' else 1), r
    assert r['feature_group_counts'] == [1], r
    # Stock convolutions: each layer forward, and both gradients in
    # training (but the input gradient of the first layer).
    convs = CONV_LAYERS[model]
    assert r['convolutions'] == (3 * convs - 1 if r['step'] == 'train'
                                 else convs), r
    assert r['reduce_windows'] >= MAX_POOLS[model], r
    if r['step'] == 'train':
      assert r['select_and_scatters'] == MAX_POOLS[model], r


@pytest.mark.parametrize('model', MODELS)
def test_the_same_summary_finds_the_cpu_kernels(exported, model):
  report, _ = exported
  (r,) = _rows(report, model=model, platform='cpu', step='train',
               dtype='float32')
  assert r['multi_branch_cases'] > 0  # xla_cpu.materialized's conditionals.
  assert r['batched_dot_generals'] > 0  # BatchNorm's per-example sums.
  if model == 'vgg16':
    assert r['kernel_concatenates'] > 0  # Patches, max-pool gradients.
    assert r['select_and_scatters'] == 0


def test_grid_step_convolutions_are_grouped_on_accelerators(exported):
  """sweep.py's 9-member ResNet18 step: the members' convolutions, vmapped,
  lower to grouped convolutions (feature_group_count 9), no CPU kernels."""
  report, _ = exported
  for platform in ('cuda', 'tpu'):
    (r,) = _rows(report, step='grid_train', platform=platform)
    assert r['members'] == 9
    assert r['multi_branch_cases'] == 0, r
    assert r['kernel_concatenates'] == 0, r
    assert r['feature_group_counts'] == [9], r
    assert r['batch_group_counts'] == [1], r
    assert r['convolutions'] > 0
  (cpu,) = _rows(report, step='grid_train', platform='cpu')
  assert cpu['multi_branch_cases'] > 0


def test_exported_cuda_module_is_the_plain_program(exported):
  """The module jax.export wrote for ResNet18's train step on 'cuda'."""
  _, out = exported
  text = (out / 'resnet18_train_cuda.mlir').read_text(encoding='utf-8')
  assert 'jax.uses_shape_polymorphism' in text  # Written by jax.export.
  assert text.count('stablehlo.convolution') == 3 * CONV_LAYERS[
      'resnet18'] - 1
  # No per-example BatchNorm sums: no dot_general over a batch dimension.
  assert not re.search(r'stablehlo\.dot_general[^\n]*batching_dims', text)
