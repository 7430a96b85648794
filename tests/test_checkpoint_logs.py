"""What Orbax logs through training/checkpoints.py reaches the console or not.

CheckpointStore.save waits for each save to finish; Orbax reports that wait,
at the next save, as "Waiting for previous save to complete took N seconds
... consider checkpointing less frequently", advice that does not apply to
these synchronous saves. Its other warnings go through.
"""

import logging
import os

import numpy as np
from orbax.checkpoint import checkpoint_manager

from training import checkpoints

# Orbax's text (orbax/checkpoint/checkpoint_manager.py), as it logs it.
WAIT_WARNING = ('Waiting for previous save to complete took %f seconds. If '
                'this number is high, consider checkpointing less '
                'frequently.')


def orbax_record(msg, *args):
  """A WARNING record as absl's logger makes it for a call in Orbax's
  checkpoint manager."""
  return logging.getLogger('absl').makeRecord(
      'absl', logging.WARNING, checkpoint_manager.__file__, 1466, msg, args,
      None)


def test_wait_for_previous_save_warning_is_dropped(tmp_path, caplog):
  store = checkpoints.CheckpointStore(str(tmp_path / 'a'), keep=1)
  store.save(1, {'w': np.ones(3, np.float32)}, {})
  store.close()
  # A second store adds no second filter.
  checkpoints.CheckpointStore(str(tmp_path / 'b'), keep=1).close()
  absl_logger = logging.getLogger('absl')
  with caplog.at_level(logging.WARNING):
    absl_logger.handle(orbax_record(WAIT_WARNING, 1.1))
    absl_logger.handle(orbax_record('Some other Orbax warning %d.', 7))
    # The same words logged from outside Orbax are not Orbax's.
    absl_logger.handle(absl_logger.makeRecord(
        'absl', logging.WARNING, os.path.abspath(__file__), 1, WAIT_WARNING,
        (2.0,), None))
  assert [r.getMessage() for r in caplog.records] == [
      'Some other Orbax warning 7.', WAIT_WARNING % 2.0]
