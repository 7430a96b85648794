"""Exports train.py's and sweep.py's steps for GPUs and TPUs from this CPU
host (tests/test_export.py), and summarises each module's text.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python tests/scripts/export_programs.py OUT_DIR [--models vgg16,...]

The train and eval steps as train.py builds them (train_lib.MeshSteps over a
1-device and a 4-device data mesh, the Padam optimizer from
optimizers.create_optimizer), float32 and bfloat16, and sweep.py's step
(sweeps.grid.GridSteps, 9 ResNet18 members on a 1-device grid mesh), each
lowered for 'cuda' and for 'tpu' as jax.export does (one trace, lowered
once per platform; jax.export itself for each model's 1-device float32
train step). That step and the grid step are also lowered for the CPU, as a
control that the summary sees the CPU kernels. (A module lowered for several platforms at once holds
per-platform conditionals of JAX's own, e.g. for random bits: one platform
at a time keeps the check simple.)
Writes OUT_DIR/report.json (one summary per module) and the CUDA modules
of ResNet18's train step and of the grid step, to read.
"""
import argparse
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
from jax import export

import models
from configs import default
from sweeps import grid
from training import optimizers, train_lib

ACCELERATORS = ('cuda', 'tpu')
BATCH = 8  # 2 examples per device on the 4-device mesh.
MEMBERS = 9


def _regions(text: str, start: int) -> list:
  """Bodies of the regions of the op whose region list starts at `start`."""
  assert text[start] == '(' and text[start + 1] == '{', text[start:start + 20]
  bodies, depth, body_start = [], 0, None
  for i in range(start + 1, len(text)):
    c = text[i]
    if c == '{':
      depth += 1
      if depth == 1:
        body_start = i + 1
    elif c == '}':
      depth -= 1
      if depth == 0:
        bodies.append(text[body_start:i])
        if text[i + 1] == ')':
          return bodies
  raise ValueError('unterminated region list')


SELECTOR = re.compile(r'^\s*(%\S+ = stablehlo\.constant dense<-?\d+> : '
                      r'tensor<i32>[^\n]*\n)?\s*stablehlo\.return %\S+ : '
                      r'tensor<i32>[^\n]*\s*$')


def summarize(text: str) -> dict:
  """What the tests assert on: conditionals by kind, convolutions,
  pools, dot_generals and 4-D concatenations."""
  selectors = one_branch = data_dependent = 0
  for m in re.finditer(r'"stablehlo\.case"\(%[^)]*\) ', text):
    bodies = _regions(text, m.end())
    if all(SELECTOR.match(b) for b in bodies):
      selectors += 1  # platform_index's: every branch returns a constant.
    elif len(bodies) == 1:
      one_branch += 1
    else:
      data_dependent += 1
  groups = sorted({int(g) for g in re.findall(
      r'feature_group_count = (\d+)', text)})
  return dict(
      platform_selectors=selectors, one_branch_cases=one_branch,
      multi_branch_cases=data_dependent,
      convolutions=len(re.findall(r'stablehlo\.convolution', text)),
      feature_group_counts=groups,
      batch_group_counts=sorted({int(g) for g in re.findall(
          r'batch_group_count = (\d+)', text)}),
      reduce_windows=len(re.findall(r'"stablehlo\.reduce_window"', text)),
      select_and_scatters=len(re.findall(r'"stablehlo\.select_and_scatter"',
                                         text)),
      dot_generals=len(re.findall(r'stablehlo\.dot_general', text)),
      batched_dot_generals=len(re.findall(
          r'stablehlo\.dot_general[^\n]*batching_dims', text)),
      # The patch matrices and max-pool gradients of models/xla_cpu.py: 4 or
      # more pieces of rank >= 4 (5 under vmap) put together.
      kernel_concatenates=len(re.findall(
          r'stablehlo\.concatenate (?:%[^,]+, ){3,}[^\n]*: \(tensor<'
          r'(?:\d+x){4}', text)),
  )


def _abstract(tree, sharding=None):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('out_dir')
  parser.add_argument('--models', default='vgg16,resnet18,wrn16_4')
  args = parser.parse_args()
  config = default.get_config()  # Padam, the paper's setting.
  optimizer = optimizers.create_optimizer(config, steps_per_epoch=10)
  devices = jax.devices()
  assert len(devices) == 4, devices
  batch = {'images': jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.uint8),
           'labels': jax.ShapeDtypeStruct((BATCH,), jnp.int32)}
  eval_batch = dict(batch, mask=jax.ShapeDtypeStruct((BATCH,), jnp.float32))
  report = []

  def record(fn, fn_args, platforms, use_export=False, **labels):
    """Lowers fn for each platform alone (jax.export for the accelerators
    where use_export); returns the CUDA module text."""
    start = time.perf_counter()
    traced = fn.trace(*fn_args)
    modules = {}
    for platform in platforms:
      use_export = use_export and platform in ACCELERATORS
      if use_export:
        modules[platform] = export.export(fn, platforms=(platform,))(
            *fn_args).mlir_module()
      else:
        modules[platform] = traced.lower(
            lowering_platforms=(platform,)).as_text()
      report.append(dict(labels, platform=platform,
                         exported=use_export, **summarize(modules[platform])))
    report[-1]['seconds'] = round(time.perf_counter() - start, 2)
    return modules.get('cuda')

  for name in args.models.split(','):
    for dtype in ('float32', 'bfloat16'):
      model = models.create_model(name, 10, dtype=jnp.dtype(dtype))
      state = jax.eval_shape(lambda m=model: train_lib.create_train_state(
          jax.random.key(0), m, optimizer))
      for count in (1, 4):
        steps = train_lib.MeshSteps(train_lib.make_mesh(devices[:count]),
                                    model, optimizer)
        kinds = [('train', steps.train_step, (state, batch)),
                 ('eval', steps.eval_step, (state, eval_batch))]
        for step, fn, fn_args in kinds:
          # The CPU control (and jax.export): float32's 1-device train step.
          first = count == 1 and step == 'train' and dtype == 'float32'
          platforms = ACCELERATORS + (('cpu',) if first else ())
          module = record(fn, fn_args, platforms, use_export=first,
                          model=name, dtype=dtype, devices=count, step=step)
          if (name, dtype, count, step) == ('resnet18', 'float32', 1,
                                            'train'):
            with open(os.path.join(args.out_dir, 'resnet18_train_cuda.mlir'),
                      'w', encoding='utf-8') as f:
              f.write(module)

  # sweep.py's step: 9 ResNet18 members, a shared batch.
  model = models.create_model('resnet18', 10)
  states = jax.eval_shape(lambda: jax.vmap(
      lambda key: train_lib.create_train_state(key, model, optimizer))(
          jax.random.split(jax.random.key(0), MEMBERS)))
  steps = grid.GridSteps(grid.make_grid_mesh(devices[:1]), model, optimizer)
  module = record(steps.train_step, (states, batch), ACCELERATORS + ('cpu',),
                  model='resnet18', dtype='float32', devices=1,
                  step='grid_train', members=MEMBERS)
  with open(os.path.join(args.out_dir, 'resnet18_grid_train_cuda.mlir'), 'w',
            encoding='utf-8') as f:
    f.write(module)
  with open(os.path.join(args.out_dir, 'report.json'), 'w',
            encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  print(json.dumps(dict(modules=len(report),
                        seconds=sum(r.get('seconds', 0) for r in report))))


if __name__ == '__main__':
  main()
