"""Compile time of train.py's train step, cold and from the persistent cache.

  python benchmarks/compile_time.py [--models tiny_cnn,resnet18,vgg16,wrn16_4]
      [--batch-size 128]

For each model, two fresh processes in turn share one new, empty persistent
compilation cache (as train.py and sweep.py turn on by default): the first
compiles the train step (`MeshSteps` on one device) into it, the second (as
a resumed or repeated run) loads it. Each reports the seconds of `lower` and
of `compile`, and whether JAX logged a cache hit.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import run_info
import subprocess_case
import train_step
# pylint: enable=g-import-not-at-top,wrong-import-position


def compile_step(model_name: str, batch_size: int) -> dict:
  """In a fresh process: lower and compile the train step."""
  # pylint: disable=g-import-not-at-top
  import logging
  import jax
  import numpy as np
  from training import train_lib
  # pylint: enable=g-import-not-at-top

  hits = []

  class Hits(logging.Handler):

    def emit(self, record):
      if 'Persistent compilation cache hit' in record.getMessage():
        hits.append(record.getMessage())

  logging.getLogger('jax').addHandler(Hits())  # JAX's loggers' root
  model, optimizer, steps = train_step.make_steps(model_name,
                                                  devices=jax.devices()[:1])
  state = jax.eval_shape(
      lambda: train_lib.create_train_state(jax.random.key(0), model,
                                           optimizer))
  batch = {'images': jax.ShapeDtypeStruct((batch_size, 32, 32, 3), np.uint8),
           'labels': jax.ShapeDtypeStruct((batch_size,), np.int32)}
  t0 = time.perf_counter()
  lowered = steps.train_step.lower(state, batch)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return dict(model=model_name, lower_s=t1 - t0, compile_s=t2 - t1,
              cache_hit=any('train_step' in h for h in hits))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='tiny_cnn,resnet18,vgg16,wrn16_4')
  parser.add_argument('--batch-size', type=int, default=128)
  args = parser.parse_args()
  # train.py's XLA:CPU flags, for this process and the ones it starts.
  from training import host_devices  # pylint: disable=g-import-not-at-top
  host_devices.set_cpu_xla_flags()
  print('\n'.join(run_info.header_lines()))
  print(f'# train step at batch {args.batch_size} on one CPU device; each '
        'model: a fresh cache, then two processes in turn')
  print('| model | cold: lower + compile (s) | second process: lower + load '
        '(s) | cache hit | compile saved |')
  print('|---|---:|---:|---|---:|')
  for name in args.models.split(','):
    with tempfile.TemporaryDirectory() as cache:
      env = dict(JAX_COMPILATION_CACHE_DIR=cache, JAX_LOG_COMPILES='1',
                 JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
      cold, warm = (subprocess_case.run(
          compile_step, dict(model_name=name, batch_size=args.batch_size),
          env=env) for _ in range(2))
    print(f'| {name} | {cold["lower_s"]:.1f} + {cold["compile_s"]:.1f} | '
          f'{warm["lower_s"]:.1f} + {warm["compile_s"]:.1f} | '
          f'{"yes" if warm["cache_hit"] and not cold["cache_hit"] else "no"} '
          f'| {cold["compile_s"] - warm["compile_s"]:.1f} s |', flush=True)


if __name__ == '__main__':
  main()
