"""The sweep tests' small set-up, shared by tests/test_sweeps.py and the
scripts it runs in fresh processes (tests import helpers, not test files)."""

import json
import os

import jax
import ml_collections
import numpy as np

from configs import quick
from sweeps import grid
from sweeps import spec
from tests.data_fixtures import cifar10_subset_path
from training import checkpoints
from training import input_pipeline

NUM_TRAIN, NUM_TEST, BATCH = 96, 40, 16
STEPS_PER_EPOCH = NUM_TRAIN // BATCH


def small_data():
  subset = cifar10_subset_path()
  if subset is not None:
    full = input_pipeline.load_cifar('cifar10', source='local',
                                     data_dir=subset)
    train = input_pipeline.Split(full.train.images[:NUM_TRAIN],
                                 full.train.labels[:NUM_TRAIN])
    test = input_pipeline.Split(full.test.images[:NUM_TEST],
                                full.test.labels[:NUM_TEST])
  else:  # Without the shared subset: random images, same shapes.
    rng = np.random.default_rng(0)
    split = lambda n: input_pipeline.Split(
        rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
        rng.integers(0, 10, (n,)).astype(np.int32))
    train, test = split(NUM_TRAIN), split(NUM_TEST)
  return input_pipeline.CifarData(train, test, 10, 'cifar10', 'test slice')


def sweep_config(**sweep):
  config = quick.get_config()
  config.batch_size = BATCH
  config.eval_batch_size = NUM_TEST
  config.num_epochs = 3
  config.checkpoint_every_epochs = 2
  config.optimizer.lr_milestones = (2,)
  defaults = dict(p=(0.25,), learning_rate=(0.05,), seed=(0,),
                  own_batches=False, chunk=0)
  config.sweep = ml_collections.ConfigDict({**defaults, **sweep})
  return config


def restore_chunk(workdir: str, chunk_index: int, *, num_classes: int,
                  steps_per_epoch: int):
  """(members, stacked TrainState on one device) of a sweep chunk's newest
  readable checkpoint (checkpoints/chunk-NNN, as sweeps/run.py lays them
  out); `num_classes` and `steps_per_epoch` of the data trained on rebuild
  the state's shape."""
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  members = spec.chunks_of(spec.grid_members(config),
                           config.sweep.chunk)[chunk_index]
  _, _, _, init = grid.build(
      spec.train_config(config), num_classes, steps_per_epoch,
      config.sweep.own_batches, devices=jax.devices()[:1])
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  template = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device),
      jax.eval_shape(lambda: grid.init_grid(init, members)))
  store = checkpoints.CheckpointStore(
      os.path.join(workdir, 'checkpoints', f'chunk-{chunk_index:03d}'),
      config.keep_checkpoints)
  try:
    restored = store.restore_latest(template, lambda step, meta: None)
  finally:
    store.close()
  if restored is None:
    raise ValueError(f'{store.directory} holds no checkpoint.')
  return members, restored[1]


def print_sweep_meshes(config, workdir: str, data) -> None:
  """Runs `config`'s sweep on `data` in `workdir` and prints, as the last
  line of stdout, the shapes of the grid meshes it built (for tests that
  run it in a process with another device count)."""
  from sweeps import run as sweep_run  # pylint: disable=g-import-not-at-top
  meshes = []
  make = grid.make_grid_mesh
  grid.make_grid_mesh = lambda *a: meshes.append(make(*a)) or meshes[-1]
  try:
    sweep_run.run_sweep(config, workdir, data=data, progress=False)
  finally:
    grid.make_grid_mesh = make
  print(json.dumps([dict(m.shape) for m in meshes]))
