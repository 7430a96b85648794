"""`train_and_evaluate(config, workdir)`: the epoch loop behind `train.py`."""

import collections
import logging
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

import models
from training import input_pipeline
from training import optimizers
from training import train_lib
from training import workdir as workdir_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


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

  def positive_int(key, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'{key}={value!r} is not allowed; allowed: an integer '
                       '>= 1.')

  choice('model', config.model, models.MODEL_NAMES)
  choice('dataset', config.dataset, input_pipeline.DATASETS)
  choice('data_source', config.data_source, input_pipeline.SOURCES)
  choice('dtype', config.dtype, tuple(DTYPES))
  choice('optimizer.name', config.optimizer.name, optimizers.OPTIMIZERS)
  for key in ('batch_size', 'eval_batch_size', 'num_epochs',
              'checkpoint_every_epochs', 'keep_checkpoints'):
    positive_int(key, config[key])
  if data_parallel:
    train_lib.check_batch_divides(config.batch_size, jax.device_count(),
                                  'batch_size')
    train_lib.check_batch_divides(config.eval_batch_size, jax.device_count(),
                                  'eval_batch_size')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, data: input_pipeline.CifarData = None,
                       progress: bool = True) -> dict:
  """Trains per `config`, resuming from `workdir`'s latest checkpoint.

  Everything that can be refused (config values, optimizer hyperparameters,
  data, a conflicting stored config) is checked before any file is written.
  Returns the last epoch's metrics row.
  """
  validate(config)
  run_dir = workdir_lib.Workdir(workdir, config)
  run_dir.check()
  if data is None:
    data = input_pipeline.load_cifar(config.dataset, source=config.data_source,
                                     data_dir=config.data_dir or None)
  steps_per_epoch = input_pipeline.steps_per_epoch(
      data.train.num_examples, config.batch_size)
  optimizer = optimizers.create_optimizer(config, steps_per_epoch)
  model = models.create_model(config.model, data.num_classes,
                              dtype=DTYPES[config.dtype])
  mesh = train_lib.make_mesh()
  steps = train_lib.MeshSteps(mesh, model, optimizer)

  run_dir.prepare()
  manager = run_dir.checkpoint_manager(config.keep_checkpoints)
  # Closed on every exit: an error must not leave a save thread behind.
  try:
    state = jax.jit(
        lambda rng: train_lib.create_train_state(rng, model, optimizer),
        out_shardings=steps.replicated)(jax.random.key(config.seed))
    rows = []
    start_epoch = 0
    restored = restore_latest(manager, state)
    if restored is not None:
      state = restored
      start_epoch = int(state.step) // steps_per_epoch
      # Rows written after the checkpoint (a run killed in between) are redone.
      rows = [r for r in run_dir.read_metrics() if r['epoch'] <= start_epoch]
      logging.info('Resumed from step %d (epoch %d) in %s', int(state.step),
                   start_epoch, run_dir.path)

    train_images = steps.replicate(data.train.images)
    train_labels = steps.replicate(data.train.labels.astype(np.int32))
    row = rows[-1] if rows else {}
    for epoch in range(start_epoch + 1, config.num_epochs + 1):
      hyper = jax.device_get(optimizers.current_hyperparameters(
          config, steps_per_epoch, state.opt_state, state.step))
      t0 = time.perf_counter()
      order = input_pipeline.epoch_permutation(config.seed, epoch,
                                               data.train.num_examples)
      bar = _progress_bar(progress, steps_per_epoch, epoch, config.num_epochs)
      state, totals = train_epoch(
          steps, state, epoch_batches(steps, train_images, train_labels, order,
                                      config.batch_size, steps_per_epoch), bar)
      train = train_lib.host_metrics(totals)
      if train['finite'] < train['count'] / config.batch_size:
        raise FloatingPointError(
            f'non-finite training loss in epoch {epoch} (step '
            f'{int(state.step)}); last checkpoint: {manager.latest_step()}')
      train_seconds = time.perf_counter() - t0
      test = evaluate(steps, state, data.test, config.eval_batch_size)
      epoch_seconds = time.perf_counter() - t0
      row = epoch_row(epoch, int(state.step), hyper, train, test, train_seconds,
                      epoch_seconds)
      rows.append(row)
      run_dir.write_metrics(rows)
      logging.info(
          'epoch %d/%d step %d lr %.4g p %s | train loss %.4f err %.4f | test '
          'loss %.4f err %.4f top5 %.4f | %.1fs %.0f img/s', epoch,
          config.num_epochs, row['step'], row['lr'], row['p'],
          row['train_loss'], row['train_error'], row['test_loss'],
          row['test_error'], row['test_top5_error'], epoch_seconds,
          row['images_per_second'])
      if checkpoint_due(config, epoch):
        manager.save(int(state.step), args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    manager.wait_until_finished()
  finally:
    manager.close()
  return row


# Pieces of the epoch loop, shared with the sweep runner (sweeps/grid.py),
# whose `steps` vmap the same step functions over a grid of members: there the
# totals hold one value per member.


def restore_latest(manager: ocp.CheckpointManager, state):
  """The latest checkpoint restored with `state`'s structure, or None."""
  latest = manager.latest_step()
  if latest is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return manager.restore(latest, args=ocp.args.StandardRestore(abstract))


def checkpoint_due(config: ml_collections.ConfigDict, epoch: int) -> bool:
  return (epoch % config.checkpoint_every_epochs == 0 or
          epoch == config.num_epochs)


def epoch_batches(steps, images, labels, order: np.ndarray, batch_size: int,
                  num_steps: int):
  """The epoch's training batches, gathered on device by index.

  `order` is a permutation (N,), or one per sweep member (K, N); batch i
  holds the examples order[..., i * batch_size:(i + 1) * batch_size].
  """
  for i in range(num_steps):
    idx = order[..., i * batch_size:(i + 1) * batch_size]
    yield steps.gather(images, labels, steps.global_array(idx, steps.sharded))


def train_epoch(steps, state, batches, bar=None):
  """`steps.train_step` over `batches`; returns the state and device totals."""
  totals = None
  pending = collections.deque()
  for i, batch in enumerate(batches):
    state, metrics = steps.train_step(state, batch)
    totals = metrics if totals is None else steps.add(totals, metrics)
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
    _show_metrics(bar, totals)
    bar.close()
  return state, totals


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


def epoch_row(epoch: int, step: int, hyper: dict, train: dict, test: dict,
              train_seconds: float, epoch_seconds: float) -> dict:
  """One metrics row (workdir_lib.METRIC_COLUMNS) from host sums and times."""
  return {
      'epoch': epoch,
      'step': step,
      'lr': float(hyper['learning_rate']),
      'p': float(hyper['p']) if 'p' in hyper else None,
      'train_loss': train['loss_sum'] / train['count'],
      'train_error': 1.0 - train['correct'] / train['count'],
      'test_loss': test['loss_sum'] / test['count'],
      'test_error': 1.0 - test['top1_correct'] / test['count'],
      'test_top5_error': 1.0 - test['top5_correct'] / test['count'],
      'epoch_seconds': epoch_seconds,
      'images_per_second': train['count'] / train_seconds,
  }


def _progress_bar(enabled, total, epoch, num_epochs):
  if not enabled or jax.process_index() != 0:
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, desc=f'epoch {epoch}/{num_epochs}',
                   leave=False, dynamic_ncols=True)


def _show_metrics(bar, totals):
  # Sums over the members of a sweep grid (a plain run: the one value).
  m = {k: float(np.sum(v)) for k, v in jax.device_get(totals).items()}
  count = max(m['count'], 1.0)
  bar.set_postfix(loss=f'{m["loss_sum"] / count:.4f}',
                  acc=f'{m["correct"] / count:.3f}')
