"""What a run records, as plain data: the metrics schema and the flat config.

The epoch loop (training/loop.py) writes one row per epoch with `COLUMNS`
through training/rundir.py; reporting/ reads the same rows and configs.
Nothing here imports JAX, so reporting runs wherever numpy does.
"""

import math
from typing import Optional

import numpy as np

COLUMNS = (
    'epoch', 'step', 'lr', 'p', 'train_loss', 'train_error', 'test_loss',
    'test_error', 'test_top5_error', 'epoch_seconds', 'images_per_second',
    'skipped_steps')
# The held-out validation split's columns (config.validation_examples > 0):
# a row has all three or none, and metrics.csv has them only if its rows do.
VALIDATION_COLUMNS = ('val_loss', 'val_error', 'val_top5_error')
# Columns that measure the machine, not the training: they differ between
# two runs that trained bit-identically.
TIMING_COLUMNS = ('epoch_seconds', 'images_per_second')
# Columns of float32 values: the hyperparameters as the optimizer state holds
# them. metrics.jsonl keeps their exact value (0.10000000149011612 for an lr
# of 0.1); metrics.csv, for people and spreadsheets, the shortest decimal that
# is the same float32 (0.1).
FLOAT32_COLUMNS = ('lr', 'p')


def flatten(config, prefix: str = '', *, nodes: bool = False) -> dict:
  """{'a.b': value} of a nested dict or ConfigDict.

  nodes: also list each nested dict under its own key ('a' as well as
  'a.b'), as a config's keys are spelled on the command line.
  """
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      if nodes:
        out[prefix + key] = value
      out.update(flatten(value, f'{prefix}{key}.', nodes=nodes))
    else:
      out[prefix + key] = value
  return out


def _ratio(a: float, b: float) -> float:
  return a / b if b else float('nan')


def columns(rows) -> tuple:
  """The columns of `rows`: COLUMNS, with VALIDATION_COLUMNS after the
  test columns if any row has them."""
  if not any(VALIDATION_COLUMNS[0] in r for r in rows):
    return COLUMNS
  at = COLUMNS.index('test_top5_error') + 1
  return COLUMNS[:at] + VALIDATION_COLUMNS + COLUMNS[at:]


def _eval_columns(prefix: str, sums: dict) -> dict:
  return {f'{prefix}_loss': sums['loss_sum'] / sums['count'],
          f'{prefix}_error': 1.0 - sums['top1_correct'] / sums['count'],
          f'{prefix}_top5_error': 1.0 - sums['top5_correct'] / sums['count']}


def epoch_row(epoch: int, step: int, hyper: dict, train: dict, test: dict,
              train_seconds: float, epoch_seconds: float,
              batch_size: int, validation: Optional[dict] = None) -> dict:
  """One metrics row (`columns`) from one member's host sums and times.

  hyper: the learning rate (and p) in use; train, test, validation: the sums
  of the epoch's train and eval steps (validation None: no validation split,
  and no VALIDATION_COLUMNS). The train loss and error are over the steps
  applied (all of them unless the 'skip' policy dropped some:
  `skipped_steps`); images_per_second counts every step's images.
  """
  skipped = int(train.get('skipped', 0.0))
  return {
      'epoch': epoch,
      'step': step,
      'lr': float(hyper['learning_rate']),
      'p': float(hyper['p']) if 'p' in hyper else None,
      'train_loss': _ratio(train['loss_sum'], train['count']),
      'train_error': 1.0 - _ratio(train['correct'], train['count']),
      **_eval_columns('test', test),
      **({} if validation is None else _eval_columns('val', validation)),
      'epoch_seconds': epoch_seconds,
      'images_per_second': (train['count'] + skipped * batch_size) /
                           train_seconds,
      'skipped_steps': skipped,
  }


def csv_row(row: dict) -> dict:
  """`row` as metrics.csv writes it: each of FLOAT32_COLUMNS that holds a
  float32 value as the shortest text that reads back as that float32."""
  out = dict(row)
  for key in FLOAT32_COLUMNS:
    value = out.get(key)
    if (isinstance(value, float) and math.isfinite(value) and
        float(np.float32(value)) == value):
      out[key] = str(np.float32(value))
  return out


def finite_or_none(x) -> Optional[float]:
  return None if x is None or not math.isfinite(x) else x
