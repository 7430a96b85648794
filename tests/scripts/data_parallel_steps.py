"""Runs a few `train_step`s data-parallel on 4 CPU devices and on 1 device.

Launched by tests/test_data_parallel.py in a subprocess, because the 4 host
devices need XLA_FLAGS=--xla_force_host_platform_device_count=4 set before
jax is imported:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
      python tests/scripts/data_parallel_steps.py OUT.npz

The same global batches (random uint8 images) go through
* `MeshSteps` over a 4-device mesh (the batch sharded 4 ways, as train.py does),
* `MeshSteps` over a 1-device mesh,
* plain `jax.jit(train_step)` on the default device,
each from the same initial state. The final states (and the metrics of every
step) are written to OUT.npz as flat arrays keyed '<run>/<leaf path>'; the
test compares them. The script itself asserts the set-up: 4 devices, and a
batch really split into 4 shards of a quarter of the batch.
"""

import functools
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from configs import quick
import models
from training import input_pipeline
from training import optimizers
from training import train_lib
from training import trainer

NUM_DEVICES = 4
GLOBAL_BATCH = 32
NUM_STEPS = 3
NUM_TRAIN = 128  # a pretend training set that batches are gathered from


def flatten(prefix, tree):
  """{'prefix/leaf/path': np.ndarray} for a pytree (PRNG keys as raw data)."""
  def to_numpy(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {f'{prefix}/{jax.tree_util.keystr(path)}': to_numpy(leaf)
          for path, leaf in flat}


COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter',
               'collective-permute', 'all-to-all')


def collectives(hlo_text):
  """{op: [result shape of each instance]} of the compiled program."""
  found = {}
  for line in hlo_text.splitlines():
    for op in COLLECTIVES:
      # `%name = f32[...] all-reduce(...)`, also the -start of async pairs.
      m = re.search(rf'= (.+?) {op}(-start)?\(', line)
      if m:
        found.setdefault(op, []).append(m.group(1))
  return found


def indivisible_batch_errors(workdir):
  """The ValueErrors of batch sizes that do not divide over the 4 devices.

  Goes through `train_and_evaluate`, which must refuse before writing
  anything to `workdir`.
  """
  rng = np.random.default_rng(0)
  split = input_pipeline.Split(
      images=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
      labels=rng.integers(0, 10, (64,), dtype=np.int32))
  data = input_pipeline.CifarData(train=split, test=split, num_classes=10,
                                  name='cifar10', source='test')
  errors = {}
  for key, value in (('batch_size', 30), ('eval_batch_size', 250)):
    config = quick.get_config()
    config[key] = value
    try:
      trainer.train_and_evaluate(config, workdir, data=data, progress=False)
    except ValueError as e:
      errors[key] = str(e)
    else:
      raise AssertionError(f'{key}={value} was accepted on 4 devices')
    assert not os.path.exists(workdir), os.listdir(workdir)
  return errors


def main(out_path, data_seed=0):
  assert jax.default_backend() == 'cpu', jax.default_backend()
  assert jax.device_count() == NUM_DEVICES, (
      f'expected {NUM_DEVICES} CPU devices (XLA_FLAGS='
      f'{os.environ.get("XLA_FLAGS")!r}), got {jax.devices()}')

  config = quick.get_config()
  config.batch_size = GLOBAL_BATCH
  steps_per_epoch = NUM_TRAIN // GLOBAL_BATCH
  optimizer = optimizers.create_optimizer(config, steps_per_epoch)
  model = models.create_model(config.model, num_classes=10)
  # One initial state for all runs (compiling the init takes seconds on CPU).
  init_state = jax.jit(lambda: train_lib.create_train_state(
      jax.random.key(config.seed), model, optimizer))()
  arrays = flatten('init', init_state)

  rng = np.random.default_rng(data_seed)
  train_images = rng.integers(0, 256, (NUM_TRAIN, 32, 32, 3), dtype=np.uint8)
  train_labels = rng.integers(0, 10, (NUM_TRAIN,), dtype=np.int32)
  orders = [rng.permutation(NUM_TRAIN)[:GLOBAL_BATCH].astype(np.int32)
            for _ in range(NUM_STEPS)]

  report = {'indivisible_batch_errors': indivisible_batch_errors(
      os.path.join(os.path.dirname(os.path.abspath(out_path)), 'workdir'))}

  # Data-parallel and 1-device runs, through MeshSteps as trainer.py does:
  # images replicated on the mesh, batches gathered by a sharded index.
  for name, devices in (('mesh4', jax.devices()),
                        ('mesh1', jax.devices()[:1])):
    mesh = train_lib.make_mesh(devices)
    steps = train_lib.MeshSteps(mesh, model, optimizer)
    # A copy (may_alias=False): train_step donates its state.
    state = jax.device_put(init_state, steps.replicated, may_alias=False)
    images = steps.replicate(train_images)
    labels = steps.replicate(train_labels)
    for i, idx in enumerate(orders):
      batch = steps.gather(images, labels,
                           steps.global_array(idx, steps.sharded))
      shards = batch['images'].addressable_shards
      report[f'{name}_shard_shapes'] = sorted(
          {tuple(s.data.shape) for s in shards})
      assert len(shards) == len(devices), shards
      assert {s.device for s in shards} == set(devices)
      for s in shards:
        assert s.data.shape == (GLOBAL_BATCH // len(devices), 32, 32, 3)
      np.testing.assert_array_equal(np.asarray(batch['images']),
                                    train_images[idx])
      if i == 0:
        report[f'{name}_collectives'] = collectives(
            steps.train_step.lower(state, batch).compile().as_text())
      state, metrics = steps.train_step(state, batch)
      arrays.update(flatten(f'{name}/metrics{i}', metrics))
    assert len(jax.tree.leaves(state.params)[0].addressable_shards) == len(
        devices)
    assert state.params['classifier']['kernel'].sharding.is_fully_replicated
    arrays.update(flatten(f'{name}/final', state))

  # Plain jit on one device, batches from the host.
  step = jax.jit(functools.partial(train_lib.train_step, model=model,
                                   optimizer=optimizer))
  state = init_state
  for i, idx in enumerate(orders):
    state, metrics = step(state, {'images': train_images[idx],
                                  'labels': train_labels[idx]})
    arrays.update(flatten(f'jit/metrics{i}', metrics))
  arrays.update(flatten('jit/final', state))

  np.savez(out_path, **arrays)
  report['device_count'] = jax.device_count()
  print(json.dumps(report))


if __name__ == '__main__':
  main(sys.argv[1], *map(int, sys.argv[2:]))
