"""Input-pipeline overhead: a real training epoch vs the same steps on one device batch.

  python benchmarks/input_pipeline_overhead.py [--models tiny_cnn,resnet18:4]
      [--rounds 5] [--batch-size 128] [--data-dir DIR]

Target: a real epoch on the genuine subset takes no more than 5% longer than
the same number of steps on data already on the device.

Data: CIFAR-10's first 5000 training images (39 steps of 128), downloaded
once, or a local copy with --data-dir. Model and optimizer as
`configs/quick.py`; `--models name:N` cuts each epoch to its first N steps
(and the evaluation to one batch), for the big models. Cases, interleaved
in rotating order for `--rounds` rounds after one untimed warm-up each:

* train_epochs: one epoch of `training.loop.train_epochs`, the loop train.py
  runs (no progress bar), in a fresh temporary workdir, timed as the loop
  times its training (steps x batch / its images_per_second), without the
  evaluation, metrics files and checkpoint that follow.
* device_batch: the same number of `steps.train_step` calls on one batch
  already on the device, then waiting for the result.

Reported: the median time of each case, its ratio to device_batch, and the
average cores busy in this process and in all others (for train_epochs over
the whole call, evaluation and checkpoint included).
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

import cpu_meter
import run_info
import models
from configs import quick
from training import checkpoints, faults, input_pipeline, loop, optimizers
from training import train_lib
from training import rundir
from training import run_shape
# pylint: enable=g-import-not-at-top,wrong-import-position

CASES = ('train_epochs', 'device_batch')


def measure(model_name, max_steps, data, batch_size, rounds):
  """Times every case on one model; returns one result dict per case."""
  config = quick.get_config()
  config.model, config.batch_size, config.num_epochs = model_name, batch_size, 1
  n = data.train.num_examples
  num_steps = input_pipeline.steps_per_epoch(n, batch_size)
  if max_steps and max_steps < num_steps:
    # An epoch of the first max_steps batches; one evaluation batch.
    num_steps, n = max_steps, max_steps * batch_size
    data = dataclasses.replace(
        data, train=input_pipeline.Split(data.train.images[:n],
                                         data.train.labels[:n]),
        test=input_pipeline.Split(data.test.images[:config.eval_batch_size],
                                  data.test.labels[:config.eval_batch_size]))
  optimizer = optimizers.create_optimizer(config, num_steps)
  model = models.create_model(model_name, data.num_classes)
  steps = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer)
  init = jax.jit(lambda r: train_lib.create_train_state(r, model, optimizer),
                 out_shardings=steps.state_sharding)
  state = init(jax.random.key(config.seed))
  train_arrays = steps.replicate(
      (data.train.images, data.train.labels.astype(np.int32)))
  device_batch = next(loop.epoch_batches(
      steps, train_arrays, input_pipeline.epoch_permutation(0, 0, n),
      batch_size, 1))
  jax.block_until_ready(device_batch)

  def run_train_epochs(state):
    """Seconds of one train_epochs epoch's training, from its metrics row."""
    with tempfile.TemporaryDirectory() as workdir:
      run_dir = rundir.Workdir(workdir, config)
      run_dir.prepare()
      store = checkpoints.CheckpointStore(run_dir.checkpoint_dir,
                                           config.keep_checkpoints)
      try:
        result = loop.train_epochs(
            config, steps, init(jax.random.key(config.seed)), store=store,
            shape=run_shape.RunShape.of(config, data),
            member_dirs=[run_dir], data=data, stop=faults.StopRequests(),
            progress=False)
      finally:
        store.close()
    return state, num_steps * batch_size / result.rows[0][-1][
        'images_per_second']

  def run_device_batch(state):
    for _ in range(num_steps):
      state, metrics = steps.train_step(state, device_batch)
    jax.block_until_ready(metrics)
    return state, None

  runners = dict(zip(CASES, (run_train_epochs, run_device_batch)))
  results = {c: dict(model=model_name, case=c, steps=num_steps,
                     batch_size=batch_size, times=[], wall_s=0.0,
                     own_cpu_s=0.0, other_cpu_s=0.0) for c in CASES}
  for case in CASES:  # Warm-up: compiles the step, gather and add.
    state, _ = runners[case](state)
    jax.block_until_ready(state)
  for round_index in range(rounds):
    shift = round_index % len(CASES)
    for case in CASES[shift:] + CASES[:shift]:
      with cpu_meter.CpuMeter() as meter:
        state, seconds = runners[case](state)
        jax.block_until_ready(state)
      r = results[case]
      r['times'].append(meter.wall_s if seconds is None else seconds)
      r['wall_s'] += meter.wall_s
      for key in ('own_cpu_s', 'other_cpu_s'):
        value = getattr(meter, key)
        r[key] = None if r[key] is None or value is None else r[key] + value

  base = results['device_batch']['times']
  for r in results.values():
    r['median_s'] = statistics.median(r['times'])
    r['ms_per_step'] = 1e3 * r['median_s'] / num_steps
    r['images_per_second'] = num_steps * batch_size / r['median_s']
    r['ratio_to_device_batch'] = r['median_s'] / statistics.median(base)
    # Round i of every case ran close in time: the median of the per-round
    # ratios is less sensitive to drift in the machine's load.
    r['paired_ratio_to_device_batch'] = statistics.median(
        t / d for t, d in zip(r['times'], base))
    r['own_cores'] = cpu_meter.cores(r['own_cpu_s'], r['wall_s'])
    r['other_cores'] = cpu_meter.cores(r['other_cpu_s'], r['wall_s'])
  return list(results.values())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='tiny_cnn',
                      help='comma-separated NAME or NAME:STEPS (cut each '
                      'epoch to its first STEPS steps)')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--data-dir', default='',
                      help='a local CIFAR-10 copy; default: the download')
  args = parser.parse_args()
  # train.py's XLA:CPU flags, for this process and the ones it starts.
  from training import host_devices  # pylint: disable=g-import-not-at-top
  host_devices.set_cpu_xla_flags()

  config = quick.get_config()
  config.data_source = 'local' if args.data_dir else 'download'
  config.data_dir = args.data_dir
  config.train_examples = 0 if args.data_dir else 5000
  data = input_pipeline.load(config)
  print('\n'.join(run_info.header_lines()))
  print(f'# devices {[str(d) for d in jax.devices()]}')
  print(f'# data: {data.source}, {data.train.num_examples} training images, '
        f'batch {args.batch_size}; median of {args.rounds} rounds, cases '
        'interleaved', flush=True)
  rows = []
  for spec in args.models.split(','):
    name, _, max_steps = spec.partition(':')
    rows += measure(name, int(max_steps or 0), data, args.batch_size,
                    args.rounds)
  print(f'# load average at end {os.getloadavg()[0]:.2f}')
  print()
  print('vs device_batch: median / median, and in brackets the median of '
        'the per-round ratios')
  print()
  print('| model | steps | case | median s | ms/step | images/s | '
        'vs device_batch | own cores | other cores |')
  print('|---|---:|---|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f'| {r["model"]} | {r["steps"]} | {r["case"]} | '
          f'{r["median_s"]:.3f} | {r["ms_per_step"]:.1f} | '
          f'{r["images_per_second"]:.0f} | {r["ratio_to_device_batch"]:.3f} '
          f'({r["paired_ratio_to_device_batch"]:.3f}) | '
          f'{cpu_meter.fmt(r["own_cores"])} | '
          f'{cpu_meter.fmt(r["other_cores"])} |')
  print()
  for r in rows:
    print(json.dumps(r))


if __name__ == '__main__':
  main()
