r"""Trains a grid of hyperparameters at once: one vmap of train.py's step.

  python sweep.py --config sweeps/configs/report_sensitivity.py:cifar10 \
      --workdir workdirs/sensitivity-c10 [--config.num_epochs=10 ...] [--chunk 3]
  python sweep.py --config sweeps/configs/cpu_subset.py --workdir /tmp/sweep_cpu

The config is a train config plus `sweep.p`, `sweep.learning_rate`,
`sweep.seed` lists (see sweeps/spec.py). `--chunk N` trains N members at a
time (`auto`: as many as a memory estimate allows; default: the config's
`sweep.chunk`, 0 = all at once). Writes per-member metrics under
`WORKDIR/members/<name>/`, `summary.md`/`summary.json`, and checkpoints of
the stacked states; running the same command again resumes.

SIGTERM / Ctrl-C save the current chunk at the next step and exit 0; a
diverging member is marked in the summary and the others go on; bad input is
one line `error: ...` and exit 2 (docs/reliability.md).
"""

import contextlib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from training import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Sweep config file, e.g. sweeps/configs/cpu_subset.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the sweep.')
_CHUNK = flags.DEFINE_string(
    'chunk', None, 'Members trained at once: an integer >= 1, 0 (all), or '
    '"auto" (from a memory estimate). Default: the config\'s sweep.chunk.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['config', 'workdir'])
flags.adopt_module_key_flags(cli)  # --profile etc. in --help.


def _parse_chunk(value):
  if value is None:
    return None
  if value.strip().lower() == 'auto':
    return -1
  try:
    chunk = int(value)
  except ValueError:
    chunk = -1
  if chunk < 0:
    raise ValueError(f'--chunk={value!r} is not allowed; allowed: an integer '
                     '>= 1, 0 (all members at once) or "auto".')
  return chunk


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; allowed: flags only '
             '(--config, --workdir, --chunk, --config.KEY=VALUE, ...).')
  cli.prepare_jax()
  import jax  # pylint: disable=g-import-not-at-top
  from training import host_devices  # pylint: disable=g-import-not-at-top
  from sweeps import run  # pylint: disable=g-import-not-at-top
  # On a CPU host, a few devices per member train the grid fastest
  # (docs/benchmarks.md). A grid that does not parse is reported by run_sweep.
  split = False
  with contextlib.suppress(ValueError):
    at_once, devices = run.cpu_split(_CONFIG.value, _WORKDIR.value,
                                     _parse_chunk(_CHUNK.value))
    split = host_devices.split_cpu(devices)
  if split:
    # XLA devices that share the host's cores, not cores: say so.
    count = jax.device_count()
    logging.info('JAX %s: the CPU (%s cores) split into %d virtual devices: '
                 '%d for each of the %d members trained at once '
                 '(cpu_devices).', jax.__version__, os.cpu_count() or '?',
                 count, count // at_once, at_once)
  else:
    logging.info('JAX %s: %d device(s) (%s)', jax.__version__,
                 jax.device_count(), jax.devices()[0].device_kind)
  cli.run(lambda: run.run_sweep(
      _CONFIG.value, _WORKDIR.value, chunk=_parse_chunk(_CHUNK.value),
      progress=_PROGRESS.value,
      profile_steps=cli.profile_steps()))
  cli.print_results(_WORKDIR.value, sweep=True)


if __name__ == '__main__':
  cli.use_fast_allocator()
  app.run(main, flags_parser=cli.parse_flags)
