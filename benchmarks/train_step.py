"""Images/s of the jitted train step (forward, loss, backward, Padam, augmentation).

  python benchmarks/train_step.py [--models vgg16,resnet18,wrn16_4]
      [--batch-size 128] [--steps 3] [--devices 1]
  python benchmarks/train_step.py --data-parallel   # 1 vs 4 simulated devices

Random CIFAR-shaped uint8 batches already on the device; the step is the one
`train.py` runs (`training.train_lib.MeshSteps`), donated state, Padam p=1/8.
`--data-parallel` runs the same global batch on 1 device and on 4 simulated
CPU devices (each in its own process, XLA_FLAGS set before JAX starts) and
reports the ratio: on one CPU the 4 "devices" share the same cores, so the
ratio measures the cost of partitioning and collectives, not a speed-up.
"""

import argparse
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import subprocess_case  # pylint: disable=g-import-not-at-top,wrong-import-position


def measure(model_name: str, batch_size: int, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top
  from configs import quick  # pylint: disable=g-import-not-at-top
  from training import optimizers, train_lib  # pylint: disable=g-import-not-at-top

  config = quick.get_config()
  model = models.create_model(model_name, 10)
  optimizer = optimizers.create_optimizer(config, steps_per_epoch=390)
  steps_fns = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer)
  state = jax.jit(lambda r: train_lib.create_train_state(r, model, optimizer),
                  out_shardings=steps_fns.replicated)(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = steps_fns.shard({
      'images': rng.integers(0, 256, (batch_size, 32, 32, 3), np.uint8),
      'labels': rng.integers(0, 10, (batch_size,), np.int32)})
  t0 = time.perf_counter()
  state, metrics = steps_fns.train_step(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = steps_fns.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  return dict(model=model_name, devices=jax.device_count(),
              batch_size=batch_size, median_s=median,
              images_per_second=batch_size / median,
              compile_and_first_step_s=first)


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
  # train.py's allocator (mimalloc on a Linux CPU host); children inherit it.
  from training import allocator  # pylint: disable=g-import-not-at-top
  allocator.use_mimalloc()
  main()
