"""Input-pipeline overhead: a real training epoch vs the same steps on one
device batch.

  python benchmarks/input_pipeline_overhead.py [--models tiny_cnn,resnet18:4]
      [--rounds 5] [--batch-size 128] [--data-dir DIR]

Data: CIFAR-10's first 5000 training images, downloaded once, or a local copy
with --data-dir. `--models name:N` cuts each epoch to its first N steps (and
the evaluation to one batch). train_epochs is timed as the loop times its
training, without the evaluation, metrics files and checkpoint that follow;
its cores busy are over the whole call.
"""

import argparse
import dataclasses
import json
import os
import tempfile

import harness
# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
import jax
import numpy as np

import models
from configs import quick
from training import checkpoints, faults, input_pipeline, loop, optimizers
from training import train_lib
from training import rundir
from training import run_shape
# pylint: enable=g-import-not-at-top,wrong-import-position,g-bad-import-order

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
  tallies = {c: harness.Tally() for c in CASES}
  for case in CASES:  # Warm-up: compiles the step, gather and add.
    state, _ = runners[case](state)
    jax.block_until_ready(state)
  for order in harness.rounds(CASES, rounds):
    for case in order:
      with harness.CpuMeter() as meter:
        state, seconds = runners[case](state)
        jax.block_until_ready(state)
      tallies[case].add(meter.wall_s if seconds is None else seconds,
                        meter.wall_s, meter.own_cpu_s, meter.other_cpu_s)

  base = tallies['device_batch'].summary()
  results = []
  for case, tally in tallies.items():
    r = dict(model=model_name, case=case, steps=num_steps,
             batch_size=batch_size, **tally.summary())
    r['ms_per_step'] = 1e3 * r['median_s'] / num_steps
    r['images_per_second'] = num_steps * batch_size / r['median_s']
    r['ratio_to_device_batch'] = r['median_s'] / base['median_s']
    r['paired_ratio_to_device_batch'] = harness.paired_median(
        r['times'], base['times'])
    results.append(r)
  return results


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
  config = quick.get_config()
  config.data_source = 'local' if args.data_dir else 'download'
  config.data_dir = args.data_dir
  config.train_examples = 0 if args.data_dir else 5000
  data = input_pipeline.load(config)
  harness.print_header(
      f'# devices {[str(d) for d in jax.devices()]}',
      f'# data: {data.source}, {data.train.num_examples} training images, '
      f'batch {args.batch_size}; median of {args.rounds} rounds, cases '
      'interleaved')
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
  print('\n'.join(harness.table(
      ('model', 'steps', 'case', 'median s', 'ms/step', 'images/s',
       'vs device_batch', 'own cores', 'other cores'),
      [(r['model'], r['steps'], r['case'], f'{r["median_s"]:.3f}',
        f'{r["ms_per_step"]:.1f}', f'{r["images_per_second"]:.0f}',
        f'{r["ratio_to_device_batch"]:.3f} '
        f'({r["paired_ratio_to_device_batch"]:.3f})',
        harness.fmt(r['own_cores']), harness.fmt(r['other_cores']))
       for r in rows])))
  print()
  for r in rows:
    print(json.dumps(r))


if __name__ == '__main__':
  harness.use_train_py_setup(mimalloc=False)
  main()
