"""Optimizer step time on ResNet18-shaped parameters: padax vs Optax baselines.

  python benchmarks/optimizer_update.py [--rounds 6] [--steps-per-round 5]

One jitted `update` + `optax.apply_updates`, donated parameters and state;
median step time and its ratio to optax.amsgrad's in the same run.
"""

import argparse
import statistics
import time

import harness
# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import optax

import models
import padax
from training import input_pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position


def resnet18_parameter_shapes() -> list:
  """Shapes of the CIFAR ResNet18's trainable parameters (62 arrays)."""
  model = models.create_model('resnet18', 10)
  image = jnp.zeros((1, *input_pipeline.SPECS['cifar10'].image_shape))
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), image, train=False))['params']
  return [leaf.shape for leaf in jax.tree.leaves(params)]


def make_cases() -> dict:
  cifar10 = input_pipeline.SPECS['cifar10']
  steps_per_epoch = input_pipeline.steps_per_epoch(cifar10.train_examples, 128)
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

  for order in harness.rounds(runners.values(), args.rounds):
    for run in order:
      for _ in range(args.steps_per_round):
        t0 = time.perf_counter()
        run['params'], run['state'] = jax.block_until_ready(
            run['step'](run['params'], run['state'], grads))
        run['times'].append(time.perf_counter() - t0)

  base = statistics.median(runners['optax.amsgrad']['times']) if (
      'optax.amsgrad' in runners) else None
  harness.print_header(
      f'# {len(shapes)} arrays / {total:,} values, median of '
      f'{args.rounds * args.steps_per_round} steps')
  medians = {n: statistics.median(r['times']) for n, r in runners.items()}
  harness.print_table(('optimizer', 'median ms', 'vs optax.amsgrad'), [
      (name, f'{1e3 * m:.1f}', f'{m / base:.2f}x' if base else '-')
      for name, m in medians.items()])


if __name__ == '__main__':
  main()
