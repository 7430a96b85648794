"""The epoch loop, for a single run and for a sweep's members.

Its callers (training/trainer.py, sweeps/run.py) build a run in order:
`load_data` (the lock free, the data loaded and its run_shape.RunShape), then
the model, optimizer, steps and chunks for that shape, then `run`, which
checks the chunks' history and trains them with `train_epochs`: from the
newest checkpoint to `config.num_epochs`, a metrics row per member and a
checkpoint when due after each epoch, a checkpoint at the next step on a stop
request.
"""

import collections
import dataclasses
import functools
import logging
import os
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from training import checkpoints
from training import configuration
from training import faults
from training import input_pipeline
from training import optimizers
from training import profiling
from training import records
from training import run_lock
from training import run_shape
from training import rundir


# What `train_epochs` leaves: each member's metrics rows (all epochs) and the
# checkpoints.LoopState (its `diverged` names the members a sweep gave up on),
# of the members trained to the end (member_names: a halving sweep's
# survivors; None for a single run).
Result = collections.namedtuple('Result', 'rows loop member_names')


# Members `run` trains at once: train.py's one run, or a sweep's chunk.
# init() gives the fresh state; member_dirs: one rundir.Workdir per
# member; name: what the log lines call it; halving: a sweep's
# sweeps.halving.Rungs, or None.
Chunk = collections.namedtuple(
    'Chunk', 'steps init member_dirs checkpoint_dir name halving',
    defaults=('', None))


def load_data(config: ml_collections.ConfigDict, workdir: str, *,
              data: input_pipeline.CifarData = None, num_devices: int = 1,
              profile_steps: int = 0) -> tuple:
  """(data, run_shape.RunShape): what a run is built from.

  Refuses (ValueError), in this order, before anything is written: another
  run holding `workdir`; a profile directory --profile cannot write to;
  data (`data`, else loaded per `config`) that does not fit `config`.
  """
  run_lock.RunLock(workdir).check_free()
  if profile_steps:
    rundir.check_profile_dir(os.path.join(workdir, rundir.PROFILE_DIR))
  if data is None:
    data = input_pipeline.load(config)
  configuration.check_against_data(config, data, num_devices=num_devices)
  return data, run_shape.RunShape.of(config, data)


def run(config: ml_collections.ConfigDict, shape: run_shape.RunShape,
        data: input_pipeline.CifarData, run_dir: rundir.Workdir,
        chunks: list, *, progress: bool = True, profile_steps: int = 0,
        after_epoch: Optional[Callable[[int, int], None]] = None):
  """Trains `chunks` (built for `shape`) in `run_dir`; yields (chunk, Result).

  run_dir: the checked Workdir that records the data (a sweep's own). Before
  any file is written, refuses (ValueError), in this order: data other than
  run_dir recorded; a chunk's history (rundir.check_history).
  after_epoch(chunk index, epoch): see train_epochs.
  """
  identity = input_pipeline.fingerprint(data)
  run_dir.check_data(identity, f' ({data.source})')
  for chunk in chunks:
    rundir.check_history(
        config, shape, chunk.member_dirs, chunk.checkpoint_dir,
        chunk.halving and chunk.halving.stopped_at(chunk.steps.member_names))
  with run_lock.RunLock(run_dir.path), faults.StopRequests() as stop, (
      profiling.step_trace(os.path.join(run_dir.path, rundir.PROFILE_DIR),
                           profile_steps)) as trace:
    run_dir.prepare(identity)
    for member_dir in [d for c in chunks for d in c.member_dirs]:
      if member_dir is not run_dir:
        member_dir.prepare()
    for index, chunk in enumerate(chunks):
      state = chunk.init()
      store = checkpoints.CheckpointStore(chunk.checkpoint_dir,
                                          config.keep_checkpoints)
      # Closed on every exit: an error must not leave a save thread behind.
      try:
        result = train_epochs(
            config, chunk.steps, state, shape=shape, store=store,
            member_dirs=chunk.member_dirs, data=data, stop=stop,
            progress=progress, trace=trace, name=chunk.name,
            after_epoch=(None if after_epoch is None else
                         functools.partial(after_epoch, index)),
            halving=chunk.halving)
      finally:
        store.close()
      yield chunk, result


def train_epochs(config: ml_collections.ConfigDict, steps, state, *,
                 shape: run_shape.RunShape, store, member_dirs: list,
                 data: input_pipeline.CifarData,
                 stop: faults.StopRequests, progress: bool = True,
                 trace=None, after_epoch: Optional[Callable[[int], None]] = None,
                 name: str = '', halving=None) -> Result:
  """Trains `state` (fresh) to config.num_epochs, resuming from `store`.

  steps: see train_lib.MeshSteps. member_dirs: one rundir.Workdir per
  member, where its rows go (their `rows`: those Workdir.check read). trace:
  a profiling.StepTrace or None. after_epoch(epoch) (for tests) runs once an
  epoch's rows are written, before its checkpoint. halving: a
  sweeps.halving.Rungs: at each of its epochs, a checkpoint, then the
  decision, then the survivors train on alone.
  """
  steps_per_epoch = shape.steps_per_epoch
  is_rung = lambda epoch: halving is not None and epoch in halving.epochs
  names = steps.member_names

  def views(step):
    # The fresh state of the members a checkpoint at `step` holds.
    keep = [names.index(n) for n in halving.live(names, step, shape)]
    return halving.compact(steps, state, None, keep)[:2]

  steps, state, loop = resume(store, steps, state, shape,
                              None if halving is None else views)
  if halving is not None:
    member_dirs = [member_dirs[names.index(n)] for n in steps.member_names]
  step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
  completed_epochs = shape.epochs_done(step)
  rows = [[r for r in d.rows if r['epoch'] <= completed_epochs]
          for d in member_dirs]
  if is_rung(completed_epochs) and not loop.steps_done:
    # A rung's checkpoint is saved before its decision: take it now (or
    # read its record).
    steps, state, loop, member_dirs, rows = _halve(
        halving, completed_epochs, steps, state, loop, member_dirs, rows)
  watch = _nonfinite_watch(config, loop, shape, steps)
  if completed_epochs >= config.num_epochs:
    logging.info('Nothing left to train%s: all num_epochs=%d epochs are done; '
                 'a larger --config.num_epochs trains on from this '
                 'checkpoint.', f' in {name}' if name else '',
                 config.num_epochs)
  train_arrays = None
  for epoch in range(completed_epochs + 1, config.num_epochs + 1):
    if train_arrays is None:
      train_arrays = steps.replicate(
          (data.train.images, data.train.labels.astype(np.int32)))
    hyper = jax.device_get(optimizers.current_hyperparameters(
        config, steps_per_epoch, state.opt_state, shape.end_step(epoch - 1)))
    order = steps.batch_order(config.seed, epoch, data.train.num_examples)
    bar = _progress_bar(progress, steps_per_epoch, epoch, config.num_epochs,
                        initial=loop.steps_done)
    try:
      state = _run_epoch(steps, state, train_arrays, order, config.batch_size,
                         epoch, loop, shape=shape, watch=watch, stop=stop,
                         bar=bar, trace=trace)
    except faults.Diverged as e:
      raise _diverged_error(e, store, shape, config) from None
    step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
    if loop.steps_done < steps_per_epoch:
      _stop_run(store, steps, state, step, loop, stop, shape)
    t0 = time.perf_counter()
    train = jax.device_get(loop.totals)
    test = jax.device_get(evaluate_totals(steps, state, data.test,
                                          config.eval_batch_size))
    validation = [None] * len(member_dirs)  # No split: no val_ columns.
    if data.validation is not None:
      validation = steps.member_values(jax.device_get(evaluate_totals(
          steps, state, data.validation, config.eval_batch_size)))
    epoch_seconds = loop.train_seconds + time.perf_counter() - t0
    for member_rows, member_dir, h, tr, te, va in zip(
        rows, member_dirs, steps.member_values(hyper),
        steps.member_values(train), steps.member_values(test), validation):
      # images/s: a member's images over the wall time of all the members
      # trained at once (their throughput is the sum).
      member_rows.append(records.epoch_row(
          epoch, step, h, tr, te, loop.train_seconds, epoch_seconds,
          config.batch_size, validation=va))
      member_dir.write_metrics(member_rows)
    _log_epoch(name, epoch, config, steps, rows, loop, shape)
    if after_epoch is not None:
      after_epoch(epoch)
    loop.start_epoch()
    if rundir.checkpoint_due(epoch, config) or is_rung(epoch):
      store.save(step, steps.for_checkpoint(state), loop.to_json())
    if is_rung(epoch):
      steps, state, loop, member_dirs, rows = _halve(
          halving, epoch, steps, state, loop, member_dirs, rows)
      watch = _nonfinite_watch(config, loop, shape, steps)
      train_arrays = None  # The survivors' mesh may be smaller.
  return Result(rows, loop, steps.member_names)


def _nonfinite_watch(config, loop, shape, steps) -> faults.NonfiniteWatch:
  return faults.NonfiniteWatch(
      config.nonfinite_policy, config.max_consecutive_skips, loop,
      shape=shape, member_names=steps.member_names)


def _halve(halving, epoch: int, steps, state, loop, member_dirs, rows):
  """The run's (steps, state, loop, member_dirs, rows) after the decision
  of rung `epoch`, taken on the rows' validation errors."""
  rung = halving.decide(epoch, steps.member_names,
                        [r[-1].get('val_error') for r in rows])
  keep = [steps.member_names.index(n) for n in rung.survivors]
  steps, state, loop = halving.compact(steps, state, loop, keep)
  logging.info('Rung at epoch %d: %s go on, %s stop.', epoch,
               ', '.join(rung.survivors), ', '.join(
                   n for n in rung.members if n not in rung.survivors))
  return (steps, state, loop, [member_dirs[i] for i in keep],
          [rows[i] for i in keep])


def resume(store, steps, state, shape: run_shape.RunShape, views=None):
  """(steps, state, LoopState) from the newest readable checkpoint (the
  fresh `state` without one). views(step): the (steps, fresh state) of the
  members a checkpoint at `step` holds, where not all of `steps`' (a halving
  sweep's past a rung)."""
  view = functools.lru_cache(views or (lambda step: (steps, state)))
  restored = store.restore_latest(
      lambda step: view(step)[0].for_checkpoint(view(step)[1]),
      lambda step, meta: checkpoints.LoopState.from_json(
          meta, view(step)[0].num_members, step, shape))
  if restored is None:
    steps, state = view(0)
    return steps, state, checkpoints.LoopState(steps.num_members)
  step, checkpoint_state, loop = restored
  steps = view(step)[0]
  if loop.totals is not None:
    # The exact float32 sums, back on device.
    loop.totals = jax.tree.map(
        lambda x: steps.global_array(x, steps.metrics_sharding),
        steps.from_checkpoint(loop.totals))
  logging.info('Resumed from %s in %s', shape.position(step), store.directory)
  return steps, steps.from_checkpoint(checkpoint_state), loop


def _stop_run(store, steps, state, step: int, loop: checkpoints.LoopState,
              stop: faults.StopRequests, shape: run_shape.RunShape) -> None:
  """Saves a checkpoint of a run stopped on request; raises RunStopped."""
  where = shape.position(step)
  if step == (store.latest_step() or 0):
    saved = 'nothing trained since the last checkpoint, nothing to save'
  else:
    store.save(step, steps.for_checkpoint(state),
               dataclasses.replace(
                   loop, totals=steps.for_checkpoint(loop.totals)).to_json())
    saved = f'checkpoint saved in {store.directory}'
  raise faults.RunStopped(
      f'Stopped by {stop.signal_name} at {where}: {saved}. Run the same '
      'command again to resume.')


def _diverged_error(e: faults.Diverged, store, shape: run_shape.RunShape,
                    config) -> faults.Diverged:
  """`e` with the whole story: where, why, and the last good checkpoint."""
  steps_per_epoch = shape.steps_per_epoch
  latest = store.latest_step()
  if latest is None:
    kept = 'there is no checkpoint yet'
  else:
    kept = (f'the last good checkpoint, step {latest} (epoch '
            f'{latest / steps_per_epoch:g}), is intact in {store.directory}')
  if config.nonfinite_policy == 'skip':
    policy = ("nonfinite_policy='skip' and max_consecutive_skips="
              f'{config.max_consecutive_skips}')
    instead = 'a larger max_consecutive_skips'
  else:
    policy, instead = "nonfinite_policy='stop'", "nonfinite_policy='skip'"
  return faults.Diverged(e.step, e.reason, (
      f'training stopped: {e.reason} at step {e.step} (epoch '
      f'{shape.epoch_of(e.step)}, step '
      f'{shape.steps_into_epoch(e.step - 1) + 1} of {steps_per_epoch}) with '
      f'{policy}; {kept} and nothing was saved after it. Use a new workdir '
      f'with a smaller optimizer.learning_rate, or {instead}.'))


def epoch_batches(steps, train_arrays, order: np.ndarray, batch_size: int,
                  num_steps: int, start: int = 0):
  """The epoch's training batches from batch `start` on, gathered on device
  in `order`: a permutation (N,), or one per member (K, N)."""
  images, labels = train_arrays
  for i in range(start, num_steps):
    idx = order[..., i * batch_size:(i + 1) * batch_size]
    yield steps.gather(images, labels, steps.global_array(idx, steps.sharded))


def _run_epoch(steps, state, train_arrays, order, batch_size: int,
               epoch: int, loop: checkpoints.LoopState, *,
               shape: run_shape.RunShape, watch: faults.NonfiniteWatch,
               stop: faults.StopRequests,
               bar=None, trace=None):
  """Trains `epoch` from step `loop.steps_done` on; returns the state.

  Updates `loop` (steps done, device totals, seconds). Returns early, with
  loop.steps_done < shape.steps_per_epoch, when a stop is requested.
  """
  first_step = shape.end_step(epoch - 1)
  totals = loop.totals
  previous = None
  t0 = time.perf_counter()
  for i, batch in enumerate(epoch_batches(
      steps, train_arrays, order, batch_size, shape.steps_per_epoch,
      start=loop.steps_done)):
    if stop.requested:
      break
    state, metrics = steps.train_step(state, batch)
    totals = metrics if totals is None else steps.add(totals, metrics)
    loop.steps_done += 1
    watch.push(first_step + loop.steps_done, metrics['finite'])
    if trace is not None:
      trace.after_step(metrics)
    if bar is not None:
      bar.update(1)
      # Show the totals of an earlier step: the host never waits on the step
      # it just dispatched.
      if previous is not None and i % 10 == 0:
        _show_metrics(bar, previous)
    previous = totals
  if bar is not None:
    if totals is not None:
      _show_metrics(bar, totals)
    bar.close()
  loop.totals = totals
  watch.flush()
  loop.train_seconds += time.perf_counter() - t0
  return state


def evaluate_totals(steps, state, split: input_pipeline.Split,
                    batch_size: int):
  """Device totals of `steps.eval_step` over the whole split."""
  totals = None
  for batch in input_pipeline.eval_batches(split, batch_size):
    batch = steps.shard({'images': batch['images'],
                         'labels': batch['labels'].astype(np.int32),
                         'mask': batch['mask'].astype(np.float32)})
    metrics = steps.eval_step(state, batch)
    totals = metrics if totals is None else steps.add(totals, metrics)
  return totals


def _log_epoch(name, epoch, config, steps, rows, loop, shape):
  prefix = f'{name} ' if name else ''
  if steps.member_names is None:
    row = rows[0][-1]
    logging.info(
        '%sepoch %d/%d step %d lr %.4g p %s | train loss %.4f err %.4f | '
        'test loss %.4f err %.4f top5 %.4f | %.1fs %.0f img/s%s', prefix,
        epoch, config.num_epochs, row['step'], row['lr'], row['p'],
        row['train_loss'], row['train_error'], row['test_loss'],
        row['test_error'], row['test_top5_error'], row['epoch_seconds'],
        row['images_per_second'],
        (f' | val err {row["val_error"]:.4f}' if 'val_error' in row else '') +
        (f' | {row["skipped_steps"]} steps skipped (non-finite)'
         if row['skipped_steps'] else ''))
    return
  spread = ''
  for split in ['test'] + (['val'] if 'val_error' in rows[0][-1] else []):
    errors = [member_rows[-1][f'{split}_error'] for member_rows in rows]
    best = int(np.nanargmin(errors)) if not np.all(np.isnan(errors)) else 0
    spread += (f' | {split} error min {errors[best]:.4f} '
               f'({steps.member_names[best]}) max {np.nanmax(errors):.4f}')
  logging.info(
      '%sepoch %d/%d%s | %.1fs %.0f img/s (all members)%s', prefix, epoch,
      config.num_epochs, spread, rows[0][-1]['epoch_seconds'],
      len(rows) * config.batch_size * shape.steps_per_epoch /
      loop.train_seconds,
      ''.join(f' | {n} diverged' for n, d in
              zip(steps.member_names, loop.diverged) if d is not None))


def _progress_bar(enabled, total, epoch, num_epochs, initial=0):
  if not enabled or jax.process_index() != 0:
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial,
                   desc=f'epoch {epoch}/{num_epochs}', leave=False,
                   dynamic_ncols=True)


def _show_metrics(bar, totals):
  # Sums over the members of a sweep grid (a plain run: the one value).
  m = {k: float(np.sum(v)) for k, v in jax.device_get(totals).items()}
  count = max(m['count'], 1.0)
  bar.set_postfix(loss=f'{m["loss_sum"] / count:.4f}',
                  acc=f'{m["correct"] / count:.3f}')
