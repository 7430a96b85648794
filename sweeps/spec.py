"""A sweep config's grid: its members, their train configs and the chunks.

A sweep config is a train config (training/configuration.py) plus a `sweep`
ConfigDict naming the grid:

  sweep.p, .learning_rate, .seed  lists of values; their product is the grid
                                  (an absent key: the base config's value)
  sweep.weight_decay, .b1, .b2, .eps, .momentum
                                  optional lists, where the optimizer takes them
  sweep.own_batches  False: members share each batch (the order of the base
                     config's `seed`); True: each member draws its own order
                     from its seed, exactly as train.py with that seed
  sweep.chunk        members trained at once: 0 all, -1 from a memory
                     estimate, N: N at a time, one chunk after another
  sweep.halving      eta, first_rung_epochs: successive halving
                     (sweeps/halving.py; off by default)

Each member's values are checked as train.py checks them (padax's ranges).
"""

import dataclasses
import itertools
import math
from typing import Optional

import ml_collections
import numpy as np

from sweeps import halving
from training import configuration
from training import optimizers

AUTO_CHUNK = -1
ALL_MEMBERS = 0

# Grid keys, in the order of the product (seed last), and their short names
# in member names.
SHORT_NAMES = {'p': 'p', 'learning_rate': 'lr', 'momentum': 'mom', 'b1': 'b1',
               'b2': 'b2', 'eps': 'eps', 'weight_decay': 'wd', 'seed': 'seed'}
GRID_KEYS = tuple(SHORT_NAMES)
OPTION_KEYS = ('own_batches', 'chunk', 'halving')


@dataclasses.dataclass(frozen=True)
class Member:
  """One point of the grid: `values` maps grid keys to python numbers."""
  index: int
  name: str
  values: dict

  @property
  def seed(self) -> int:
    return self.values['seed']


def _fail(key, value, why, allowed):
  raise ValueError(f'{key}={value!r} is not allowed ({why}); allowed: '
                   f'{allowed}.')


def _check_values(key: str, values, optimizer_name: str) -> list:
  name = f'sweep.{key}'
  allowed = ('a non-empty list of distinct integers >= 0' if key == 'seed'
             else f'a non-empty list of distinct values of optimizer.{key}')
  if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
    _fail(name, values, 'not a list', allowed)
  if not values:
    _fail(name, values, 'empty', allowed)
  out = []
  for v in values:
    if (isinstance(v, (bool, np.bool_)) or
        not isinstance(v, (int, float, np.integer, np.floating))):
      _fail(name, values, f'{v!r} is not a number', allowed)
    if key == 'seed':
      if not float(v).is_integer() or v < 0:
        _fail(name, values, f'{v!r} is not an integer >= 0', allowed)
      if v > configuration.MAX_SEED:
        _fail(name, values, f'{v!r} is above {configuration.MAX_SEED}',
              f'{allowed}, each <= {configuration.MAX_SEED}')
      out.append(int(v))
      continue
    if not math.isfinite(v):
      _fail(name, values, f'{v!r} is not finite', allowed)
    try:
      configuration.check_hyperparameter(optimizer_name, key, float(v))
    except ValueError as e:
      _fail(name, values, str(e).rstrip('.'), allowed)
    out.append(float(v))
  if len(set(out)) != len(out):
    _fail(name, values, 'a value repeats', allowed)
  return out


def format_value(value) -> str:
  return str(value) if isinstance(value, int) else f'{value:g}'


def sweep_options(config: ml_collections.ConfigDict,
                  chunk: Optional[int] = None) -> dict:
  """`own_batches`, `chunk` (given: it overrides sweep.chunk) and
  `halving` ((eta, first_rung_epochs)), checked."""
  sweep = config.sweep
  own = sweep.get('own_batches', False)
  if not isinstance(own, (bool, np.bool_)):
    _fail('sweep.own_batches', own, 'not a bool', 'True or False')
  if chunk is None:
    chunk = sweep.get('chunk', ALL_MEMBERS)
  if (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or
      chunk < AUTO_CHUNK):
    _fail('sweep.chunk', chunk, 'not a count of members',
          f'an integer >= 1, {ALL_MEMBERS} (all members at once) or '
          f'{AUTO_CHUNK} (from a memory estimate)')
  return {'own_batches': bool(own), 'chunk': int(chunk),
          'halving': halving.halving_options(config)}


def grid_members(config: ml_collections.ConfigDict) -> list:
  """The members of the grid in `config.sweep`; ValueError on a bad grid.

  The product runs over p, learning_rate, the other optimizer keys, then seed
  (the last varies fastest). Keys absent from `sweep` take the base config's
  value (learning_rate, seed, and p for Padam are always in the members).
  """
  if not isinstance(config.get('sweep'), ml_collections.ConfigDict):
    _fail('sweep', config.get('sweep'), 'missing or not a ConfigDict',
          'a ConfigDict of lists, e.g. sweep.p, sweep.learning_rate, '
          'sweep.seed')
  sweep_options(config)
  name = config.optimizer.name
  if name not in optimizers.HYPERPARAMETERS:
    _fail('optimizer.name', name, 'not known', ', '.join(optimizers.OPTIMIZERS))
  applicable = ('learning_rate', 'seed') + tuple(
      k for k in optimizers.HYPERPARAMETERS[name] if k in SHORT_NAMES)
  lists = {}
  for key in config.sweep.keys():
    if key in OPTION_KEYS:
      continue
    if key not in applicable:
      suggestion = configuration.closest_key(key, applicable + OPTION_KEYS)
      why = (f'optimizer.name={name!r} takes no {key}' if key in SHORT_NAMES
             else f'not a grid key{suggestion.replace(" (", "; ")[:-1]}'
             if suggestion else 'not a grid key')
      _fail(f'sweep.{key}', config.sweep[key], why,
            'grid keys ' + ', '.join(k for k in GRID_KEYS if k in applicable)
            + ' and options ' + ', '.join(OPTION_KEYS))
    lists[key] = _check_values(key, config.sweep[key], name)
  lists.setdefault('learning_rate', [config.optimizer.learning_rate])
  lists.setdefault('seed', [config.seed])
  if 'p' in applicable:
    lists.setdefault('p', [config.optimizer.p])
  keys = [k for k in GRID_KEYS if k in lists]
  members = []
  for index, combo in enumerate(itertools.product(*(lists[k] for k in keys))):
    values = dict(zip(keys, combo))
    member_name = '-'.join(f'{SHORT_NAMES[k]}{format_value(values[k])}'
                           for k in keys)
    members.append(Member(index, member_name, values))
  names = [m.name for m in members]
  if len(set(names)) != len(names):
    _fail('sweep', {k: lists[k] for k in keys},
          'values too close to tell apart in member names (6 digits)',
          'values that differ in their first 6 significant digits')
  return members


def train_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The base experiment: the sweep config without `sweep`."""
  d = config.to_dict()
  d.pop('sweep', None)
  return ml_collections.ConfigDict(d)


def member_config(config: ml_collections.ConfigDict,
                  member: Member) -> ml_collections.ConfigDict:
  """The train config that `member` trains with (seed and its values set)."""
  d = train_config(config).to_dict()
  for key, value in member.values.items():
    (d if key == 'seed' else d['optimizer'])[key] = value
  return ml_collections.ConfigDict(d)


def chunks_of(members: list, chunk: int) -> list:
  return [members[i:i + chunk] for i in range(0, len(members), chunk)]


def first_chunk_size(num_members: int, chunk: int) -> int:
  """Members in the first chunk (all for ALL_MEMBERS or AUTO_CHUNK)."""
  return min(chunk, num_members) if chunk > 0 else num_members


def members_at_once(config: ml_collections.ConfigDict,
                    chunk: Optional[int] = None) -> int:
  """first_chunk_size of the grid; `chunk` (--chunk) overrides sweep.chunk."""
  num_members = len(grid_members(config))  # Checks the grid first.
  return first_chunk_size(num_members, sweep_options(config, chunk)['chunk'])
