"""Trains a CIFAR model with the configured optimizer (the paper's experiments).

  python train.py --config configs/paper.py:resnet18,cifar10,padam \
      --workdir workdirs/resnet18-cifar10-padam [--config.seed=1 ...]

Resumes from the workdir's latest checkpoint when there is one. Runs on every
visible device (data parallel); launched on several hosts, pass --distributed
(or set JAX_COORDINATOR_ADDRESS etc.) to call jax.distributed.initialize().
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/paper.py:vgg16,cifar10,padam.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the run.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-host).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(logging.logging.Filter):
  """Keeps one line per epoch readable: drops other libraries' INFO lines."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or (
        f'{os.sep}orbax{os.sep}' not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for handler in logging.logging.root.handlers:
    handler.addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize()
  from training import trainer  # pylint: disable=g-import-not-at-top
  from training import input_pipeline  # pylint: disable=g-import-not-at-top
  logging.info('JAX %s: %d processes, %d devices (%s)', jax.__version__,
               jax.process_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                               progress=_PROGRESS.value)
  except (ValueError, input_pipeline.DataNotFoundError) as e:
    # Bad input: one clear message, no stack trace.
    sys.stderr.write(f'error: {e}\n')
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
