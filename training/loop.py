"""The epoch loop, for a single run and for a sweep's members.

`run` checks a workdir and trains its chunks (train.py's one run, or a
sweep's) with `train_epochs`: from the newest checkpoint to
`config.num_epochs`, a metrics row per member and a checkpoint when due after
each epoch, a checkpoint at the next step on a stop request.
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
from training import workdir as workdir_lib


# What `train_epochs` leaves: each member's metrics rows (all epochs) and the
# faults.LoopState (its `diverged` names the members a sweep gave up on).
Result = collections.namedtuple('Result', 'rows loop')


# Members `run` trains at once: train.py's one run, or a sweep's chunk.
# init() gives the fresh state; member_dirs: one workdir_lib.Workdir per
# member; name: what the log lines call it.
Chunk = collections.namedtuple(
    'Chunk', 'steps init member_dirs checkpoint_dir name', defaults=('',))


def run(config: ml_collections.ConfigDict, workdir: str, plan: Callable, *,
        data: input_pipeline.CifarData = None, num_devices: int = 1,
        progress: bool = True, profile_steps: int = 0,
        after_epoch: Optional[Callable[[int, int], None]] = None):
  """Trains the chunks of `plan(data)` in `workdir`; yields (chunk, Result).

  Before any file is written, refuses (ValueError), in this order: another
  run holding `workdir`; data (`data`, else loaded per `config`) that does
  not fit `config`; what `plan(data)` -> (run_dir, chunks) refuses; data
  other than run_dir recorded; a chunk's history (check_history).
  after_epoch(chunk index, epoch): see train_epochs.
  """
  lock = workdir_lib.RunLock(workdir)
  lock.check_free()
  if profile_steps:
    workdir_lib.check_profile_dir(os.path.join(workdir, 'profile'))
  if data is None:
    data = input_pipeline.load(config)
  configuration.check_against_data(config, data, num_devices=num_devices)
  run_dir, chunks = plan(data)
  identity = input_pipeline.fingerprint(data)
  run_dir.check_data(identity, f' ({data.source})')
  for chunk in chunks:
    check_history(config, chunk.member_dirs, chunk.checkpoint_dir, data)
  with lock, faults.StopRequests() as stop, profiling.step_trace(
      os.path.join(workdir, 'profile'), profile_steps) as trace:
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
            config, chunk.steps, state, store=store,
            member_dirs=chunk.member_dirs, data=data, stop=stop,
            progress=progress, trace=trace, name=chunk.name,
            after_epoch=(None if after_epoch is None else
                         functools.partial(after_epoch, index)))
      finally:
        store.close()
      yield chunk, result


def train_epochs(config: ml_collections.ConfigDict, steps, state, *, store,
                 member_dirs: list, data: input_pipeline.CifarData,
                 stop: faults.StopRequests, progress: bool = True,
                 trace=None, after_epoch: Optional[Callable[[int], None]] = None,
                 name: str = '') -> Result:
  """Trains `state` (fresh) to config.num_epochs, resuming from `store`.

  steps: see train_lib.MeshSteps. member_dirs: one workdir_lib.Workdir per
  member, where its rows go (their `rows`: those Workdir.check read). trace:
  a profiling.StepTrace or None. after_epoch(epoch) (for tests) runs once an
  epoch's rows are written, before its checkpoint.
  """
  steps_per_epoch = input_pipeline.steps_per_epoch(data.train.num_examples,
                                                   config.batch_size)
  state, loop, completed_epochs = resume(store, steps, state, steps_per_epoch)
  rows = [[r for r in d.rows if r['epoch'] <= completed_epochs]
          for d in member_dirs]
  watch = faults.NonfiniteWatch(
      config.nonfinite_policy, config.max_consecutive_skips, loop,
      steps_per_epoch=steps_per_epoch, stop_run=steps.member_names is None,
      member_names=steps.member_names)
  step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
  if step // steps_per_epoch >= config.num_epochs:
    logging.info('Nothing left to train%s: all num_epochs=%d epochs are done; '
                 'a larger --config.num_epochs trains on from this '
                 'checkpoint.', f' in {name}' if name else '',
                 config.num_epochs)
  train_arrays = None
  for epoch in range(step // steps_per_epoch + 1, config.num_epochs + 1):
    if train_arrays is None:
      train_arrays = steps.replicate(
          (data.train.images, data.train.labels.astype(np.int32)))
    hyper = jax.device_get(optimizers.current_hyperparameters(
        config, steps_per_epoch, state.opt_state,
        (epoch - 1) * steps_per_epoch))
    order = steps.batch_order(config.seed, epoch, data.train.num_examples)
    bar = _progress_bar(progress, steps_per_epoch, epoch, config.num_epochs,
                        initial=loop.steps_done)
    try:
      state = _run_epoch(steps, state, train_arrays, order, config.batch_size,
                         epoch, loop, steps_per_epoch=steps_per_epoch,
                         watch=watch, stop=stop, bar=bar, trace=trace)
    except faults.Diverged as e:
      raise _diverged_error(e, store, steps_per_epoch, config) from None
    step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
    if loop.steps_done < steps_per_epoch:
      _stop_run(store, steps, state, step, loop, stop, steps_per_epoch)
    t0 = time.perf_counter()
    train = jax.device_get(loop.totals)
    test = jax.device_get(evaluate_totals(steps, state, data.test,
                                          config.eval_batch_size))
    epoch_seconds = loop.train_seconds + time.perf_counter() - t0
    for member_rows, member_dir, h, tr, te in zip(
        rows, member_dirs, steps.member_values(hyper),
        steps.member_values(train), steps.member_values(test)):
      # images/s: a member's images over the wall time of all the members
      # trained at once (their throughput is the sum).
      member_rows.append(records.epoch_row(
          epoch, step, h, tr, te, loop.train_seconds, epoch_seconds,
          config.batch_size))
      member_dir.write_metrics(member_rows)
    _log_epoch(name, epoch, config, steps, rows, loop, steps_per_epoch)
    if after_epoch is not None:
      after_epoch(epoch)
    loop.start_epoch()
    if epoch % config.checkpoint_every_epochs == 0 or (
        epoch == config.num_epochs):
      store.save(step, steps.for_checkpoint(state), loop.to_json())
  return Result(rows, loop)


def resume(store, steps, state, steps_per_epoch: int):
  """(state, LoopState, epochs completed) from the newest readable
  checkpoint (the fresh `state` without one)."""
  num_members = steps.num_members
  restored = store.restore_latest(
      steps.for_checkpoint(state),
      lambda step, meta: faults.LoopState.from_json(
          meta, num_members, step, steps_per_epoch))
  if restored is None:
    return state, faults.LoopState(num_members), 0
  step, checkpoint_state, loop = restored
  if loop.totals is not None:
    # The exact float32 sums, back on device.
    loop.totals = jax.tree.map(
        lambda x: steps.global_array(x, steps.metrics_sharding),
        steps.from_checkpoint(loop.totals))
  logging.info('Resumed from %s in %s',
               position(step, loop.steps_done, steps_per_epoch),
               store.directory)
  return (steps.from_checkpoint(checkpoint_state), loop,
          step // steps_per_epoch)


def check_history(config: ml_collections.ConfigDict, member_dirs: list,
                  checkpoint_dir: str, data: input_pipeline.CifarData) -> None:
  """Refuses (ValueError) checkpoints, metrics and config that do not tell
  one story: resuming would rewrite history.

  member_dirs: checked workdir_lib.Workdir's, whose state the checkpoints in
  `checkpoint_dir` hold. Resuming must lose no row: the rows are at the
  steps this data gives; a checkpoint's epochs have their rows; after the
  newest checkpoint, only the rows a kill before its next checkpoint leaves;
  num_epochs is not below the epochs done.
  """
  steps_per_epoch = input_pipeline.steps_per_epoch(data.train.num_examples,
                                                   config.batch_size)
  checkpoints.check_usable(checkpoint_dir)
  steps, aside = checkpoints.stored_steps(checkpoint_dir)
  newest = steps[-1] if steps else 0
  completed = newest // steps_per_epoch
  saved_epochs = {s // steps_per_epoch for s in steps + aside
                  if s % steps_per_epoch == 0}
  where = (f'{checkpoint_dir} holds step {newest} (epoch {completed})' if steps
           else f'{checkpoint_dir} holds no checkpoint')
  done = completed
  for d in member_dirs:
    rows = d.rows
    last = rows[-1]['epoch'] if rows else 0
    done = max(done, last)
    for row in rows:
      if row['step'] != row['epoch'] * steps_per_epoch:
        raise ValueError(
            f'{d.jsonl_path}: the row of epoch {row["epoch"]} ends at step '
            f'{row["step"]}, but this data ({data.train.num_examples} training'
            f' examples, batch_size {config.batch_size}: {steps_per_epoch} '
            f'steps per epoch) puts it at step '
            f'{row["epoch"] * steps_per_epoch}: the run was trained on other '
            'data; allowed: the data it was trained on, or a new workdir.')
    if completed > last:
      raise ValueError(
          f'{d.jsonl_path} has {f"rows up to epoch {last}" if rows else "no rows"}'
          f' but {where}: the rows of epochs {last + 1}-{completed} are '
          'missing and resuming would not redo them; allowed: restore '
          f'{os.path.basename(d.jsonl_path)}, or move {checkpoint_dir} away '
          'too to start over, or use a new workdir.')
    lost = [e for e in range(completed + 1, last)
            if e % config.checkpoint_every_epochs == 0 and
            e not in saved_epochs]
    if lost:
      raise ValueError(
          f'{where} but {d.jsonl_path} has rows up to epoch {last}, and the '
          f'checkpoint of epoch {lost[-1]} is gone: resuming would start '
          f'over from epoch {completed + 1} and rewrite the rows of epochs '
          f'{completed + 1}-{last}; allowed: restore the checkpoints, or move '
          'the metrics files away too to start over, or use a new workdir.')
  if config.num_epochs < done:
    raise ValueError(
        f'num_epochs={config.num_epochs} is below the {done} epochs done in '
        f'{os.path.dirname(checkpoint_dir.rstrip(os.sep))} ({where}; metrics '
        f'up to epoch {max([0] + [len(d.rows) for d in member_dirs])}); '
        f'allowed: num_epochs >= {done}, or a new workdir for a shorter run.')


def position(step: int, steps_done: int, steps_per_epoch: int) -> str:
  """'step 6 (epoch 2, 2 of its 4 steps done)' or 'step 8 (end of epoch 2)'."""
  if not steps_done:
    return f'step {step} (end of epoch {step // steps_per_epoch})'
  return (f'step {step} (epoch {step // steps_per_epoch + 1}, {steps_done} of '
          f'its {steps_per_epoch} steps done)')


def _stop_run(store, steps, state, step: int, loop: faults.LoopState,
              stop: faults.StopRequests, steps_per_epoch: int) -> None:
  """Saves a checkpoint of a run stopped on request; raises RunStopped."""
  where = position(step, loop.steps_done, steps_per_epoch)
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


def _diverged_error(e: faults.Diverged, store, steps_per_epoch: int,
                    config) -> faults.Diverged:
  """`e` with the whole story: where, why, and the last good checkpoint."""
  epoch = (e.step - 1) // steps_per_epoch + 1
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
      f'training stopped: {e.reason} at step {e.step} (epoch {epoch}, step '
      f'{(e.step - 1) % steps_per_epoch + 1} of {steps_per_epoch}) with '
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
               epoch: int, loop: faults.LoopState, *, steps_per_epoch: int,
               watch: faults.NonfiniteWatch, stop: faults.StopRequests,
               bar=None, trace=None):
  """Trains `epoch` from step `loop.steps_done` on; returns the state.

  Updates `loop` (steps done, device totals, seconds). Returns early, with
  loop.steps_done < steps_per_epoch, when a stop is requested.
  """
  first_step = (epoch - 1) * steps_per_epoch
  totals = loop.totals
  previous = None
  t0 = time.perf_counter()
  for i, batch in enumerate(epoch_batches(
      steps, train_arrays, order, batch_size, steps_per_epoch,
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


def _log_epoch(name, epoch, config, steps, rows, loop, steps_per_epoch):
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
        f' | {row["skipped_steps"]} steps skipped (non-finite)'
        if row['skipped_steps'] else '')
    return
  errors = [member_rows[-1]['test_error'] for member_rows in rows]
  best = int(np.nanargmin(errors)) if not np.all(np.isnan(errors)) else 0
  logging.info(
      '%sepoch %d/%d | test error min %.4f (%s) max %.4f | %.1fs %.0f img/s '
      '(all members)%s', prefix, epoch, config.num_epochs, errors[best],
      steps.member_names[best], np.nanmax(errors),
      rows[0][-1]['epoch_seconds'],
      len(rows) * config.batch_size * steps_per_epoch / loop.train_seconds,
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
