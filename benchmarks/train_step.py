"""Images/s of train.py's jitted train step, and the set-up every benchmark of
that step shares.

  python benchmarks/train_step.py [--models vgg16,resnet18,wrn16_4]
      [--batch-size 128] [--steps 3]
  python benchmarks/train_step.py --data-parallel   # 1 vs 4 simulated devices

Random CIFAR-shaped uint8 batches already on the device; the step is the one
`train.py` runs (`training.train_lib.MeshSteps`: augmentation, forward, loss,
backward, Padam p=1/8 injected, BatchNorm update), donated state.
`--data-parallel` runs the same global batch on 1 device and on 4 simulated
CPU devices, each in a fresh process: on one CPU the 4 "devices" share the
same cores, so the ratio measures the cost of partitioning and collectives,
not a speed-up.

The functions import the project's code when called, not when this file is
imported, so that `ab_checkouts.py` can run `measure` on another checkout.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import subprocess_case

STEPS_PER_EPOCH = 390


def random_batch(rng, n: int) -> dict:
  """`n` random CIFAR-shaped uint8 images and int32 labels, on the host."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return {'images': rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
          'labels': rng.integers(0, 10, (n,), np.int32)}


def make_steps(model_name: str, config=None, devices=None, dtype=None,
               steps_per_epoch: int = STEPS_PER_EPOCH):
  """(model, optimizer, MeshSteps) as train.py builds them; `config` defaults
  to configs/quick.py's (Padam p=1/8, lr 0.1, L2 5e-4, injected)."""
  # pylint: disable=g-import-not-at-top
  import models
  from configs import quick
  from training import optimizers, train_lib
  # pylint: enable=g-import-not-at-top
  model = models.create_model(
      model_name, 10, **({} if dtype is None else dict(dtype=dtype)))
  optimizer = optimizers.create_optimizer(config or quick.get_config(),
                                          steps_per_epoch)
  return model, optimizer, train_lib.MeshSteps(train_lib.make_mesh(devices),
                                               model, optimizer)


def build(model_name: str, batch_size: int, config=None):
  """make_steps' MeshSteps, its initial state and a random batch, on the
  devices."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from training import train_lib
  # pylint: enable=g-import-not-at-top
  model, optimizer, steps = make_steps(model_name, config)
  state = jax.jit(lambda r: train_lib.create_train_state(r, model, optimizer),
                  out_shardings=steps.replicated)(jax.random.key(0))
  batch = steps.shard(random_batch(np.random.default_rng(0), batch_size))
  return steps, state, batch


def measure(model_name: str, batch_size: int, steps: int, warmup: int = 1,
            config: str = 'quick') -> dict:
  """Times `steps` train steps after `warmup` (the first compiles), with
  train.py's XLA:CPU flags; `config` 'paper' is configs/paper.py's Padam."""
  from training import host_devices  # pylint: disable=g-import-not-at-top
  host_devices.set_cpu_xla_flags()  # Before JAX starts (no-op if set).
  import jax  # pylint: disable=g-import-not-at-top
  from configs import paper  # pylint: disable=g-import-not-at-top
  step_fns, state, batch = build(
      model_name, batch_size,
      paper.get_config(f'{model_name},cifar10,padam')
      if config == 'paper' else None)
  times = []
  for _ in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = step_fns.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  median = statistics.median(times[warmup:])
  return dict(model=model_name, devices=jax.device_count(),
              batch_size=batch_size, times=times[warmup:], median_s=median,
              images_per_second=batch_size / median,
              compile_and_first_step_s=times[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='vgg16,resnet18,wrn16_4')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--data-parallel', action='store_true')
  args = parser.parse_args()
  # train.py's XLA:CPU flags, for this process and the ones it starts.
  from training import host_devices  # pylint: disable=g-import-not-at-top
  host_devices.set_cpu_xla_flags()
  names = args.models.split(',')

  import jax  # pylint: disable=g-import-not-at-top
  print(f'# {time.strftime("%Y-%m-%d")}, {platform.node()}, '
        f'{os.cpu_count()} cores, {jax.devices()[0].device_kind}, '
        f'jax {jax.__version__}, batch {args.batch_size}, '
        f'median of {args.steps} steps after the first')
  if args.data_parallel:
    print('| model | 1 device img/s | 4 simulated devices img/s | '
          '4-device step time / 1-device |')
    print('|---|---:|---:|---:|')
    for name in names:
      one, four = (subprocess_case.run(
          measure, dict(model_name=name, batch_size=args.batch_size,
                        steps=args.steps), devices=n,
          env={'JAX_PLATFORMS': 'cpu'}) for n in (1, 4))
      print(f'| {name} | {one["images_per_second"]:.1f} | '
            f'{four["images_per_second"]:.1f} | '
            f'{four["median_s"] / one["median_s"]:.2f}x |', flush=True)
    return
  print('| model | images/s | step s | compile + first step s |')
  print('|---|---:|---:|---:|')
  for name in names:
    r = measure(name, args.batch_size, args.steps)
    print(f'| {name} | {r["images_per_second"]:.1f} | {r["median_s"]:.2f} | '
          f'{r["compile_and_first_step_s"]:.1f} |', flush=True)


if __name__ == '__main__':
  sys.path.insert(0, subprocess_case.ROOT)
  # train.py's allocator (mimalloc on a Linux CPU host); children inherit it.
  from training import allocator  # pylint: disable=g-import-not-at-top
  allocator.use_mimalloc()
  main()
