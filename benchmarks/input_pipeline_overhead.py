"""Input-pipeline overhead: a real training epoch vs the same steps on one device batch.

  python benchmarks/input_pipeline_overhead.py [--models tiny_cnn,resnet18:4]
      [--rounds 5] [--batch-size 128]
      [--data-dir ../shared/data/cifar10-subset]

Target (issue on speed): a real epoch on the genuine subset takes no more
than 5% longer than the same number of steps on data already on the device.

Data: the genuine CIFAR-10 subset (5085 training images, so 39 steps of 128),
loaded with `training.input_pipeline.load_cifar('cifar10', source='local',
data_dir=...)` and replicated on the device once, as `train.py` does before
its first epoch. Model and optimizer as `configs/quick.py` (Padam p=1/8,
injected); `--models name:N` cuts each epoch to its first N steps (for the
big models, whose steps take seconds on a CPU).

Cases, interleaved in rotating order for `--rounds` rounds after one untimed
warm-up of each (which compiles):

* epoch: exactly what `training.trainer.train_and_evaluate` timed as an
  epoch's training at commits ea0ccba..5a09a10: `epoch_permutation`, `trainer.train_epoch` over
  `trainer.epoch_batches` (indices copied to the device, batch gathered on
  the device, metrics summed on the device), then `train_lib.host_metrics`
  of the totals; no progress bar.
* epoch_progress_bar: the same with the tqdm bar `train_and_evaluate` shows
  (`trainer._progress_bar`, on stderr), which fetches the previous step's
  metrics to the host every 10 steps.
* epoch_no_metrics: (diagnostic) the same batches from `epoch_batches` and
  the same steps, but the metrics are not summed: separates the gather from
  the accumulation.
* device_batch: the same number of `steps.train_step` calls on one batch
  already on the device, nothing else, then waiting for the result.
* batches_only: (diagnostic) the epoch's batches from `epoch_batches` and
  nothing else, waiting for the last: the data path's own cost per step,
  an upper bound on what it can add to an epoch (it mostly overlaps with
  the steps, which JAX runs asynchronously).
* run_epoch: only where `training.trainer` has `run_epoch` (the
  fault-tolerant loop that train_and_evaluate was moving to when this was
  written): `trainer.run_epoch` with a `faults.LoopState`, a
  `faults.NonfiniteWatch` (which fetches each step's `finite` flag a few
  steps late) and a `faults.StopRequests`, then `host_metrics` of the totals.

Every case ends by waiting for the final state, so each measures complete
work. Reported: the median time of each case, its ratio to device_batch, and
the average cores busy in this process and in all others (contention).
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

import cpu_meter
import run_info
import models
from configs import quick
from training import input_pipeline, optimizers, train_lib, trainer
# pylint: enable=g-import-not-at-top,wrong-import-position

CASES = ('epoch', 'epoch_progress_bar', 'epoch_no_metrics', 'device_batch',
         'batches_only')
# The newer epoch loop, where the checkout has it.
HAS_RUN_EPOCH = hasattr(trainer, 'run_epoch')
if HAS_RUN_EPOCH:
  from training import faults  # pylint: disable=g-import-not-at-top
  CASES += ('run_epoch',)
DEFAULT_DATA_DIR = os.path.join(ROOT, '..', 'shared', 'data', 'cifar10-subset')


def measure(model_name, max_steps, data, batch_size, rounds):
  """Times every case on one model; returns one result dict per case."""
  config = quick.get_config()
  config.model = model_name
  config.batch_size = batch_size
  n = data.train.num_examples
  steps_per_epoch = input_pipeline.steps_per_epoch(n, batch_size)
  num_steps = min(steps_per_epoch, max_steps) if max_steps else steps_per_epoch
  optimizer = optimizers.create_optimizer(config, steps_per_epoch)
  model = models.create_model(model_name, data.num_classes)
  steps = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer)
  state = jax.jit(lambda r: train_lib.create_train_state(r, model, optimizer),
                  out_shardings=steps.replicated)(jax.random.key(config.seed))
  # On the device once, before the epochs, as in train_and_evaluate.
  train_images = steps.replicate(data.train.images)
  train_labels = steps.replicate(data.train.labels.astype(np.int32))
  device_batch = steps.gather(
      train_images, train_labels,
      steps.global_array(input_pipeline.epoch_permutation(0, 0, n)[:batch_size],
                         steps.sharded))
  jax.block_until_ready(device_batch)
  epoch_counter = [0]

  def batches():
    epoch_counter[0] += 1
    order = input_pipeline.epoch_permutation(config.seed, epoch_counter[0], n)
    return trainer.epoch_batches(steps, train_images, train_labels, order,
                                 batch_size, num_steps)

  # Epochs this benchmark runs, for the bar's "epoch i/N" label.
  total_epochs = len(CASES) * (rounds + 1)

  def run_epoch(state, progress):
    # The timed part of train_and_evaluate's epoch (its t0 .. train_seconds).
    bar = trainer._progress_bar(  # pylint: disable=protected-access
        progress, num_steps, epoch_counter[0] + 1, total_epochs)
    state, totals = trainer.train_epoch(steps, state, batches(), bar)
    train_lib.host_metrics(totals)
    return state

  def run_epoch_no_metrics(state):
    for batch in batches():
      state, metrics = steps.train_step(state, batch)
    jax.block_until_ready(metrics)
    return state

  def run_device_batch(state):
    for _ in range(num_steps):
      state, metrics = steps.train_step(state, device_batch)
    jax.block_until_ready(metrics)
    return state

  def run_batches_only(state):
    for batch in batches():
      pass
    jax.block_until_ready(batch)
    return state

  def run_fault_tolerant_epoch(state):
    # As trainer._train: one LoopState and NonfiniteWatch for the run, the
    # epoch's totals and timings reset at each epoch start.
    loop.start_epoch()
    epoch_counter[0] += 1
    order = input_pipeline.epoch_permutation(config.seed, epoch_counter[0], n)
    state = trainer.run_epoch(
        steps, state, train_images, train_labels, order, batch_size,
        epoch_counter[0], loop, steps_per_epoch=num_steps, watch=watch,
        stop=stop, bar=None)
    train_lib.host_metrics(loop.totals)
    return state

  if HAS_RUN_EPOCH:
    loop = faults.LoopState()
    watch = faults.NonfiniteWatch(
        config.get('nonfinite_policy', 'stop'),
        config.get('max_consecutive_skips', 10), loop,
        steps_per_epoch=num_steps, stop_run=True)
    stop = faults.StopRequests()  # Not entered: no signal handlers.

  runners = {
      'epoch': lambda s: run_epoch(s, progress=False),
      'epoch_progress_bar': lambda s: run_epoch(s, progress=True),
      'epoch_no_metrics': run_epoch_no_metrics,
      'device_batch': run_device_batch,
      'batches_only': run_batches_only,
      'run_epoch': run_fault_tolerant_epoch,
  }
  results = {c: dict(model=model_name, case=c, steps=num_steps,
                     batch_size=batch_size, times=[], wall_s=0.0,
                     own_cpu_s=0.0, other_cpu_s=0.0) for c in CASES}
  for case in CASES:  # Warm-up: compiles the step, gather and add.
    state = runners[case](state)
    jax.block_until_ready(state)
  for round_index in range(rounds):
    shift = round_index % len(CASES)
    for case in CASES[shift:] + CASES[:shift]:
      with cpu_meter.CpuMeter() as meter:
        state = runners[case](state)
        # train_step's outputs come from one executable, so this waits for
        # nothing more than the case itself already did: kept for symmetry.
        jax.block_until_ready(state)
      r = results[case]
      r['times'].append(meter.wall_s)
      r['wall_s'] += meter.wall_s
      for key in ('own_cpu_s', 'other_cpu_s'):
        value = getattr(meter, key)
        r[key] = None if r[key] is None or value is None else r[key] + value

  base = statistics.median(results['device_batch']['times'])
  rows = []
  for case in CASES:
    r = results[case]
    r['median_s'] = statistics.median(r['times'])
    r['ms_per_step'] = 1e3 * r['median_s'] / num_steps
    r['images_per_second'] = num_steps * batch_size / r['median_s']
    r['ratio_to_device_batch'] = r['median_s'] / base
    # Round i of every case ran close in time: the median of the per-round
    # ratios is less sensitive to drift in the machine's load.
    r['paired_ratio_to_device_batch'] = statistics.median(
        t / d for t, d in zip(r['times'], results['device_batch']['times']))
    r['own_cores'] = cpu_meter.cores(r['own_cpu_s'], r['wall_s'])
    r['other_cores'] = cpu_meter.cores(r['other_cpu_s'], r['wall_s'])
    rows.append(r)
  return rows


def fmt(value, spec):
  return '-' if value is None else format(value, spec)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='tiny_cnn',
                      help='comma-separated NAME or NAME:STEPS (cut each '
                      'epoch to its first STEPS steps)')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--data-dir', default=DEFAULT_DATA_DIR)
  args = parser.parse_args()
  # train.py's XLA:CPU flags, for this process and the ones it starts.
  from training import host_devices  # pylint: disable=g-import-not-at-top
  host_devices.set_cpu_xla_flags()

  data = input_pipeline.load_cifar('cifar10', source='local',
                                   data_dir=args.data_dir)
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
          f'{fmt(r["own_cores"], ".2f")} | {fmt(r["other_cores"], ".2f")} |')
  print()
  for r in rows:
    print(json.dumps(r))


if __name__ == '__main__':
  main()
