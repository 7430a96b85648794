"""The config that train.py and sweep.py read: its keys, and the one check of it.

`base_config()` lists every key, with the reproducibility report's Table 1
setting for Padam on ResNet18 / CIFAR-10 as defaults (configs/ hold the
presets built on it). `validate` refuses a config, before anything is
written, with one message naming the key, the value and what is allowed:
keys and types against `base_config()`, choices against the names of
models, datasets and optimizers, and the optimizers' hyperparameters
against the ranges here.

Nothing here imports JAX (nor Flax, Optax or padax): train.py refuses a bad
config before JAX starts. So the harness keeps its own list of model names,
optimizers, their config keys and ranges; tests pin them to models/,
training/optimizers.py and padax.
"""

import difflib
import math

import ml_collections
import numpy as np

import models
from training import faults
from training import input_pipeline
from training import records

# The computation dtypes a config may name (`compute_dtype` gives JAX's).
DTYPE_NAMES = ('float32', 'bfloat16')

# The optimizers a config names, with the config keys each takes besides
# learning_rate (the arguments of training/optimizers.py's factories).
HYPERPARAMETERS = {
    'sgdm': ('momentum', 'weight_decay'),
    'adam': ('b1', 'b2', 'eps', 'weight_decay'),
    'amsgrad': ('b1', 'b2', 'eps', 'weight_decay'),
    'adamw': ('b1', 'b2', 'eps', 'weight_decay'),
    'padam': ('p', 'b1', 'b2', 'eps', 'weight_decay', 'formulation'),
    'lion': ('b1', 'b2', 'weight_decay'),
}
OPTIMIZERS = tuple(HYPERPARAMETERS)

# The config values each optimizer starts from (configs/default.py's
# `set_optimizer`): the report's Table 1 hyperparameters; AdamW's are ours.
OPTIMIZER_DEFAULTS = {
    'sgdm': dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4),
    'adam': dict(learning_rate=1e-3, b1=0.9, b2=0.99, weight_decay=1e-4),
    'amsgrad': dict(learning_rate=1e-3, b1=0.9, b2=0.99, weight_decay=1e-4),
    # Decoupled decay scaled by lr: 1e-3 * 0.05 = 5e-5 per step, the same
    # shrinkage per step as SGD's 0.1 * 5e-4.
    'adamw': dict(learning_rate=1e-3, b1=0.9, b2=0.999, weight_decay=0.05),
    'padam': dict(learning_rate=0.1, b1=0.9, b2=0.999, weight_decay=5e-4,
                  p=0.125),
    # Ours, after the Lion paper's advice (arXiv 2302.06675): lr 10x smaller
    # and decoupled decay 10x larger than AdamW's, so lr * wd stays 5e-5.
    'lion': dict(learning_rate=1e-4, b1=0.9, b2=0.99, weight_decay=0.5),
}

# padax.FORMULATIONS.
FORMULATIONS = ('authors', 'paper', 'report')

# (low, high, high included) of each numeric hyperparameter; high None: no
# upper bound. p, b1, b2, eps, weight_decay and learning_rate as padax
# allows them (Padam's p in [0, 1/2], Adam's betas in [0, 1)); momentum as
# PyTorch's SGD takes it, below 1 so that old gradients fade.
HYPERPARAMETER_RANGES = {
    'learning_rate': (0.0, None, False),
    'p': (0.0, 0.5, True),
    'b1': (0.0, 1.0, False),
    'b2': (0.0, 1.0, False),
    'eps': (0.0, None, False),
    'weight_decay': (0.0, None, False),
    'momentum': (0.0, 1.0, False),
}


def compute_dtype(name: str):
  """JAX's dtype of a `DTYPE_NAMES` name (imports JAX)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


def base_config() -> ml_collections.ConfigDict:
  """Every key train.py knows, with the report's Table 1 Padam setting."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = 'resnet18'
  config.dataset = 'cifar10'
  # Where CIFAR comes from: 'download', 'local' or 'tfds', in data_dir ('':
  # the default); README.md, "Data". 'arrays': your own images, the .npz file
  # data_dir, instead of `dataset` (README.md, "Your own images").
  config.data_source = 'download'
  config.data_dir = ''
  # Train on the first N training images only; 0: all of them.
  config.train_examples = 0
  # Hold out this many of those training images for validation; 0: none.
  config.validation_examples = 0
  config.dtype = 'float32'
  config.batch_size = 128
  config.eval_batch_size = 500
  # XLA devices a CPU-only host is split into for one data-parallel run or
  # sweep member (training/host_devices.py). 1: the paper models'
  # convolutions keep the cores busy by themselves; small models gain from
  # more (docs/benchmarks.md, "train.py on a CPU host: the device split").
  config.cpu_devices = 1
  config.num_epochs = 200
  config.checkpoint_every_epochs = 10
  config.keep_checkpoints = 3
  # A non-finite loss or gradient: 'stop' the run at once, or 'skip' the
  # update and stop after max_consecutive_skips in a row
  # (docs/reliability.md).
  config.nonfinite_policy = 'stop'
  config.max_consecutive_skips = 10

  config.optimizer = ml_collections.ConfigDict()
  opt = config.optimizer
  opt.name = 'padam'
  opt.learning_rate = 0.1
  # lr x lr_factor at each milestone epoch (the report: 50/100/150).
  opt.lr_milestones = (50, 100, 150)
  opt.lr_factor = 0.1
  opt.momentum = 0.9
  opt.b1 = 0.9
  opt.b2 = 0.999
  opt.eps = 1e-8
  opt.weight_decay = 5e-4
  opt.p = 0.125
  # The report's proposal: p x p_decay_factor every p_decay_every_epochs
  # (0: constant p).
  opt.p_decay_every_epochs = 0
  opt.p_decay_factor = 0.5
  opt.formulation = 'authors'
  return config


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


def not_a_key(key: str, keys) -> str:
  """What follows "KEY is not a key" in a message: the closest of `keys` and
  those allowed beside `key`, ' (did you mean X?); allowed under P: A, B.'"""
  parent = key.rpartition('.')[0]
  return (f'{closest_key(key, keys)}; allowed'
          f'{" under " + parent if parent else ""}: '
          f'{", ".join(sibling_keys(key, keys))}.')


def _is_number(v) -> bool:
  return (isinstance(v, (int, float, np.integer, np.floating))
          and not isinstance(v, (bool, np.bool_)))


def value_kind(value) -> tuple:
  """(words, check) of the type of a reference config value."""
  if isinstance(value, (bool, np.bool_)):
    return 'True or False', lambda v: isinstance(v, (bool, np.bool_))
  if isinstance(value, int):
    return 'an integer', lambda v: _is_number(v) and not isinstance(
        v, (float, np.floating))
  if isinstance(value, float):
    return 'a number', _is_number
  if isinstance(value, str):
    return 'a string', lambda v: isinstance(v, str)
  if isinstance(value, (tuple, list)):
    return 'a tuple', lambda v: isinstance(v, (tuple, list))
  return 'a ConfigDict', lambda v: isinstance(
      v, (dict, ml_collections.ConfigDict))


def check_keys_and_types(config: ml_collections.ConfigDict,
                         reference: ml_collections.ConfigDict) -> None:
  """ValueError on a key `reference` lacks, a key it has that `config`
  lacks, or a value of another type than the reference's."""
  what = 'training/configuration.py'
  given = records.flatten(config, nodes=True)
  known = records.flatten(reference, nodes=True)
  for key, value in given.items():
    if key not in known:
      raise ValueError(
          f'{key}={value!r} is not a config key{not_a_key(key, known)}')
    words, check = value_kind(known[key])
    if not check(value):
      raise ValueError(f'{key}={value!r} is not allowed (a '
                       f'{type(value).__name__}); allowed: {words}, as in '
                       f'{what} ({key}={known[key]!r}).')
  for key, value in known.items():
    if key not in given:
      raise ValueError(f'{key} is missing from the config; allowed: a config '
                       f'with every key of {what} (there {key}={value!r}).')


def _choice(key, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f'{key}={value!r} is not known; allowed: '
                     f'{", ".join(map(str, allowed))}.')


# Upper bounds of the integer keys: finite, and far beyond any sensible run.
MAX_EPOCHS = 10_000          # the report trains 200
# Far beyond CIFAR's 50,000 training images; after loading,
# check_against_data bounds it by the data.
MAX_BATCH_SIZE = 65_536
MAX_SEED = 2**32 - 1         # a uint32: what every PRNG here takes as is

INTEGER_RANGES = {
    'seed': (0, MAX_SEED),
    'batch_size': (1, MAX_BATCH_SIZE),
    'eval_batch_size': (1, MAX_BATCH_SIZE),
    # More XLA devices than a CPU host has threads only adds partitioning.
    'cpu_devices': (1, 256),
    'num_epochs': (1, MAX_EPOCHS),
    'checkpoint_every_epochs': (1, MAX_EPOCHS),
    'keep_checkpoints': (1, 1_000),
    'max_consecutive_skips': (1, 1_000_000),
    'optimizer.p_decay_every_epochs': (0, MAX_EPOCHS),
    # Below the training images; loading the data checks that.
    'validation_examples': (0, np.iinfo(np.int32).max),
}


def _integer(key, value, low, high) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise ValueError(f'{key}={value!r} is not allowed; allowed: an integer '
                     f'>= {low}.')
  if value > high:
    raise ValueError(f'{key}={value!r} is not allowed; allowed: an integer, '
                     f'{low} <= {key} <= {high}.')


def _number(prefix, key, value, low, high=None, high_included=True) -> None:
  """ValueError (`prefix` first) unless `value` is a finite number in range;
  high None: no upper bound."""
  allowed = (f'{key} >= {low:g}' if high is None else
             f'{low:g} <= {key} {"<=" if high_included else "<"} {high:g}')
  if not _is_number(value):
    raise ValueError(f'{prefix}{key}={value!r} is not a number; allowed: '
                     f'{allowed}.')
  x = float(value)
  finite = math.isfinite(x)
  # The range's text says why, but for NaN and, without an upper bound, inf.
  range_says_why = finite or (math.isinf(x) and high is not None)
  if not finite or x < low or (high is not None and
                               (x > high if high_included else x >= high)):
    raise ValueError(f'{prefix}{key}={value!r} is out of range; allowed: '
                     f'{allowed}{"" if range_says_why else ", finite"}.')


def check_hyperparameter(optimizer_name: str, key: str, value) -> None:
  """ValueError unless `value` is allowed for optimizer hyperparameter `key`
  (the config keys HYPERPARAMETERS names, and learning_rate)."""
  if key == 'formulation':
    _choice('optimizer.formulation', value, FORMULATIONS)
  else:
    _number(f'optimizer ({optimizer_name}): ', key, value,
            *HYPERPARAMETER_RANGES[key])


def validate(config: ml_collections.ConfigDict, *,
             num_devices: int = 1) -> None:
  """Checks the config's keys and values; ValueError naming key, value, allowed.

  num_devices: devices each batch is split over (train.py: all of them), so
  the batch sizes must divide evenly.
  """
  check_keys_and_types(config, base_config())
  _choice('model', config.model, models.MODEL_NAMES)
  _choice('dataset', config.dataset, input_pipeline.DATASETS)
  _choice('data_source', config.data_source, input_pipeline.SOURCES)
  _choice('dtype', config.dtype, DTYPE_NAMES)
  _choice('nonfinite_policy', config.nonfinite_policy,
          faults.NONFINITE_POLICIES)
  opt = config.optimizer
  _choice('optimizer.name', opt.name, OPTIMIZERS)
  flat = records.flatten(config)
  for key, (low, high) in INTEGER_RANGES.items():
    _integer(key, flat[key], low, high)
  # 0: all; at most the dataset's training split (an .npz file's: once read).
  _integer('train_examples', config.train_examples, 0,
           input_pipeline.SPECS[config.dataset].train_examples
           if config.data_source != 'arrays' else np.iinfo(np.int32).max)
  for milestone in opt.lr_milestones:
    if (not isinstance(milestone, int) or isinstance(milestone, bool) or
        milestone < 1 or milestone > MAX_EPOCHS):
      raise ValueError(f'optimizer.lr_milestones={tuple(opt.lr_milestones)!r}'
                       f' is not allowed ({milestone!r}); allowed: epochs, '
                       f'integers >= 1 and <= {MAX_EPOCHS}, e.g. (50, 100, 150) '
                       '(a repeated epoch compounds, as in MultiStepLR).')
  # What the lr is multiplied by at a milestone: a decay (MultiStepLR's gamma).
  _number('', 'optimizer.lr_factor', opt.lr_factor, 0.0, 1.0)
  _number('', 'optimizer.p_decay_factor', opt.p_decay_factor, 0.0, 1.0)
  for key in ('learning_rate',) + HYPERPARAMETERS[opt.name]:
    check_hyperparameter(opt.name, key, opt[key])
  for key in ('batch_size', 'eval_batch_size'):
    check_batch_divides(config[key], num_devices, key)


def check_batch_divides(batch_size: int, num_devices: int, key: str) -> None:
  if batch_size % num_devices:
    raise ValueError(
        f'{key}={batch_size} does not divide evenly over {num_devices} '
        f'devices; allowed: a multiple of {num_devices}.')


def check_against_data(config: ml_collections.ConfigDict,
                       data: input_pipeline.CifarData, *,
                       num_devices: int = 1) -> None:
  """ValueError unless the model and the batch sizes fit the loaded data.

  batch_size <= the training examples (an epoch has at least one step);
  eval_batch_size <= the test examples, rounded up to a multiple of
  num_devices: evaluation pads the last batch to eval_batch_size, so a larger
  one only adds padding, and memory, without evaluating more.
  """
  train, test = data.train.num_examples, data.test.num_examples
  side = models.MIN_IMAGE_SIDE.get(config.model, 1)
  if min(data.spec.image_shape[:2]) < side:
    any_size = [m for m in models.MODEL_NAMES if m not in models.MIN_IMAGE_SIDE]
    raise ValueError(
        f'model={config.model!r} is not allowed for the '
        f'{data.spec.image_shape} images of {data.source}; allowed: images of '
        f'at least {side}x{side} for {config.model}, or model='
        f'{" or ".join(any_size)}, which take any size.')
  if config.batch_size > train:
    raise ValueError(
        f'batch_size={config.batch_size} is larger than the {train} training '
        f'examples of {data.source}; allowed: 1 <= batch_size <= {train}.')
  most = -(-test // num_devices) * num_devices
  if config.eval_batch_size > most:
    raise ValueError(
        f'eval_batch_size={config.eval_batch_size} is larger than the {test} '
        f'test examples of {data.source} (a batch beyond them is only '
        f'padding); allowed: 1 <= eval_batch_size <= {most}.')
