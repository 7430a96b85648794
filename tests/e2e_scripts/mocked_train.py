"""`train.py` with TFDS CIFAR mocked: for end-to-end tests without the dataset.

  python tests/e2e_scripts/mocked_train.py --mock_num_train=256 \
      --mock_num_test=100 --config configs/quick.py --workdir DIR \
      [--config.key=value ...] [--progress=false] \
      [--step_delay=0.2 --step_delay_after=10] [--break_checkpoints]

Takes every flag of `train.py` and runs its `main` inside
`tests.data_fixtures.mock_cifar(...)`, so `config.data_source='tfds'` reads
small random CIFAR-10 splits and TensorFlow is not needed. `--step_delay`
sleeps before each training step of this process after the first
`--step_delay_after`: it does not change the results, only slows the run so
that a test can kill it in the middle of an epoch.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

import train  # pylint: disable=g-import-not-at-top,wrong-import-position  # defines train.py's flags

_NUM_TRAIN = flags.DEFINE_integer('mock_num_train', 256,
                                  'Size of the mocked train split.')
_NUM_TEST = flags.DEFINE_integer('mock_num_test', 100,
                                 'Size of the mocked test split.')
_MOCK_SEED = flags.DEFINE_integer('mock_seed', 0,
                                  'Seed of the mocked images and labels.')
_STEP_DELAY = flags.DEFINE_float(
    'step_delay', 0.0, 'Seconds to sleep before each training step.')
_STEP_DELAY_AFTER = flags.DEFINE_integer(
    'step_delay_after', 0,
    'Number of training steps (of this process) run before the delay starts.')
_BREAK_CHECKPOINTS = flags.DEFINE_bool(
    'break_checkpoints', False, 'Replace WORKDIR/checkpoints by a plain file '
    'just before the first checkpoint is saved (a save that must fail).')


def _break_checkpoints_before_first_save() -> None:
  import shutil  # pylint: disable=g-import-not-at-top
  from training import checkpoints  # pylint: disable=g-import-not-at-top
  original_save = checkpoints.CheckpointStore.save

  def save(self, *args, **kwargs):
    shutil.rmtree(self.directory)
    with open(self.directory, 'w') as f:
      f.write('not a directory\n')
    return original_save(self, *args, **kwargs)

  checkpoints.CheckpointStore.save = save


def _slow_down_training_steps(seconds: float, after: int) -> None:
  """Makes MeshSteps.train_step sleep `seconds` before each call after `after`."""
  from training import train_lib  # pylint: disable=g-import-not-at-top
  original_init = train_lib.MeshSteps.__init__
  calls = [0]

  def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    step = self.train_step

    def slow_step(state, batch):
      if calls[0] >= after:
        time.sleep(seconds)
      calls[0] += 1
      return step(state, batch)

    self.train_step = slow_step

  train_lib.MeshSteps.__init__ = init


def main(argv):
  from tests.data_fixtures import mock_cifar  # pylint: disable=g-import-not-at-top
  if _BREAK_CHECKPOINTS.value:
    _break_checkpoints_before_first_save()
  if _STEP_DELAY.value > 0:
    _slow_down_training_steps(_STEP_DELAY.value, _STEP_DELAY_AFTER.value)
  with mock_cifar(num_train=_NUM_TRAIN.value, num_test=_NUM_TEST.value,
                  seed=_MOCK_SEED.value):
    train.main(argv)


if __name__ == '__main__':
  app.run(main)
