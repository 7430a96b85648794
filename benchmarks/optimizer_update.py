"""Optimizer step time on ResNet18-shaped parameters: padax vs Optax baselines.

Times one jitted `update` + `optax.apply_updates` with donated parameters and
state, on a pytree shaped like the CIFAR ResNet18's parameters (11,173,962
float32 values in 62 arrays). Cases run interleaved in rounds, so the drift of
a noisy machine hits every case alike; reported: median step time and its
ratio to optax.amsgrad's in the same run.

  python benchmarks/optimizer_update.py [--rounds 6] [--steps-per-round 5]
"""

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import optax

import models
import padax
# pylint: enable=g-import-not-at-top,wrong-import-position


def resnet18_parameter_shapes() -> list:
  """Shapes of the CIFAR ResNet18's trainable parameters (62 arrays)."""
  model = models.create_model('resnet18', 10)
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))['params']
  return [leaf.shape for leaf in jax.tree.leaves(params)]


def make_cases(steps_per_epoch: int = 391) -> dict:
  p_decay = optax.exponential_decay(
      0.25, transition_steps=50 * steps_per_epoch, decay_rate=0.5,
      staircase=True)
  cases = {
      'optax.sgd(momentum=0.9)': optax.sgd(0.1, momentum=0.9),
      'optax.adam': optax.adam(1e-3),
      'optax.amsgrad': optax.amsgrad(1e-3),
  }
  for formulation in padax.FORMULATIONS:
    for p in (1 / 16, 1 / 8, 1 / 4, 1 / 2):
      cases[f'padam {formulation} p={p:g}'] = padax.padam(
          0.1, p=p, formulation=formulation)
    cases[f'padam {formulation} p=0.3 (jnp.power)'] = padax.padam(
        0.1, p=0.3, formulation=formulation)
    cases[f'padam {formulation} injected p=1/8'] = optax.inject_hyperparams(
        padax.padam)(learning_rate=0.1, p=0.125, formulation=formulation)
    cases[f'padam {formulation} scheduled p (report decay)'] = padax.padam(
        0.1, p=p_decay, formulation=formulation)
  return cases


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=6)
  parser.add_argument('--steps-per-round', type=int, default=5)
  parser.add_argument('--only', default='', help='substring filter on cases')
  args = parser.parse_args()

  shapes = resnet18_parameter_shapes()
  total = sum(int(np.prod(s)) for s in shapes)
  assert (len(shapes), total) == (62, 11_173_962), (len(shapes), total)
  rng = np.random.default_rng(0)
  grads = [jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in shapes]

  runners = {}
  for name, optimizer in make_cases().items():
    if args.only not in name:
      continue

    def step(params, state, grads, optimizer=optimizer):
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    params = [jnp.asarray(rng.normal(size=s).astype(np.float32))
              for s in shapes]
    state = optimizer.init(params)
    for _ in range(3):  # Compiles, then warms up.
      params, state = jax.block_until_ready(step(params, state, grads))
    runners[name] = dict(step=step, params=params, state=state, times=[])

  for _ in range(args.rounds):
    for run in runners.values():
      for _ in range(args.steps_per_round):
        t0 = time.perf_counter()
        run['params'], run['state'] = jax.block_until_ready(
            run['step'](run['params'], run['state'], grads))
        run['times'].append(time.perf_counter() - t0)

  base = statistics.median(runners['optax.amsgrad']['times']) if (
      'optax.amsgrad' in runners) else None
  print(f'# {time.strftime("%Y-%m-%d")}, {platform.node()}, '
        f'{jax.devices()[0].device_kind}, jax {jax.__version__}, '
        f'optax {optax.__version__}, {len(shapes)} arrays / {total:,} values, '
        f'median of {args.rounds * args.steps_per_round} steps')
  print('| optimizer | median ms | vs optax.amsgrad |')
  print('|---|---:|---:|')
  for name, run in runners.items():
    median = statistics.median(run['times'])
    ratio = f'{median / base:.2f}x' if base else '-'
    print(f'| {name} | {1e3 * median:.1f} | {ratio} |')


if __name__ == '__main__':
  main()
