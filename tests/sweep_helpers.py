"""The sweep tests' small set-up, shared by tests/test_sweeps.py and the
scripts it runs in fresh processes (tests import helpers, not test files)."""

import ml_collections
import numpy as np

from configs import quick
from tests.data_fixtures import cifar10_subset_path
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
