"""Trains a grid of hyperparameters at once: one vmap of train.py's step.

  python sweep.py --config sweeps/configs/report_sensitivity.py:cifar10 \
      --workdir workdirs/sensitivity-c10 [--config.num_epochs=10 ...] [--chunk 3]
  python sweep.py --config sweeps/configs/cpu_subset.py --workdir /tmp/sweep_cpu

The config is a train config plus `sweep.p`, `sweep.learning_rate`,
`sweep.seed` lists (see sweeps/grid.py). `--chunk N` trains N members at a
time (`auto`: as many as a memory estimate allows; default: the config's
`sweep.chunk`, 0 = all at once). Writes per-member metrics under
`WORKDIR/members/<name>/`, `summary.md`/`summary.json`, and checkpoints of
the stacked states; running the same command again resumes.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Sweep config file, e.g. sweeps/configs/cpu_subset.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the sweep.')
_CHUNK = flags.DEFINE_string(
    'chunk', None, 'Members trained at once: an integer >= 1, 0 (all), or '
    '"auto" (from a memory estimate). Default: the config\'s sweep.chunk.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(std_logging.Filter):
  """Keeps one line per epoch readable: drops Orbax's INFO lines."""

  def filter(self, record):
    # The standard library's level numbers (absl's WARNING is -1).
    return record.levelno >= std_logging.WARNING or (
        f'{os.sep}orbax{os.sep}' not in record.pathname)


def _parse_chunk(value):
  if value is None:
    return None
  if value.strip().lower() == 'auto':
    return -1
  try:
    chunk = int(value)
  except ValueError:
    chunk = None
  if chunk is None or chunk < 0:
    raise ValueError(f'--chunk={value!r} is not allowed; allowed: an integer '
                     '>= 1, 0 (all members at once) or "auto".')
  return chunk


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # ABSLHandler.handle() skips its own filters: filter its python handler.
  for handler in std_logging.root.handlers + [
      logging.get_absl_handler().python_handler]:
    handler.addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  from sweeps import grid  # pylint: disable=g-import-not-at-top
  from training import input_pipeline  # pylint: disable=g-import-not-at-top
  logging.info('JAX %s: %d devices (%s)', jax.__version__, jax.device_count(),
               jax.devices()[0].device_kind)
  try:
    grid.run_sweep(_CONFIG.value, _WORKDIR.value,
                   chunk=_parse_chunk(_CHUNK.value), progress=_PROGRESS.value)
  except (ValueError, input_pipeline.DataNotFoundError) as e:
    # Bad input: one clear message, no stack trace.
    sys.stderr.write(f'error: {e}\n')
    sys.exit(2)
  logging.info('Summary: %s', os.path.join(_WORKDIR.value, 'summary.md'))


if __name__ == '__main__':
  app.run(main)
