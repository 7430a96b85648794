"""`train_and_evaluate(config, workdir)`: the epoch loop behind `train.py`.

Faults (see docs/reliability.md): a run killed at any moment resumes from its
newest readable checkpoint and ends bit-identical to an uninterrupted run; a
stop request (SIGTERM, SIGINT) saves a checkpoint at the next step boundary,
mid-epoch if need be, and raises faults.RunStopped; a non-finite loss or
gradient follows `config.nonfinite_policy`; bad input is refused, with one
message naming the key, the value and what is allowed, before any file is
written.
"""

import collections
import difflib
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import default as default_config
import models
import padax
from padax import _checks
from training import faults
from training import input_pipeline
from training import optimizers
from training import profiling
from training import train_lib
from training import workdir as workdir_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Ranges of the optimizer hyperparameters, checked with padax's own checks for
# every optimizer (optax checks none of them): key -> check_range kwargs.
_HYPERPARAMETER_RANGES = {
    'learning_rate': dict(low=0.0),
    'momentum': dict(low=0.0, high=1.0),
    'b1': dict(low=0.0, high=1.0, high_inclusive=False),
    'b2': dict(low=0.0, high=1.0, high_inclusive=False),
    'eps': dict(low=0.0),
    'weight_decay': dict(low=0.0),
}


# ---------------------------------------------------------------------------
# Checking a config.


def _leaves(config, prefix='') -> dict:
  """{'a.b': value} of a ConfigDict, tuples kept; ConfigDicts as leaves too."""
  out = {}
  for key, value in config.items():
    out[prefix + key] = value
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(_leaves(value, f'{prefix}{key}.'))
  return out


# Names people type for a key, and the sweep's short names for its values.
_ALIASES = {'lr': 'learning_rate', 'wd': 'weight_decay', 'mom': 'momentum',
            'beta1': 'b1', 'beta2': 'b2', 'epochs': 'num_epochs',
            'bs': 'batch_size'}


def sibling_keys(key: str, keys) -> dict:
  """{leaf name: full key} of the `keys` under the same parent as `key`."""
  parent = key.rpartition('.')[0]
  return {k.rpartition('.')[2]: k for k in keys
          if k.rpartition('.')[0] == parent}


def closest_key(key: str, keys) -> str:
  """' (did you mean X?)' for the closest of `keys`, or ''.

  With an alias's name (lr: learning_rate): a key beside it (same parent),
  else a key of that name elsewhere, else any close key.
  """
  keys = list(keys)
  leaf = key.rpartition('.')[2]
  leaf = _ALIASES.get(leaf, leaf)
  siblings = sibling_keys(key, keys)
  match = [siblings[m] for m in difflib.get_close_matches(
      leaf, siblings, n=1, cutoff=0.6)]
  match = match or [k for k in keys if k.rpartition('.')[2] == leaf][:1]
  match = match or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  return f' (did you mean {match[0]}?)' if match else ''


def _kind(value) -> tuple:
  """(words, check) of the type of a reference config value."""
  is_number = lambda v: (isinstance(v, (int, float, np.integer, np.floating))
                         and not isinstance(v, (bool, np.bool_)))
  if isinstance(value, (bool, np.bool_)):
    return 'True or False', lambda v: isinstance(v, (bool, np.bool_))
  if isinstance(value, int):
    return 'an integer', lambda v: is_number(v) and float(v).is_integer() and (
        not isinstance(v, (float, np.floating)))
  if isinstance(value, float):
    return 'a number', is_number
  if isinstance(value, str):
    return 'a string', lambda v: isinstance(v, str)
  if isinstance(value, (tuple, list)):
    return 'a tuple', lambda v: isinstance(v, (tuple, list))
  return 'a ConfigDict', lambda v: isinstance(
      v, (dict, ml_collections.ConfigDict))


def check_keys_and_types(config: ml_collections.ConfigDict,
                         reference: ml_collections.ConfigDict,
                         what: str = 'configs/default.py') -> None:
  """ValueError on a key `reference` lacks, a key it has that `config`
  lacks, or a value of another type than the reference's."""
  given, known = _leaves(config), _leaves(reference)
  for key, value in given.items():
    if key not in known:
      parent = key.rpartition('.')[0]
      siblings = sibling_keys(key, known)
      raise ValueError(
          f'{key}={value!r} is not a config key{closest_key(key, known)}; '
          f'allowed{" under " + parent if parent else ""}: '
          f'{", ".join(siblings)}.')
    words, check = _kind(known[key])
    if not check(value):
      raise ValueError(f'{key}={value!r} is not allowed (a '
                       f'{type(value).__name__}); allowed: {words}, as in '
                       f'{what} ({key}={known[key]!r}).')
  for key, value in known.items():
    if key not in given:
      raise ValueError(f'{key} is missing from the config; allowed: a config '
                       f'with every key of {what} (there {key}={value!r}).')


def validate(config: ml_collections.ConfigDict, *,
             data_parallel: bool = True) -> None:
  """Checks the config's values; raises ValueError naming key, value, allowed.

  data_parallel: the batches are split over all devices (train.py), so their
  sizes must divide evenly; a sweep spreads members, not batches, over them.
  """
  def choice(key, value, allowed):
    if value not in allowed:
      raise ValueError(f'{key}={value!r} is not known; allowed: '
                       f'{", ".join(map(str, allowed))}.')

  def integer(key, value, low=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f'{key}={value!r} is not allowed; allowed: an integer '
                       f'>= {low}.')

  check_keys_and_types(config, default_config.get_config())
  choice('model', config.model, models.MODEL_NAMES)
  choice('dataset', config.dataset, input_pipeline.DATASETS)
  choice('data_source', config.data_source, input_pipeline.SOURCES)
  choice('dtype', config.dtype, tuple(DTYPES))
  choice('nonfinite_policy', config.nonfinite_policy,
         faults.NONFINITE_POLICIES)
  opt = config.optimizer
  choice('optimizer.name', opt.name, optimizers.OPTIMIZERS)
  choice('optimizer.formulation', opt.formulation, padax.FORMULATIONS)
  for key in ('batch_size', 'eval_batch_size', 'num_epochs',
              'checkpoint_every_epochs', 'keep_checkpoints',
              'max_consecutive_skips'):
    integer(key, config[key])
  integer('seed', config.seed, low=0)
  integer('optimizer.p_decay_every_epochs', opt.p_decay_every_epochs, low=0)
  for milestone in opt.lr_milestones:
    if (not isinstance(milestone, int) or isinstance(milestone, bool) or
        milestone < 1):
      raise ValueError(f'optimizer.lr_milestones={tuple(opt.lr_milestones)!r}'
                       f' is not allowed ({milestone!r}); allowed: epochs, '
                       'integers >= 1, e.g. (50, 100, 150).')
  _checks.check_range('config', 'optimizer.lr_factor', opt.lr_factor,
                      low=0.0)
  _checks.check_range('config', 'optimizer.p_decay_factor',
                      opt.p_decay_factor, low=0.0, high=1.0)
  for key in ('learning_rate',) + optimizers.HYPERPARAMETERS[opt.name]:
    if key in _HYPERPARAMETER_RANGES:
      _checks.check_range('config', f'optimizer.{key}', opt[key],
                          **_HYPERPARAMETER_RANGES[key])
  try:
    # padax's checks of its own arguments (p, formulation, ...).
    optimizers.create_optimizer(config, 1)
  except ValueError as e:
    raise ValueError(f'optimizer ({opt.name}): {e}') from None
  if data_parallel:
    train_lib.check_batch_divides(config.batch_size, jax.device_count(),
                                  'batch_size')
    train_lib.check_batch_divides(config.eval_batch_size, jax.device_count(),
                                  'eval_batch_size')


# ---------------------------------------------------------------------------
# The run.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, data: input_pipeline.CifarData = None,
                       progress: bool = True,
                       profile_steps: int = 0) -> dict:
  """Trains per `config`, resuming from `workdir`'s latest checkpoint.

  Everything that can be refused (config values, optimizer hyperparameters,
  data, a conflicting stored config, a workdir not writable or in use) is
  checked before any file is written. Returns the last epoch's metrics row.
  Raises faults.RunStopped after a stop request (a checkpoint saved),
  faults.Diverged on a non-finite loss (nothing saved after it),
  faults.WriteError when a file cannot be written (the previous intact).
  `profile_steps` > 0 writes a profiler trace of that many steps, after 5
  warm-up steps, to WORKDIR/profile.
  """
  validate(config)
  run_dir = workdir_lib.Workdir(workdir, config)
  run_dir.check()
  lock = workdir_lib.RunLock(workdir)
  lock.check_free()
  if data is None:
    data = input_pipeline.load(config)
  steps_per_epoch = input_pipeline.steps_per_epoch(
      data.train.num_examples, config.batch_size)
  optimizer = optimizers.create_optimizer(config, steps_per_epoch)
  model = models.create_model(config.model, data.num_classes,
                              dtype=DTYPES[config.dtype])
  steps = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer,
                              nonfinite=config.nonfinite_policy)

  with lock, faults.StopRequests() as stop, profiling.step_trace(
      os.path.join(workdir, 'profile'), profile_steps) as trace:
    run_dir.prepare()
    store = run_dir.checkpoint_store(config.keep_checkpoints)
    # Closed on every exit: an error must not leave a save thread behind.
    try:
      return _train(config, run_dir, store, steps, model, optimizer, data,
                    steps_per_epoch, stop, progress, trace)
    finally:
      store.close()


def _train(config, run_dir, store, steps, model, optimizer, data,
           steps_per_epoch, stop, progress, trace) -> dict:
  state = jax.jit(
      lambda rng: train_lib.create_train_state(rng, model, optimizer),
      out_shardings=steps.replicated)(jax.random.key(config.seed))
  state, loop, rows = resume(store, state, run_dir, steps_per_epoch)
  watch = faults.NonfiniteWatch(
      config.nonfinite_policy, config.max_consecutive_skips, loop,
      steps_per_epoch=steps_per_epoch, stop_run=True)
  train_images = steps.replicate(data.train.images)
  train_labels = steps.replicate(data.train.labels.astype(np.int32))
  row = rows[-1] if rows else {}
  first_epoch = int(state.step) // steps_per_epoch + 1
  for epoch in range(first_epoch, config.num_epochs + 1):
    hyper = jax.device_get(optimizers.current_hyperparameters(
        config, steps_per_epoch, state.opt_state,
        (epoch - 1) * steps_per_epoch))
    order = input_pipeline.epoch_permutation(config.seed, epoch,
                                             data.train.num_examples)
    bar = _progress_bar(progress, steps_per_epoch, epoch, config.num_epochs,
                        initial=loop.steps_done)
    try:
      state = run_epoch(steps, state, train_images, train_labels, order,
                        config.batch_size, epoch, loop,
                        steps_per_epoch=steps_per_epoch, watch=watch,
                        stop=stop, bar=bar, trace=trace)
    except faults.Diverged as e:
      raise diverged_error(e, store, steps_per_epoch, config) from None
    if loop.steps_done < steps_per_epoch:
      stop_run(store, state, int(state.step), loop, stop, steps_per_epoch)
    t0 = time.perf_counter()
    train = train_lib.host_metrics(loop.totals)
    test = evaluate(steps, state, data.test, config.eval_batch_size)
    row = epoch_row(epoch, int(state.step), hyper, train, test,
                    loop.train_seconds,
                    loop.train_seconds + time.perf_counter() - t0,
                    config.batch_size)
    rows.append(row)
    run_dir.write_metrics(rows)
    logging.info(
        'epoch %d/%d step %d lr %.4g p %s | train loss %.4f err %.4f | test '
        'loss %.4f err %.4f top5 %.4f | %.1fs %.0f img/s%s', epoch,
        config.num_epochs, row['step'], row['lr'], row['p'],
        row['train_loss'], row['train_error'], row['test_loss'],
        row['test_error'], row['test_top5_error'], row['epoch_seconds'],
        row['images_per_second'],
        f' | {row["skipped_steps"]} steps skipped (non-finite)'
        if row['skipped_steps'] else '')
    loop.start_epoch()
    if checkpoint_due(config, epoch):
      store.save(int(state.step), state, loop.to_json())
  return row


# Pieces of the epoch loop, shared with the sweep runner (sweeps/grid.py),
# whose `steps` vmap the same step functions over a grid of members: there the
# totals hold one value per member.


def resume(store, state, run_dir, steps_per_epoch: int, num_members: int = 1,
           state_for_checkpoint=lambda s: s, from_checkpoint=lambda s: s):
  """(state, LoopState, rows kept) from the newest readable checkpoint.

  Rows of epochs after the checkpoint (a run killed in between) are dropped:
  they are redone. `run_dir`: a Workdir, or a list of them (one per member).
  state_for_checkpoint / from_checkpoint map between the training state and
  what the checkpoint holds (a sweep's padding).
  """
  loop = faults.LoopState(num_members)
  restored = store.restore_latest(
      state_for_checkpoint(state),
      lambda step, meta: faults.LoopState.from_json(
          meta, num_members, step, steps_per_epoch))
  dirs = run_dir if isinstance(run_dir, list) else [run_dir]
  completed_epochs = 0
  if restored is not None:
    step, checkpoint_state, loop = restored
    state = from_checkpoint(checkpoint_state)
    completed_epochs = step // steps_per_epoch
    logging.info('Resumed from %s in %s',
                 position(step, loop.steps_done, steps_per_epoch),
                 store.directory)
  rows = [[r for r in d.read_metrics() if r['epoch'] <= completed_epochs]
          for d in dirs]
  return state, loop, rows if isinstance(run_dir, list) else rows[0]


def position(step: int, steps_done: int, steps_per_epoch: int) -> str:
  """'step 6 (epoch 2, 2 of its 4 steps done)' or 'step 8 (end of epoch 2)'."""
  if not steps_done:
    return f'step {step} (end of epoch {step // steps_per_epoch})'
  return (f'step {step} (epoch {step // steps_per_epoch + 1}, {steps_done} of '
          f'its {steps_per_epoch} steps done)')


def stop_run(store, state, step: int, loop: faults.LoopState,
             stop: faults.StopRequests, steps_per_epoch: int) -> None:
  """Saves a checkpoint of a run stopped on request; raises RunStopped."""
  where = position(step, loop.steps_done, steps_per_epoch)
  if step == (store.latest_step() or 0):
    saved = 'nothing trained since the last checkpoint, nothing to save'
  else:
    store.save(step, state, loop.to_json())
    saved = f'checkpoint saved in {store.directory}'
  raise faults.RunStopped(
      f'Stopped by {stop.signal_name} at {where}: {saved}. Run the same '
      'command again to resume.')


def diverged_error(e: faults.Diverged, store, steps_per_epoch: int,
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


def checkpoint_due(config: ml_collections.ConfigDict, epoch: int) -> bool:
  return (epoch % config.checkpoint_every_epochs == 0 or
          epoch == config.num_epochs)


def epoch_batches(steps, images, labels, order: np.ndarray, batch_size: int,
                  num_steps: int, start: int = 0):
  """The epoch's training batches from batch `start` on, gathered on device.

  `order` is a permutation (N,), or one per sweep member (K, N); batch i
  holds the examples order[..., i * batch_size:(i + 1) * batch_size].
  """
  for i in range(start, num_steps):
    idx = order[..., i * batch_size:(i + 1) * batch_size]
    yield steps.gather(images, labels, steps.global_array(idx, steps.sharded))


def _step_loop(steps, state, batches, totals=None, bar=None, *, stop=None,
               on_step=None):
  """`steps.train_step` over `batches` until `stop` is requested.

  Returns the state and the device totals (added to `totals`).
  """
  pending = collections.deque()
  for i, batch in enumerate(batches):
    if stop is not None and stop.requested:
      break
    state, metrics = steps.train_step(state, batch)
    totals = metrics if totals is None else steps.add(totals, metrics)
    if on_step is not None:
      on_step(metrics)
    pending.append(totals)
    if bar is not None:
      bar.update(1)
    # Show the totals of an earlier step: the host never waits on the step
    # it just dispatched.
    if len(pending) > 1:
      previous = pending.popleft()
      if bar is not None and i % 10 == 0:
        _show_metrics(bar, previous)
  if bar is not None:
    if totals is not None:
      _show_metrics(bar, totals)
    bar.close()
  return state, totals


def train_epoch(steps, state, batches, bar=None):
  """`steps.train_step` over `batches`; returns the state and device totals."""
  return _step_loop(steps, state, batches, bar=bar)


def run_epoch(steps, state, images, labels, order, batch_size: int,
              epoch: int, loop: faults.LoopState, *, steps_per_epoch: int,
              watch: faults.NonfiniteWatch, stop: faults.StopRequests,
              bar=None, trace=None):
  """Trains `epoch` from step `loop.steps_done` on; returns the state.

  Updates `loop` (steps done, device totals, seconds). Returns early, with
  loop.steps_done < steps_per_epoch, when a stop is requested. `watch` sees
  every step's `finite` flags (and raises Diverged in a single run).
  `trace` (a profiling.StepTrace, or None) sees every step's metrics.
  """
  first_step = (epoch - 1) * steps_per_epoch
  totals = loop.totals
  if totals is not None and not isinstance(
      jax.tree.leaves(totals)[0], jax.Array):
    # Restored from a checkpoint: the exact float32 sums, back on device.
    totals = jax.tree.map(
        lambda x: steps.global_array(x, steps.metrics_sharding), totals)

  def on_step(metrics):
    loop.steps_done += 1
    watch.push(first_step + loop.steps_done, metrics['finite'])
    if trace is not None:
      trace.after_step(metrics)

  t0 = time.perf_counter()
  state, loop.totals = _step_loop(
      steps, state, epoch_batches(steps, images, labels, order, batch_size,
                                  steps_per_epoch, start=loop.steps_done),
      totals, bar, stop=stop, on_step=on_step)
  watch.flush()
  loop.train_seconds += time.perf_counter() - t0
  return state


def evaluate_totals(steps, state, split, batch_size):
  """Device totals of `steps.eval_step` over the whole split."""
  totals = None
  for batch in input_pipeline.eval_batches(split, batch_size):
    batch = steps.shard({'images': batch['images'],
                         'labels': batch['labels'].astype(np.int32),
                         'mask': batch['mask'].astype(np.float32)})
    metrics = steps.eval_step(state, batch)
    totals = metrics if totals is None else steps.add(totals, metrics)
  return totals


def evaluate(steps: train_lib.MeshSteps, state, split, batch_size) -> dict:
  return train_lib.host_metrics(evaluate_totals(steps, state, split,
                                                batch_size))


def _ratio(a: float, b: float) -> float:
  return a / b if b else float('nan')


def epoch_row(epoch: int, step: int, hyper: dict, train: dict, test: dict,
              train_seconds: float, epoch_seconds: float,
              batch_size: int) -> dict:
  """One metrics row (workdir_lib.METRIC_COLUMNS) from host sums and times.

  The train loss and error are over the steps applied (all of them unless
  the 'skip' policy dropped some: `skipped_steps`); images_per_second counts
  every step's images.
  """
  skipped = int(train.get('skipped', 0.0))
  return {
      'epoch': epoch,
      'step': step,
      'lr': float(hyper['learning_rate']),
      'p': float(hyper['p']) if 'p' in hyper else None,
      'train_loss': _ratio(train['loss_sum'], train['count']),
      'train_error': 1.0 - _ratio(train['correct'], train['count']),
      'test_loss': test['loss_sum'] / test['count'],
      'test_error': 1.0 - test['top1_correct'] / test['count'],
      'test_top5_error': 1.0 - test['top5_correct'] / test['count'],
      'epoch_seconds': epoch_seconds,
      'images_per_second': (train['count'] + skipped * batch_size) /
                           train_seconds,
      'skipped_steps': skipped,
  }


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
