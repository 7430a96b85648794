"""train.py's train step in two checkouts, interleaved: is a change slower?

  python benchmarks/ab_checkouts.py --base d055b35 --models resnet18,vgg16

Checks `--base` out into a temporary git worktree and times the step of
train.py's set-up (the paper config's Padam, MeshSteps over the devices
train.py would use for the model, XLA:CPU flags, mimalloc where installed)
in the base and in this checkout, alternately (which goes first alternates
too), `--rounds` times each: a fresh process per measurement, each
importing its own tree's code. Prints
images/s per round and the median ratio this/base per model. Uses only the
API both trees share (models.create_model, training.optimizers,
training.train_lib), so any two commits of the restructured history compare.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import run_info

# Runs inside the measured tree (cwd, PYTHONPATH): times `steps` train steps
# after 2 compiling/warm-up steps; prints images/s.
_CHILD = r'''
import json, sys, time
from training import host_devices
host_devices.set_cpu_xla_flags()
import jax, jax.numpy as jnp, numpy as np
import models
from configs import paper
from training import optimizers, train_lib
model_name, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = paper.get_config(f'{model_name},cifar10,padam')
optimizer = optimizers.create_optimizer(config, 391)
model = models.create_model(model_name, 10)
mesh_steps = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer)
state = jax.jit(lambda k: train_lib.create_train_state(k, model, optimizer),
                out_shardings=mesh_steps.replicated)(jax.random.key(0))
rng = np.random.default_rng(0)
batch_data = mesh_steps.shard({
    'images': rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
    'labels': rng.integers(0, 10, (batch,)).astype(np.int32)})
for _ in range(2):
  state, metrics = mesh_steps.train_step(state, batch_data)
jax.block_until_ready(metrics)
t0 = time.perf_counter()
for _ in range(steps):
  state, metrics = mesh_steps.train_step(state, batch_data)
jax.block_until_ready(metrics)
print(json.dumps(batch * steps / (time.perf_counter() - t0)))
'''


def _environment(tree: str) -> dict:
  env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS='cpu')
  sys.path.insert(0, tree)
  try:
    from training import allocator  # pylint: disable=g-import-not-at-top
    library = allocator.mimalloc_library()
  except ImportError:
    library = None
  finally:
    sys.path.remove(tree)
  if library:
    env['LD_PRELOAD'] = library
  return env


def _measure(tree: str, model: str, batch: int, steps: int) -> float:
  out = subprocess.run(
      [sys.executable, '-c', _CHILD, model, str(batch), str(steps)],
      cwd=tree, env=_environment(tree), capture_output=True, text=True,
      check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--base', required=True, help='git revision to compare')
  parser.add_argument('--models', default='resnet18,vgg16')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  print('\n'.join(run_info.header_lines()))
  print(f'# {args.rounds} rounds of {args.steps} steps, batch '
        f'{args.batch_size}, base {args.base}')
  with tempfile.TemporaryDirectory() as tmp:
    base = os.path.join(tmp, 'base')
    subprocess.run(['git', 'worktree', 'add', '--detach', '-q', base,
                    args.base], cwd=run_info.ROOT, check=True)
    try:
      for model in args.models.split(','):
        ratios = []
        for r in range(args.rounds):
          # Alternate which tree goes first: a process started right after
          # another one's exit runs a little differently.
          trees = [run_info.ROOT, base][::1 if r % 2 == 0 else -1]
          measured = {t: _measure(t, model, args.batch_size, args.steps)
                      for t in trees}
          this, then = measured[run_info.ROOT], measured[base]
          ratios.append(this / then)
          print(f'{model} round {r + 1}: this {this:.1f} img/s, base '
                f'{then:.1f} img/s, ratio {this / then:.3f}', flush=True)
        print(f'{model}: median ratio this/base {statistics.median(ratios):.3f}')
    finally:
      subprocess.run(['git', 'worktree', 'remove', '--force', base],
                     cwd=run_info.ROOT, check=False)


if __name__ == '__main__':
  main()
