"""The pure training and evaluation steps, and their placement on a device mesh.

`train_step` is the one step function: train.py jits it over a `data`-sharded
mesh, sweeps vmap it. Augmentation runs inside it with randomness from
(state.rng, state.step) only: the result does not depend on how the batch is
split over devices.
"""

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from training import augment
from training import input_pipeline

DATA_AXIS = 'data'


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(rng: jax.Array, model: nn.Module,
                       optimizer: optax.GradientTransformation,
                       image_shape=input_pipeline.CIFAR10.image_shape
                      ) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32),
                         train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables['batch_stats'],
                    opt_state=optimizer.init(params), rng=state_rng)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               optimizer: optax.GradientTransformation,
               nonfinite: str = 'stop',
               dataset: input_pipeline.DatasetSpec = input_pipeline.CIFAR10):
  """One SGD step on a batch of uint8 images; returns the new state and sums.

  Metrics are sums over the batch, accumulated over an epoch on the device
  and divided once; `finite`: the loss and every gradient are finite;
  `skipped`: the update was dropped.

  nonfinite: 'stop' applies every update (faults.NonfiniteWatch stops the
  run); 'skip' keeps params, batch_stats and opt_state on a non-finite step,
  as optax.apply_if_finite does (the optimizer's schedules do not advance),
  and leaves it out of the sums. The step counter always advances: it orders
  the batches and the augmentation.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  images = augment.normalize(
      augment.augment(rng, batch['images'], dataset), dataset)
  labels = batch['labels']

  def loss_fn(params):
    logits, new_model_state = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'])
    loss = cross_entropy(logits, labels).mean()
    return loss, (logits, new_model_state['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  count = jnp.asarray(labels.shape[0], jnp.float32)
  finite = jnp.isfinite(loss) & _all_finite(grads)
  metrics = {
      'loss_sum': loss * count,
      'correct': jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
      'count': count,
      'finite': finite.astype(jnp.float32),
      'skipped': jnp.zeros([], jnp.float32),
  }
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  if nonfinite == 'skip':
    keep = lambda new, old: jnp.where(finite, new, old)
    new_state = new_state.replace(
        params=jax.tree.map(keep, params, state.params),
        batch_stats=jax.tree.map(keep, batch_stats, state.batch_stats),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state))
    metrics.update(
        loss_sum=jnp.where(finite, metrics['loss_sum'], 0.0),
        correct=jnp.where(finite, metrics['correct'], 0.0),
        count=jnp.where(finite, count, 0.0),
        skipped=1.0 - metrics['finite'])
  elif nonfinite != 'stop':
    raise ValueError(f'nonfinite={nonfinite!r} is not known; allowed: stop, '
                     'skip.')
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model: nn.Module,
              dataset: input_pipeline.DatasetSpec = input_pipeline.CIFAR10):
  """Sums of loss, top-1 and top-5 correct over the unmasked examples (with
  5 classes or fewer, every label is among the top 5)."""
  images = augment.normalize(batch['images'], dataset)
  logits = model.apply({'params': state.params,
                        'batch_stats': state.batch_stats}, images, train=False)
  labels, mask = batch['labels'], batch['mask']
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return {
      'loss_sum': jnp.sum(cross_entropy(logits, labels) * mask),
      'top1_correct': jnp.sum((top5[:, 0] == labels) * mask),
      'top5_correct': jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
      'count': jnp.sum(mask),
  }


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices.reshape(-1), (DATA_AXIS,))


class MeshSteps:
  """`train_step` and `eval_step` jitted over a mesh: batch sharded, state replicated.

  What the epoch loop (training/loop.py) trains: the steps, where batches
  and metrics live, and what differs between one run (here) and a sweep's
  members (sweeps/grid.py's GridSteps: a leading member axis).

  The training images stay on the devices (uint8, replicated) so a batch is
  gathered by index on device: no host-to-device copy of images per step.
  """

  num_members = 1
  # None: one run, which a non-finite step stops (faults.NonfiniteWatch).
  member_names = None

  def __init__(self, mesh, model, optimizer, *, nonfinite: str = 'stop',
               dataset: input_pipeline.DatasetSpec = input_pipeline.CIFAR10,
               shardings: tuple = None, per_device: Callable = None):
    """shardings: where (the state and metrics, a training batch and its
    indices, an evaluation batch) live; default: the state replicated, the
    batches split over `data`. per_device(step, train) -> `step` as the
    devices run it (train: the train step, else the eval one); default:
    `step` itself."""
    self.mesh = mesh
    self.replicated = NamedSharding(mesh, P())
    batches = NamedSharding(mesh, P(DATA_AXIS))
    (self.state_sharding, self.sharded, self.eval_sharded) = (
        shardings or (self.replicated, batches, batches))
    self.metrics_sharding = self.state_sharding
    per_device = per_device or (lambda step, train: step)
    self.train_step = jax.jit(
        per_device(functools.partial(
            train_step, model=model, optimizer=optimizer,
            nonfinite=nonfinite, dataset=dataset), True),
        in_shardings=(self.state_sharding, self.sharded),
        out_shardings=(self.state_sharding, self.metrics_sharding),
        donate_argnums=(0,))
    self.eval_step = jax.jit(
        per_device(functools.partial(eval_step, model=model,
                                     dataset=dataset), False),
        in_shardings=(self.state_sharding, self.eval_sharded),
        out_shardings=self.metrics_sharding)
    self.gather = jax.jit(
        lambda images, labels, idx: {'images': images[idx],
                                     'labels': labels[idx]},
        out_shardings=self.sharded)
    self.add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))

  def global_array(self, host_array: np.ndarray, sharding) -> jax.Array:
    """A global array from the same host array on every process."""
    host_array = np.asarray(host_array)
    return jax.make_array_from_callback(
        host_array.shape, sharding, lambda index: host_array[index])

  def replicate(self, tree):
    return jax.tree.map(lambda x: self.global_array(x, self.replicated), tree)

  def shard(self, tree):
    """An evaluation batch, placed for `eval_step`."""
    return jax.tree.map(lambda x: self.global_array(x, self.eval_sharded),
                        tree)

  def batch_order(self, seed: int, epoch: int, num_examples: int):
    """The epoch's order of the training examples (N,)."""
    return input_pipeline.epoch_permutation(seed, epoch, num_examples)

  def member_values(self, tree) -> list:
    """[{key: float}] per member of a host tree of metrics or values."""
    return [{k: float(v) for k, v in tree.items()}]

  def for_checkpoint(self, tree):
    """The state (or metric totals) as a checkpoint holds them."""
    return tree

  def from_checkpoint(self, tree):
    """The inverse of `for_checkpoint`, placed as `state_sharding`."""
    return tree
