"""Images/s of train.py's jitted train step, and the set-up every benchmark of
that step shares (importing the project's code only when called, so that
ab_checkouts.py can run `measure` on another checkout).

  python benchmarks/train_step.py [--models vgg16,resnet18,wrn16_4]
      [--batch-size 128] [--steps 3]
  python benchmarks/train_step.py --data-parallel   # 1 vs 4 simulated devices
"""

import argparse
import statistics
import time

import subprocess_case

def cifar10(batch_size: int = 128) -> dict:
  """CIFAR-10's image shape, classes and steps per epoch, from its
  `training.input_pipeline` spec: `measure` takes them as an argument, so
  that it also runs on checkouts older than the spec (ab_checkouts.py)."""
  from training import input_pipeline  # pylint: disable=g-import-not-at-top
  spec = input_pipeline.SPECS['cifar10']
  return dict(image_shape=spec.image_shape, num_classes=spec.num_classes,
              steps_per_epoch=input_pipeline.steps_per_epoch(
                  spec.train_examples, batch_size))


def random_batch(rng, n: int, dataset=None) -> dict:
  """`n` random uint8 images of `dataset`'s shape (default: cifar10()) and
  int32 labels, on the host."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  dataset = dataset or cifar10()
  return {'images': rng.integers(0, 256, (n, *dataset['image_shape']),
                                 np.uint8),
          'labels': rng.integers(0, dataset['num_classes'], (n,), np.int32)}


def make_steps(model_name: str, config=None, devices=None, dtype=None,
               steps_per_epoch: int = 0):
  """(model, optimizer, MeshSteps) as train.py builds them; `config` defaults
  to configs/quick.py's (Padam p=1/8, lr 0.1, L2 5e-4, injected), and
  `steps_per_epoch` to CIFAR-10's at batch 128."""
  # pylint: disable=g-import-not-at-top
  import models
  from configs import quick
  from training import optimizers, train_lib
  # pylint: enable=g-import-not-at-top
  model = models.create_model(
      model_name, 10, **({} if dtype is None else dict(dtype=dtype)))
  optimizer = optimizers.create_optimizer(
      config or quick.get_config(),
      steps_per_epoch or cifar10()['steps_per_epoch'])
  return model, optimizer, train_lib.MeshSteps(train_lib.make_mesh(devices),
                                               model, optimizer)


def build(model_name: str, batch_size: int, config=None, dataset=None):
  """make_steps' MeshSteps, its initial state and a random batch, on the
  devices."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from training import train_lib
  # pylint: enable=g-import-not-at-top
  dataset = dataset or cifar10()
  model, optimizer, steps = make_steps(model_name, config,
                                       steps_per_epoch=dataset[
                                           'steps_per_epoch'])
  state = jax.jit(lambda r: train_lib.create_train_state(r, model, optimizer),
                  out_shardings=steps.replicated)(jax.random.key(0))
  batch = steps.shard(random_batch(np.random.default_rng(0), batch_size,
                                   dataset))
  return steps, state, batch


def measure(model_name: str, batch_size: int, steps: int, warmup: int = 1,
            config: str = 'quick', dataset=None) -> dict:
  """Times `steps` train steps after `warmup` (the first compiles), with
  train.py's XLA:CPU flags; `config` 'paper' is configs/paper.py's Padam,
  `dataset` as cifar10() gives it (its default)."""
  from training import host_devices  # pylint: disable=g-import-not-at-top
  host_devices.set_cpu_xla_flags()  # Before JAX starts (no-op if set).
  import jax  # pylint: disable=g-import-not-at-top
  from configs import paper  # pylint: disable=g-import-not-at-top
  step_fns, state, batch = build(
      model_name, batch_size,
      paper.get_config(f'{model_name},cifar10,padam')
      if config == 'paper' else None, dataset)
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
  harness.print_header(f'# batch {args.batch_size}, median of {args.steps} '
                       'steps after the first')
  kwargs = dict(batch_size=args.batch_size, steps=args.steps)

  def rows():
    for name in args.models.split(','):
      if args.data_parallel:  # The same global batch, a process each.
        results = [subprocess_case.run(
            measure, dict(kwargs, model_name=name), devices=n,
            env={'JAX_PLATFORMS': 'cpu'}) for n in (1, 4)]
      else:
        results = [measure(name, **kwargs)]
      for r in results:
        yield (name, r['devices'], f'{r["images_per_second"]:.1f}',
               f'{r["median_s"]:.3f}',
               f'{r["compile_and_first_step_s"]:.1f}',
               f'{r["median_s"] / results[0]["median_s"]:.2f}x')

  harness.print_table(('model', 'devices', 'images/s', 'step s',
                       'compile + first step s', 'step time / first row'),
                      rows())


if __name__ == '__main__':
  import harness  # pylint: disable=g-import-not-at-top
  harness.use_train_py_setup()
  main()
