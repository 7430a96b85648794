"""A grid of hyperparameters trained at once: one `jax.vmap` of train.py's step.

The K members of a chunk (sweeps/spec.py) are ONE stacked TrainState (a
leading member axis on every leaf), padded with copies of its last member to
a multiple of the `grid` devices (dropped before writing or checkpointing).
`optimizers.create_optimizer` injects the PEAK lr and INITIAL p (and the other
numeric hyperparameters) into `opt_state.hyperparams`, so the members share
one optimizer and each carries its own values in its state.
"""

import copy
import functools
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import models
from sweeps import spec
from training import configuration
from training import host_devices
from training import input_pipeline
from training import optimizers
from training import train_lib

GRID_AXIS = 'grid'
DATA_AXIS = train_lib.DATA_AXIS


class GridSteps(train_lib.MeshSteps):
  """`train_step` / `eval_step` vmapped over a leading member axis.

  Jitted over a (`grid`, `data`) mesh (make_grid_mesh): `grid` shards the
  member axis of the state and metrics; each member's batch is split over
  `data`, as train.py splits its batch (BatchNorm statistics never mix
  members). Training batches are shared by all members or one per member
  (own_batches); evaluation batches are always shared.

  Each `grid` slice of devices runs the vmap over its own members
  (`jax.shard_map`, manual over `grid` only): left to the SPMD partitioner,
  the vmapped (grouped) convolutions get collectives that make a CPU grid
  slower than one device.
  """

  def __init__(self, mesh, model, optimizer, *, own_batches: bool = False,
               nonfinite: str = 'stop',
               dataset: input_pipeline.DatasetSpec = input_pipeline.CIFAR10):
    self.own_batches = own_batches
    self.padded_members = []
    members = NamedSharding(mesh, P(GRID_AXIS))
    batches = NamedSharding(
        mesh, P(GRID_AXIS, DATA_AXIS) if own_batches else P(DATA_AXIS))

    def per_device(step, train):
      batch_axis = 0 if train and own_batches else None
      return jax.shard_map(
          jax.vmap(step, in_axes=(0, batch_axis)), mesh=mesh,
          in_specs=(P(GRID_AXIS),
                    P() if batch_axis is None else P(GRID_AXIS)),
          out_specs=P(GRID_AXIS), axis_names={GRID_AXIS})

    super().__init__(mesh, model, optimizer, nonfinite=nonfinite,
                     dataset=dataset, per_device=per_device,
                     shardings=(members, batches,
                                NamedSharding(mesh, P(DATA_AXIS))))

  def for_members(self, members: list) -> 'GridSteps':
    """These steps, for a chunk of `members` (spec.Member), padded to a
    multiple of the `grid` slices. The jitted steps are shared, not copied."""
    view = copy.copy(self)
    slices = self.mesh.shape[GRID_AXIS]
    size = -(-len(members) // slices) * slices
    view.padded_members = list(members) + [members[-1]] * (size - len(members))
    view.num_members = len(members)
    view.member_names = [m.name for m in members]
    return view

  def batch_order(self, seed: int, epoch: int, num_examples: int):
    """(N,) shared order (from the base config's seed), or (K, N): member
    k's order from its own seed."""
    if not self.own_batches:
      return super().batch_order(seed, epoch, num_examples)
    return np.stack([super(GridSteps, self).batch_order(
        m.seed, epoch, num_examples) for m in self.padded_members])

  def member_values(self, tree) -> list:
    return [{k: float(v[i]) for k, v in tree.items()}
            for i in range(self.num_members)]

  def for_checkpoint(self, tree):
    # The real members only: a restart on another device count pads again.
    if len(self.padded_members) == self.num_members:
      return tree
    return _take(tree, self.num_members)

  def place(self, tree):
    """`tree` (this view's members, stacked) padded and placed on the
    mesh, as the steps take it."""
    size = len(self.padded_members)
    if size > self.num_members:
      tree = _pad(tree, size)
    return jax.device_put(tree, self.state_sharding)

  def from_checkpoint(self, tree):
    size = len(self.padded_members)
    if size == self.num_members:
      return tree
    return jax.device_put(_pad(tree, size), self.state_sharding)


def build(base: ml_collections.ConfigDict, num_classes: int,
          steps_per_epoch: int, own_batches: bool, devices=None,
          data: int = 1,
          dataset: input_pipeline.DatasetSpec = input_pipeline.CIFAR10):
  """(model, optimizer, GridSteps, init) for the base train config and
  `dataset` (its images; `num_classes` outputs).

  init(keys, values) -> the stacked TrainState (see `init_grid`). `data`:
  devices per member. Memoised, so that chunks and sweeps run again in the
  same process reuse the compiled functions (jit caches per shape).
  """
  devices = devices if devices is not None else jax.devices()
  devices = devices[:len(devices) // data * data]
  key = {k: base[k] for k in ('model', 'dtype')}
  key['optimizer'] = base.optimizer.to_dict()
  return _build(json.dumps(key, sort_keys=True), num_classes, steps_per_epoch,
                tuple(d.id for d in devices), data, bool(own_batches),
                base.get('nonfinite_policy', 'stop'), dataset)


@functools.lru_cache(maxsize=8)
def _build(config_json: str, num_classes: int, steps_per_epoch: int,
           device_ids: tuple, data: int, own_batches: bool, nonfinite: str,
           dataset: input_pipeline.DatasetSpec):
  base = ml_collections.ConfigDict(json.loads(config_json))
  optimizer = optimizers.create_optimizer(base, steps_per_epoch)
  model = models.create_model(base.model, num_classes,
                              dtype=configuration.compute_dtype(base.dtype))
  devices = {d.id: d for d in jax.devices()}
  steps = GridSteps(make_grid_mesh([devices[i] for i in device_ids], data),
                    model, optimizer, own_batches=own_batches,
                    nonfinite=nonfinite, dataset=dataset)

  def init(keys, values):
    state = jax.vmap(
        lambda key: train_lib.create_train_state(
            key, model, optimizer, dataset.image_shape))(keys)
    return set_hyperparameters(state, values)

  return model, optimizer, steps, jax.jit(init,
                                          out_shardings=steps.state_sharding)


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
  data parallel over its own (host_devices.cpu_devices_per_run), which is
  faster than one member per device (docs/benchmarks.md)."""
  return spec.members_at_once(config, chunk) * (
      host_devices.cpu_devices_per_run(spec.train_config(config)))


def set_hyperparameters(state: train_lib.TrainState, values: dict):
  """`state` (stacked) with opt_state.hyperparams[k] = values[k] per member."""
  hyper = dict(state.opt_state.hyperparams)
  for key, value in values.items():
    if key not in hyper:
      raise ValueError(f'sweep.{key} is not allowed: the optimizer injects no '
                       f'{key}; allowed: {", ".join(sorted(hyper))}.')
    hyper[key] = jnp.asarray(value, hyper[key].dtype).reshape(
        hyper[key].shape)
  return state.replace(opt_state=optax.tree_utils.tree_set(
      state.opt_state, hyperparams=hyper))


def init_grid(init, members: list):
  """The stacked TrainState of `members`, from `build`'s init: member k's is
  create_train_state(jax.random.key(seed_k)) with its own hyperparams."""
  keys = jnp.stack([jax.random.key(m.seed) for m in members])
  values = {k: np.asarray([m.values[k] for m in members], np.float32)
            for k in members[0].values if k != 'seed'}
  return init(keys, values)


@functools.partial(jax.jit, static_argnums=(1,))
def _take(tree, count: int):
  """The first `count` members (drops the padding)."""
  return jax.tree.map(lambda x: x[:count], tree)


@functools.partial(jax.jit, static_argnums=(1,))
def _pad(tree, size: int):
  """`size` members: the last one repeated."""
  return jax.tree.map(lambda x: jnp.concatenate(
      [x, jnp.repeat(x[-1:], size - x.shape[0], axis=0)]), tree)


def _tree_bytes(tree) -> int:
  def itemsize(dtype):
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
      return 8  # A threefry key: two uint32.
    return np.dtype(dtype).itemsize
  return sum(int(np.prod(x.shape)) * itemsize(x.dtype)
             for x in jax.tree.leaves(tree))


def free_memory_bytes() -> Optional[int]:
  """Free memory of the first device (accelerator stats, else the host's)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def estimate_member_bytes(
    model, optimizer, batch_size: int,
    dataset: input_pipeline.DatasetSpec = input_pipeline.CIFAR10) -> int:
  """Device bytes one member needs: 3x its state (state in, gradients,
  optimizer temporaries) + the temporaries XLA's memory analysis of one
  member's compiled step gives (activations)."""
  state = jax.eval_shape(
      lambda key: train_lib.create_train_state(key, model, optimizer,
                                               dataset.image_shape),
      jax.random.key(0))
  batch = {'images': jax.ShapeDtypeStruct((batch_size, *dataset.image_shape),
                                          jnp.uint8),
           'labels': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  temp = 0
  try:
    analysis = jax.jit(functools.partial(
        train_lib.train_step, model=model, optimizer=optimizer,
        dataset=dataset)).lower(
            state, batch).compile().memory_analysis()
    temp = int(getattr(analysis, 'temp_size_in_bytes', 0) or 0)
  except Exception:  # pylint: disable=broad-except
    pass  # Some backends give no analysis: count the state only.
  return 3 * _tree_bytes(state) + temp


def auto_chunk(num_members: int, member_bytes: int, free_bytes: Optional[int],
               reserved_bytes: int = 0, num_devices: int = 1) -> int:
  """Members at once for spec.AUTO_CHUNK: what fits in 70% of free memory
  per device."""
  if free_bytes is None:
    return num_members
  usable = 0.7 * free_bytes - reserved_bytes
  per_device = max(1, int(usable // max(member_bytes, 1)))
  return max(1, min(num_members, per_device * num_devices))
