"""Helpers shared by the sweep presets."""

import ml_collections

from training import input_pipeline

# The report's p grid (section 4.2 and 4.3).
P_GRID = (0.25, 0.125, 0.0625)


def dataset_arg(arg: str) -> str:
  if arg not in input_pipeline.SPECS:
    raise ValueError(f'config argument {arg!r} is not allowed; allowed: '
                     f'{", ".join(input_pipeline.SPECS)}.')
  return arg


def add_sweep(config, *, p=P_GRID, learning_rate=(0.1,), seed=(0,),
              own_batches=False, chunk=0):
  """`config` (a train config) with the `sweep` grid added."""
  config.sweep = ml_collections.ConfigDict()
  config.sweep.p = tuple(p)
  config.sweep.learning_rate = tuple(learning_rate)
  config.sweep.seed = tuple(seed)
  config.sweep.own_batches = own_batches  # See sweeps/spec.py.
  config.sweep.chunk = chunk
  # Off; --config.sweep.halving.eta=3 turns it on (sweeps/halving.py).
  config.sweep.halving = ml_collections.ConfigDict(
      {'eta': 0, 'first_rung_epochs': 1})
  return config
