"""A grid of hyperparameters trained at once: one `jax.vmap` of train.py's step.

A sweep config is a train config (every key train.py knows, e.g. from
`configs/default.py`) plus a `sweep` ConfigDict naming the grid:

  sweep.p, sweep.learning_rate, sweep.seed   lists of values (their product is
                                             the grid; an absent key uses the
                                             base config's value)
  sweep.weight_decay, .b1, .b2, .eps, .momentum
                                             optional lists, where the
                                             optimizer takes them
  sweep.own_batches  False: members share each batch (the order of the base
                     config's `seed`); True: each member draws its own order
                     from its seed, exactly as train.py with that seed
  sweep.chunk        members trained at once: 0 all, -1 from a memory
                     estimate, N: N at a time, one chunk after another

The K members of a chunk are ONE stacked TrainState (a leading member axis on
every leaf), trained by `jax.vmap(training.train_lib.train_step)`, jitted with
the stacked state donated and sharded over a `grid` mesh axis (the members
spread over the devices; a chunk is padded with copies of its last member to a
multiple of the device count, and the copies are dropped before writing or
checkpointing). `optimizers.create_optimizer` injects the PEAK lr and INITIAL p
(and the other numeric hyperparameters) into `opt_state.hyperparams`, the
schedule shapes multiplying them inside, so the members share one optimizer
and each carries its own values in its state. BatchNorm statistics are part
of each member's state: vmap keeps them per member.

Workdir layout:
  config.json                     the sweep config (chunk resolved)
  members/<name>/config.json      the member's effective train config (+
                                  `sweep_member`: how its data order was drawn)
  members/<name>/metrics.jsonl|csv  the same rows and columns as train.py
  checkpoints/chunk-NNN/<step>    Orbax checkpoints of a chunk's stacked state
  summary.json, summary.md        per member: p, lr, seed, final and best test
                                  error, best epoch
Running again on the same workdir resumes every chunk from its latest
checkpoint and ends bit-identical to an uninterrupted sweep.
"""

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import models
from training import checkpoints
from training import faults
from training import host_devices
from training import input_pipeline
from training import optimizers
from training import profiling
from training import train_lib
from training import trainer
from training import workdir as workdir_lib

GRID_AXIS = 'grid'
DATA_AXIS = train_lib.DATA_AXIS
AUTO_CHUNK = -1
ALL_MEMBERS = 0

# Grid keys: (allowed values in words, check, short name in member names).
# The optimizer hyperparameters are those `create_optimizer` injects, so each
# member's value lives in its own `opt_state.hyperparams`.
_GRID_KEYS = {
    'p': ('numbers in [0, 0.5]', lambda v: 0.0 <= v <= 0.5, 'p'),
    'learning_rate': ('numbers > 0', lambda v: v > 0.0, 'lr'),
    'momentum': ('numbers in [0, 1]', lambda v: 0.0 <= v <= 1.0, 'mom'),
    'b1': ('numbers in [0, 1)', lambda v: 0.0 <= v < 1.0, 'b1'),
    'b2': ('numbers in [0, 1)', lambda v: 0.0 <= v < 1.0, 'b2'),
    'eps': ('numbers > 0', lambda v: v > 0.0, 'eps'),
    'weight_decay': ('numbers >= 0', lambda v: v >= 0.0, 'wd'),
    'seed': ('integers >= 0', lambda v: v >= 0, 'seed'),
}
GRID_KEYS = tuple(_GRID_KEYS)  # Also the order of the product (seed last).
OPTION_KEYS = ('own_batches', 'chunk')


@dataclasses.dataclass(frozen=True)
class Member:
  """One point of the grid: `values` maps grid keys to python numbers."""
  index: int
  name: str
  values: dict

  @property
  def seed(self) -> int:
    return self.values['seed']

  @property
  def hyperparameters(self) -> dict:
    return {k: v for k, v in self.values.items() if k != 'seed'}


# ---------------------------------------------------------------------------
# The grid from a sweep config.


def _fail(key, value, why, allowed):
  raise ValueError(f'{key}={value!r} is not allowed ({why}); allowed: '
                   f'{allowed}.')


def _check_values(key: str, values) -> list:
  words, check, _ = _GRID_KEYS[key]
  allowed = f'a non-empty list of distinct {words}'
  name = f'sweep.{key}'
  if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
    _fail(name, values, 'not a list', allowed)
  if not values:
    _fail(name, values, 'empty', allowed)
  out = []
  for v in values:
    if (isinstance(v, (bool, np.bool_)) or
        not isinstance(v, (int, float, np.integer, np.floating))):
      _fail(name, values, f'{v!r} is not a number', allowed)
    if key == 'seed' and not float(v).is_integer():
      _fail(name, values, f'{v!r} is not an integer', allowed)
    if not math.isfinite(v) or not check(v):
      _fail(name, values, f'{v!r} is not one of the {words}', allowed)
    out.append(int(v) if key == 'seed' else float(v))
  if len(set(out)) != len(out):
    _fail(name, values, 'a value repeats', allowed)
  return out


def _format(value) -> str:
  return str(value) if isinstance(value, int) else f'{value:g}'


def sweep_options(config: ml_collections.ConfigDict) -> dict:
  """`own_batches` and `chunk`, checked."""
  sweep = config.sweep
  own = sweep.get('own_batches', False)
  if not isinstance(own, (bool, np.bool_)):
    _fail('sweep.own_batches', own, 'not a bool', 'True or False')
  chunk = sweep.get('chunk', ALL_MEMBERS)
  if (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or
      chunk < AUTO_CHUNK):
    _fail('sweep.chunk', chunk, 'not a count of members',
          f'an integer >= 1, {ALL_MEMBERS} (all members at once) or '
          f'{AUTO_CHUNK} (from a memory estimate)')
  return {'own_batches': bool(own), 'chunk': int(chunk)}


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
      k for k in optimizers.HYPERPARAMETERS[name] if k in _GRID_KEYS)
  lists = {}
  for key in config.sweep.keys():
    if key in OPTION_KEYS:
      continue
    if key not in applicable:
      suggestion = trainer.closest_key(key, applicable + OPTION_KEYS)
      why = (f'optimizer.name={name!r} takes no {key}' if key in _GRID_KEYS
             else f'not a grid key{suggestion.replace(" (", "; ")[:-1]}'
             if suggestion else 'not a grid key')
      _fail(f'sweep.{key}', config.sweep[key], why,
            'grid keys ' + ', '.join(k for k in GRID_KEYS if k in applicable)
            + ' and options ' + ', '.join(OPTION_KEYS))
    lists[key] = _check_values(key, config.sweep[key])
  base = {'learning_rate': config.optimizer.learning_rate, 'seed': config.seed}
  if 'p' in applicable:
    base['p'] = config.optimizer.p
  for key, value in base.items():
    lists.setdefault(key, [value])
  keys = [k for k in GRID_KEYS if k in lists]
  members = []
  for index, combo in enumerate(itertools.product(*(lists[k] for k in keys))):
    values = dict(zip(keys, combo))
    member_name = '-'.join(f'{_GRID_KEYS[k][2]}{_format(values[k])}'
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
    if key == 'seed':
      d['seed'] = value
    else:
      d['optimizer'][key] = value
  return ml_collections.ConfigDict(d)


# ---------------------------------------------------------------------------
# The vmapped steps and the stacked state.


class GridSteps(train_lib.MeshSteps):
  """`train_step` / `eval_step` vmapped over a leading member axis.

  Jitted over a (`grid`, `data`) mesh (make_grid_mesh): `grid` shards the
  member axis of the stacked state (donated) and of the metrics; each
  member's batch is split over `data`, as train.py splits its batch, so
  BatchNorm statistics are over the member's whole batch and never across
  members. Training batches are shared by all members (vmap in_axes=None) or
  one per member (in_axes=0, also sharded over `grid`); evaluation batches
  are always shared. Same interface as MeshSteps, so trainer.py's epoch
  pieces drive it.

  Each `grid` slice of devices runs the vmap over its own members
  (`jax.shard_map`, manual over `grid` only, `data` left to the SPMD
  partitioner): members never talk to each other, and left to the
  partitioner the vmapped (grouped) convolutions were partitioned with
  collectives that made a 9-device CPU grid 20x slower than one device
  (docs/benchmarks.md).
  """

  def __init__(self, mesh, model, optimizer, *, own_batches: bool = False,
               nonfinite: str = 'stop'):
    # pylint: disable=super-init-not-called
    self.mesh = mesh
    self.members = NamedSharding(mesh, P(GRID_AXIS))
    self.replicated = NamedSharding(mesh, P())
    self.metrics_sharding = self.members
    # Where training batches (and their indices) live, and evaluation ones.
    self.sharded = NamedSharding(
        mesh, P(GRID_AXIS, DATA_AXIS) if own_batches else P(DATA_AXIS))
    self.eval_sharded = NamedSharding(mesh, P(DATA_AXIS))
    batch_axis = 0 if own_batches else None
    batch_spec = P(GRID_AXIS) if own_batches else P()

    def per_device(step, in_axes, data_spec):
      return jax.shard_map(jax.vmap(step, in_axes=in_axes), mesh=mesh,
                           in_specs=(P(GRID_AXIS), data_spec),
                           out_specs=P(GRID_AXIS), axis_names={GRID_AXIS})

    self.train_step = jax.jit(
        per_device(functools.partial(train_lib.train_step, model=model,
                                     optimizer=optimizer, nonfinite=nonfinite),
                   (0, batch_axis), batch_spec),
        in_shardings=(self.members, self.sharded),
        out_shardings=(self.members, self.members),
        donate_argnums=(0,))
    self.eval_step = jax.jit(
        per_device(functools.partial(train_lib.eval_step, model=model),
                   (0, None), P()),
        in_shardings=(self.members, self.eval_sharded),
        out_shardings=self.members)
    self._build_batch_helpers()

  def shard(self, tree):
    """An evaluation batch: every member sees all of it."""
    return jax.tree.map(lambda x: self.global_array(x, self.eval_sharded),
                        tree)


@functools.lru_cache(maxsize=8)
def _build_base(config_json: str, num_classes: int, steps_per_epoch: int,
                device_ids: tuple, data: int):
  """Model, optimizer, grid mesh and jitted init of one base experiment.

  Memoised on the config (as JSON), as is `_build_steps`, so that chunks, and
  sweeps run again in the same process, reuse the compiled functions (jit
  caches per shape).
  """
  base = ml_collections.ConfigDict(json.loads(config_json))
  optimizer = optimizers.create_optimizer(base, steps_per_epoch)
  model = models.create_model(base.model, num_classes,
                              dtype=trainer.DTYPES[base.dtype])
  devices = {d.id: d for d in jax.devices()}
  mesh = make_grid_mesh([devices[i] for i in device_ids], data)

  def init(keys, values):
    state = jax.vmap(
        lambda key: train_lib.create_train_state(key, model, optimizer))(keys)
    return set_hyperparameters(state, values)

  members = NamedSharding(mesh, P(GRID_AXIS))
  return model, optimizer, mesh, jax.jit(init, out_shardings=members)


@functools.lru_cache(maxsize=8)
def _build_steps(config_json: str, num_classes: int, steps_per_epoch: int,
                 device_ids: tuple, data: int, own_batches: bool,
                 nonfinite: str):
  model, optimizer, mesh, _ = _build_base(config_json, num_classes,
                                          steps_per_epoch, device_ids, data)
  return GridSteps(mesh, model, optimizer, own_batches=own_batches,
                   nonfinite=nonfinite)


def build(base: ml_collections.ConfigDict, num_classes: int,
          steps_per_epoch: int, own_batches: bool, devices=None,
          data: int = 1):
  """(model, optimizer, GridSteps, init) for the base train config.

  init(keys, values) -> the stacked TrainState (see `init_grid`). The steps
  follow base.nonfinite_policy (default 'stop' for configs without it).
  `data`: devices per member (make_grid_mesh).
  """
  devices = devices if devices is not None else jax.devices()
  devices = devices[:len(devices) // data * data]
  # Only what the model and optimizer are built from: a longer run reuses them.
  key = {k: base[k] for k in ('model', 'dtype')}
  key['optimizer'] = base.optimizer.to_dict()
  args = (json.dumps(key, sort_keys=True), num_classes, steps_per_epoch,
          tuple(d.id for d in devices), data)
  model, optimizer, _, init = _build_base(*args)
  nonfinite = base.get('nonfinite_policy', 'stop')
  return model, optimizer, _build_steps(*args, bool(own_batches),
                                        nonfinite), init


def make_grid_mesh(devices=None, data: int = 1) -> jax.sharding.Mesh:
  """A (grid, data) mesh: `data` devices per slice of members."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices.reshape(-1, data), (GRID_AXIS, DATA_AXIS))


def devices_per_member(base: ml_collections.ConfigDict, num_devices: int,
                       num_members: int) -> int:
  """The `data` size of the grid mesh: the devices left for each member
  once every member has one, cut to what divides both batch sizes."""
  return host_devices.largest_divisor(num_devices // max(num_members, 1),
                                      base.batch_size, base.eval_batch_size)


def cpu_devices(config: ml_collections.ConfigDict,
                chunk: Optional[int] = None) -> int:
  """XLA devices sweep.py splits a CPU host into: each member of a chunk
  data parallel over its own (host_devices.cpu_devices_per_run). Batch 32
  per device ran the 9-member tiny-CNN grid 1.26x faster than one member per
  device (docs/benchmarks.md)."""
  return members_at_once(config, chunk) * host_devices.cpu_devices_per_run(
      train_config(config))


def set_hyperparameters(state: train_lib.TrainState, values: dict):
  """`state` (stacked) with opt_state.hyperparams[k] = values[k] per member."""
  hyper = dict(state.opt_state.hyperparams)
  for key, value in values.items():
    if key not in hyper:
      raise ValueError(f'sweep.{key} is not allowed: the optimizer injects no '
                       f'{key}; allowed: {", ".join(sorted(hyper))}.')
    hyper[key] = jnp.asarray(value, hyper[key].dtype).reshape(
        hyper[key].shape)
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


def init_grid(init, members: list):
  """The stacked TrainState of `members`, from `build`'s init.

  Member k's leaves are create_train_state(jax.random.key(seed_k)) (vmapped),
  with its own hyperparameter values set in opt_state.hyperparams.
  """
  keys = jnp.stack([jax.random.key(m.seed) for m in members])
  values = {k: np.asarray([m.values[k] for m in members], np.float32)
            for k in members[0].hyperparameters}
  return init(keys, values)


def padded_size(num_members: int, slices: int) -> int:
  """Members once padded to a multiple of the `grid` slices (the padding
  repeats the last member; its results are dropped)."""
  return -(-num_members // slices) * slices


def _padded(items: list, size: int) -> list:
  return list(items) + [items[-1]] * (size - len(items))


@functools.partial(jax.jit, static_argnums=(1,))
def _take(tree, count: int):
  """The first `count` members (drops the padding)."""
  return jax.tree.map(lambda x: x[:count], tree)


@functools.partial(jax.jit, static_argnums=(1,))
def _pad(tree, size: int):
  """`size` members: the last one repeated."""
  def pad(x):
    extra = jnp.repeat(x[-1:], size - x.shape[0], axis=0)
    return jnp.concatenate([x, extra])
  return jax.tree.map(pad, tree)


def epoch_order(members: list, data_seed: int, own_batches: bool, epoch: int,
                num_examples: int) -> np.ndarray:
  """(N,) shared order, or (K, N): member k's order from its seed."""
  if not own_batches:
    return input_pipeline.epoch_permutation(data_seed, epoch, num_examples)
  return np.stack([input_pipeline.epoch_permutation(m.seed, epoch,
                                                    num_examples)
                   for m in members])


# ---------------------------------------------------------------------------
# Chunking.


def _tree_bytes(tree) -> int:
  def itemsize(dtype):
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
      return 8  # A threefry key: two uint32.
    return np.dtype(dtype).itemsize
  return sum(int(np.prod(x.shape)) * itemsize(x.dtype)
             for x in jax.tree.leaves(tree))


def free_memory_bytes(device=None) -> Optional[int]:
  """Free memory of a device (accelerator stats, else the host's)."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def estimate_member_bytes(model, optimizer, batch_size: int) -> int:
  """Device bytes one member needs: 3x its state + the step's temporaries.

  The temporaries (activations, gradients) come from XLA's memory analysis of
  one member's compiled step; state in, gradients and optimizer temporaries
  are counted as three copies of the state.
  """
  state = jax.eval_shape(
      lambda key: train_lib.create_train_state(key, model, optimizer),
      jax.random.key(0))
  batch = {'images': jax.ShapeDtypeStruct((batch_size, 32, 32, 3), jnp.uint8),
           'labels': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  temp = 0
  try:
    analysis = jax.jit(functools.partial(
        train_lib.train_step, model=model, optimizer=optimizer)).lower(
            state, batch).compile().memory_analysis()
    temp = int(getattr(analysis, 'temp_size_in_bytes', 0) or 0)
  except Exception:  # pylint: disable=broad-except
    pass  # Some backends give no analysis: count the state only.
  return 3 * _tree_bytes(state) + temp


def auto_chunk(num_members: int, member_bytes: int, free_bytes: Optional[int],
               reserved_bytes: int = 0, num_devices: int = 1,
               fraction: float = 0.7) -> int:
  """How many members fit at once: `fraction` of free memory per device."""
  if free_bytes is None:
    return num_members
  usable = fraction * free_bytes - reserved_bytes
  per_device = max(1, int(usable // max(member_bytes, 1)))
  return max(1, min(num_members, per_device * num_devices))


def chunks_of(members: list, chunk: int) -> list:
  return [members[i:i + chunk] for i in range(0, len(members), chunk)]


def _first_chunk_size(num_members: int, chunk: int) -> int:
  """Members in the first chunk (all for ALL_MEMBERS or AUTO_CHUNK)."""
  return min(chunk, num_members) if chunk > 0 else num_members


def members_at_once(config: ml_collections.ConfigDict,
                    chunk: Optional[int] = None) -> int:
  """Members in the first chunk (all for ALL_MEMBERS or AUTO_CHUNK).

  `chunk` overrides the config's sweep.chunk, as sweep.py's --chunk does.
  """
  num_members = len(grid_members(config))  # Checks the grid first.
  if chunk is None:
    chunk = sweep_options(config)['chunk']
  return _first_chunk_size(num_members, chunk)


# ---------------------------------------------------------------------------
# Summary.


def _nan_to_none(x):
  return None if x is None or not math.isfinite(x) else x


def summarize_member(member: Member, rows: list,
                     diverged: Optional[dict] = None) -> dict:
  """Errors, skipped steps and divergence of one member.

  diverged: what the sweep's NonfiniteWatch recorded ({'step', 'epoch',
  'reason'}), None if nothing; a member whose train loss is not finite in a
  row counts as diverged too (workdirs from before the watch).
  """
  out = {'name': member.name, **member.values, 'epochs': len(rows)}
  errors = [(r['test_error'], r['epoch']) for r in rows
            if r['test_error'] is not None and math.isfinite(r['test_error'])]
  best = min(errors) if errors else (None, None)
  final = rows[-1] if rows else {}
  nan_epochs = [r['epoch'] for r in rows if r['train_loss'] is None or
                not math.isfinite(r['train_loss'])]
  diverged = diverged or {}
  out.update(
      final_test_error=_nan_to_none(final.get('test_error')),
      best_test_error=best[0], best_epoch=best[1],
      final_train_loss=_nan_to_none(final.get('train_loss')),
      skipped_steps=sum(r.get('skipped_steps') or 0 for r in rows),
      diverged_epoch=diverged.get('epoch', nan_epochs[0] if nan_epochs
                                  else None),
      diverged_step=diverged.get('step'),
      diverged_reason=diverged.get('reason'))
  return out


def _percent(x):
  return '—' if x is None else f'{100 * x:.2f}'


def summary_markdown(config, members: list, summary: list) -> str:
  keys = [k for k in GRID_KEYS if k in members[0].values]
  base = train_config(config)
  lines = [
      f'# Sweep: {base.model} on {base.dataset}, {base.optimizer.name}',
      '',
      f'{len(members)} members ({" x ".join(str(len({m.values[k] for m in members})) for k in keys)} '
      f'over {", ".join(keys)}), {base.num_epochs} '
      f'epoch{"" if base.num_epochs == 1 else "s"} at batch '
      f'{base.batch_size}, ' + (
          f'lr x{base.optimizer.lr_factor} at epochs '
          f'{", ".join(map(str, base.optimizer.lr_milestones))}'
          if base.optimizer.lr_milestones else 'constant lr') +
      '. Errors in %.',
      '',
      '| member | ' + ' | '.join(keys) + ' | epochs | final test error | '
      'best test error | best epoch |',
      '|---|' + '---:|' * (len(keys) + 4),
  ]
  for s in summary:
    cells = [s['name']] + [_format(s[k]) for k in keys] + [
        str(s['epochs']),
        _percent(s['final_test_error']) + _divergence(s),
        _percent(s['best_test_error']),
        '—' if s['best_epoch'] is None else str(s['best_epoch'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  done = [s for s in summary if s['best_test_error'] is not None]
  if done:
    best = min(done, key=lambda s: s['best_test_error'])
    lines += ['', f'Best: {best["name"]}, test error '
              f'{_percent(best["best_test_error"])}% at epoch '
              f'{best["best_epoch"]}.']
  if 'seed' in keys and len({m.seed for m in members}) > 1:
    lines += _seed_means(keys, summary)
  return '\n'.join(lines) + '\n'


def _divergence(s: dict) -> str:
  if s['diverged_epoch'] is None:
    return (f' ({s["skipped_steps"]} steps skipped)'
            if s.get('skipped_steps') else '')
  at = f'epoch {s["diverged_epoch"]}'
  if s.get('diverged_step') is not None:
    at += f', step {s["diverged_step"]}: {s["diverged_reason"]}'
  return f' (diverged at {at})'


def _seed_means(keys, summary) -> list:
  others = [k for k in keys if k != 'seed']
  groups = {}
  for s in summary:
    if s['final_test_error'] is not None:
      groups.setdefault(tuple(s[k] for k in others), []).append(
          s['final_test_error'])
  lines = ['', 'Mean ± std over seeds of the final test error (%):', '',
           '| ' + ' | '.join(others) + ' | seeds | final test error |',
           '|' + '---:|' * (len(others) + 2)]
  for values, errors in groups.items():
    e = 100 * np.asarray(errors)
    lines.append('| ' + ' | '.join(map(_format, values)) +
                 f' | {len(errors)} | {e.mean():.2f} ± {e.std():.2f} |')
  return lines


def write_summary(path: str, config, members: list, member_dirs: list,
                  diverged: Optional[dict] = None) -> list:
  """summary.json and summary.md; diverged: {member name: watch record}."""
  diverged = diverged or {}
  summary = [summarize_member(m, d.read_metrics(), diverged.get(m.name))
             for m, d in zip(members, member_dirs)]
  if jax.process_index() == 0:
    workdir_lib._atomic_write(  # pylint: disable=protected-access
        os.path.join(path, 'summary.json'),
        json.dumps({'members': summary}, indent=2, sort_keys=True))
    workdir_lib._atomic_write(  # pylint: disable=protected-access
        os.path.join(path, 'summary.md'),
        summary_markdown(config, members, summary))
  return summary


# ---------------------------------------------------------------------------
# The sweep.


def _stored_chunk(workdir: str) -> Optional[int]:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get('sweep', {}).get('chunk')


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *,
              chunk: Optional[int] = None,
              data: input_pipeline.CifarData = None, progress: bool = True,
              after_epoch: Optional[Callable[[int, int], None]] = None,
              profile_steps: int = 0) -> list:
  """Trains every member of `config`'s grid; resumes from `workdir`.

  chunk: overrides config.sweep.chunk. Everything that can be refused (grid,
  config, optimizer values, data, a workdir holding another sweep) is checked
  before any file is written. `after_epoch(chunk_index, epoch)` (for tests)
  runs after an epoch's metrics are written, before its checkpoint. Returns
  the summary: one dict per member. `profile_steps` > 0 writes a profiler
  trace of that many grid steps, after 5 warm-up steps, to WORKDIR/profile.
  """
  members = grid_members(config)
  options = sweep_options(config)
  if chunk is not None:
    options['chunk'] = sweep_options(ml_collections.ConfigDict(
        {'sweep': {'chunk': chunk}}))['chunk']
  base = train_config(config)
  trainer.validate(base, data_parallel=False)
  for member in members:
    # padax checks its values when built (e.g. p, b1, eps).
    optimizers.create_optimizer(member_config(config, member), 1)
  if jax.process_count() > 1:
    raise ValueError(f'jax.process_count()={jax.process_count()} is not '
                     'allowed; allowed: 1 (a sweep runs in one process, its '
                     'members spread over that process\'s devices).')
  workdir = os.path.abspath(workdir)
  requested_chunk = options['chunk']
  if requested_chunk == AUTO_CHUNK:
    requested_chunk = _stored_chunk(workdir) or AUTO_CHUNK

  def resolved(chunk_size):
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.sweep.chunk = chunk_size
    return c

  def check_workdirs(chunk_size):
    stored = _stored_chunk(workdir)
    if stored is not None and stored != chunk_size:
      raise ValueError(
          f'sweep.chunk={chunk_size} is not allowed for workdir={workdir!r}: '
          f'it holds a sweep trained {stored} members at a time; allowed: '
          f'{stored} (--chunk {stored}), as the grouping changes float '
          'rounding, so a resumed sweep would not match an uninterrupted '
          'one.')
    sweep_dir = workdir_lib.Workdir(workdir, resolved(chunk_size))
    sweep_dir.check()
    member_dirs = []
    for m in members:
      cfg = member_config(config, m)
      cfg.sweep_member = {'name': m.name, 'own_batches': options['own_batches'],
                          'data_seed': m.seed if options['own_batches']
                                       else base.seed}
      member_dirs.append(workdir_lib.Workdir(
          os.path.join(workdir, 'members', m.name), cfg))
      member_dirs[-1].check()
    return sweep_dir, member_dirs

  # All members for AUTO_CHUNK until the memory estimate below.
  chunk_size = _first_chunk_size(len(members), requested_chunk)
  if requested_chunk != AUTO_CHUNK:
    check_workdirs(chunk_size)
  lock = workdir_lib.RunLock(workdir)
  lock.check_free()
  if data is None:
    data = input_pipeline.load(base)
  steps_per_epoch = input_pipeline.steps_per_epoch(
      data.train.num_examples, base.batch_size)
  model, optimizer, steps, init = build(
      base, data.num_classes, steps_per_epoch, options['own_batches'],
      data=devices_per_member(base, jax.device_count(), chunk_size))
  num_devices = steps.mesh.shape[GRID_AXIS]
  if requested_chunk == AUTO_CHUNK:
    member_bytes = estimate_member_bytes(model, optimizer, base.batch_size)
    chunk_size = auto_chunk(len(members), member_bytes, free_memory_bytes(),
                            reserved_bytes=data.train.images.nbytes,
                            num_devices=num_devices)
    logging.info('Auto chunk: %d of %d members at once (~%.1f MiB each)',
                 chunk_size, len(members), member_bytes / 2**20)
  sweep_dir, member_dirs = check_workdirs(chunk_size)

  with lock, faults.StopRequests() as stop, profiling.step_trace(
      os.path.join(workdir, 'profile'), profile_steps) as trace:
    sweep_dir.prepare()
    for d in member_dirs:
      d.prepare()
    groups = chunks_of(list(zip(members, member_dirs)), chunk_size)
    images = labels = None
    diverged = {}
    for ci, group in enumerate(groups):
      chunk_members = [m for m, _ in group]
      chunk_dirs = [d for _, d in group]
      store = checkpoints.CheckpointStore(
          os.path.join(workdir, 'checkpoints', f'chunk-{ci:03d}'),
          base.keep_checkpoints)
      # Closed on every exit: an error must not leave a save thread behind.
      try:
        latest = store.latest_step()
        if latest is not None and latest // steps_per_epoch >= base.num_epochs:
          logging.info('Chunk %d/%d is done (epoch %d).', ci + 1, len(groups),
                       latest // steps_per_epoch)
          for d in chunk_dirs:
            d.write_metrics([r for r in d.read_metrics()
                             if r['epoch'] <= latest // steps_per_epoch])
          loop = _stored_loop_state(store, latest, len(chunk_members),
                                    steps_per_epoch)
        else:
          if images is None:
            images = steps.replicate(data.train.images)
            labels = steps.replicate(data.train.labels.astype(np.int32))
          loop = _train_chunk(base, options['own_batches'], steps, init,
                              chunk_members, chunk_dirs, store,
                              steps_per_epoch, data, images, labels, ci,
                              len(groups), progress, after_epoch, stop, trace)
      finally:
        store.close()
      diverged.update({m.name: d for m, d in zip(chunk_members, loop.diverged)
                       if d is not None})
      summary = write_summary(workdir, config, members, member_dirs, diverged)
  return summary


def _stored_loop_state(store, step: int, num_members: int,
                       steps_per_epoch: int) -> faults.LoopState:
  """The loop state of a finished chunk's checkpoint (for its summary)."""
  try:
    return faults.LoopState.from_json(store.loop_metadata(step), num_members,
                                      step, steps_per_epoch)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Chunk checkpoint %s/%d: its loop state is unreadable '
                    '(%s); its members\' divergence is taken from their '
                    'metrics.', store.directory, step, e)
    return faults.LoopState(num_members)


def restore_chunk(workdir: str, chunk_index: int, *, num_classes: int,
                  steps_per_epoch: int, step: Optional[int] = None):
  """(members, stacked TrainState) of a chunk's checkpoint (default: latest).

  Reads the sweep config from `workdir`/config.json; `num_classes` and
  `steps_per_epoch` (of the dataset trained on) rebuild the state's shape.
  """
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  members = chunks_of(grid_members(config),
                      config.sweep.chunk)[chunk_index]
  _, _, _, init = build(train_config(config), num_classes, steps_per_epoch,
                        config.sweep.own_batches, devices=jax.devices()[:1])
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device),
      jax.eval_shape(lambda: init_grid(init, members)))
  with ocp.CheckpointManager(os.path.join(
      workdir, 'checkpoints', f'chunk-{chunk_index:03d}')) as manager:
    step = manager.latest_step() if step is None else step
    return members, manager.restore(
        step, args=ocp.args.StandardRestore(abstract))


def _train_chunk(base, own_batches, steps, init, chunk_members, chunk_dirs,
                 store, steps_per_epoch, data, images, labels, ci, num_chunks,
                 progress, after_epoch, stop, trace) -> faults.LoopState:
  """Trains one chunk to base.num_epochs, resuming from `store`.

  Returns the loop state at the end (its `diverged` names the members the
  NonfiniteWatch gave up on; the others were not disturbed).
  """
  num_devices = steps.mesh.shape[GRID_AXIS]
  size = padded_size(len(chunk_members), num_devices)
  padded = _padded(chunk_members, size)
  real = len(chunk_members)
  # Checkpoints hold the real members only: a restart on another device count
  # pads again.
  if size == real:
    real_members = padded_members = lambda tree: tree
  else:
    real_members = lambda tree: _take(tree, real)
    padded_members = lambda tree: jax.device_put(_pad(tree, size),
                                                 steps.members)
  state, loop, all_rows = trainer.resume(
      store, init_grid(init, padded), chunk_dirs, steps_per_epoch,
      num_members=real, state_for_checkpoint=real_members,
      from_checkpoint=padded_members)
  if loop.totals is not None and size > real:
    loop.totals = {k: np.concatenate([v, np.repeat(v[-1:], size - real)])
                   for k, v in loop.totals.items()}
  step = int(np.asarray(jax.device_get(state.step))[0])
  logging.info('Chunk %d/%d: %d members (%s) at once on %d x %d device(s) '
               '(grid x data)%s%s.', ci + 1, num_chunks, real,
               ', '.join(m.name for m in chunk_members), num_devices,
               steps.mesh.shape[DATA_AXIS],
               f', padded to {size}' if size > real else '',
               f', resumed from step {step}' if step else '')
  watch = faults.NonfiniteWatch(
      base.nonfinite_policy, base.max_consecutive_skips, loop,
      steps_per_epoch=steps_per_epoch, stop_run=False,
      member_names=[m.name for m in chunk_members])
  for epoch in range(step // steps_per_epoch + 1, base.num_epochs + 1):
    hyper = jax.device_get(optimizers.current_hyperparameters(
        base, steps_per_epoch, state.opt_state,
        (epoch - 1) * steps_per_epoch))
    order = epoch_order(padded, base.seed, own_batches, epoch,
                        data.train.num_examples)
    bar = trainer._progress_bar(  # pylint: disable=protected-access
        progress, steps_per_epoch, epoch, base.num_epochs,
        initial=loop.steps_done)
    state = trainer.run_epoch(steps, state, images, labels, order,
                              base.batch_size, epoch, loop,
                              steps_per_epoch=steps_per_epoch, watch=watch,
                              stop=stop, bar=bar, trace=trace)
    step = int(np.asarray(jax.device_get(state.step))[0])
    if loop.steps_done < steps_per_epoch:
      trainer.stop_run(store, real_members(state), step, loop, stop,
                       steps_per_epoch)
    t0 = time.perf_counter()
    train = jax.device_get(loop.totals)
    test = jax.device_get(trainer.evaluate_totals(
        steps, state, data.test, base.eval_batch_size))
    epoch_seconds = loop.train_seconds + time.perf_counter() - t0
    for k, (d, rows) in enumerate(zip(chunk_dirs, all_rows)):
      pick = lambda tree: {key: float(v[k]) for key, v in tree.items()}  # pylint: disable=cell-var-from-loop
      # images/s: this member's images over the chunk's wall time (the
      # members train at once, so the chunk's throughput is their sum).
      rows.append(trainer.epoch_row(epoch, step, pick(hyper), pick(train),
                                    pick(test), loop.train_seconds,
                                    epoch_seconds, base.batch_size))
      d.write_metrics(rows)
    errors = [rows[-1]['test_error'] for rows in all_rows]
    best = int(np.nanargmin(errors)) if not np.all(np.isnan(errors)) else 0
    logging.info('chunk %d/%d epoch %d/%d | test error min %.4f (%s) max '
                 '%.4f | %.1fs %.0f img/s (all members)%s', ci + 1,
                 num_chunks, epoch, base.num_epochs, errors[best],
                 chunk_members[best].name, np.nanmax(errors), epoch_seconds,
                 real * base.batch_size * steps_per_epoch / loop.train_seconds,
                 ''.join(f' | {m.name} diverged' for m, d in
                         zip(chunk_members, loop.diverged) if d is not None))
    if after_epoch is not None:
      after_epoch(ci, epoch)
    loop.start_epoch()
    if trainer.checkpoint_due(base, epoch):
      store.save(step, real_members(state), loop.to_json())
  return loop
