r"""Trains a CIFAR model with the configured optimizer (the paper's experiments).

  python train.py --config configs/paper.py:resnet18,cifar10,padam \
      --workdir workdirs/resnet18-cifar10-padam [--config.seed=1 ...]

Resumes from the workdir's latest checkpoint when there is one. Runs on every
visible device (data parallel); launched on several hosts, pass --distributed
(or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID) to
call jax.distributed.initialize().

SIGTERM / Ctrl-C save a checkpoint at the next step and exit 0; bad input is
one line `error: ...` and exit 2, a diverged run exit 3, a failed write (disk
full) exit 4, a lost peer process of a multi-process run exit 5
(docs/reliability.md).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from training import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/paper.py:vgg16,cifar10,padam.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the run.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-host).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['config', 'workdir'])
flags.adopt_module_key_flags(cli)  # --profile etc. in --help.


_FLAGS_ONLY = '--config, --workdir'


def _parse_flags(argv):
  """cli.parse_flags, then the refusals that need no JAX, then the restart
  under mimalloc: a refused run neither imports JAX nor restarts."""
  remaining = cli.parse_flags(argv)
  cli.refuse_before_jax(remaining, _CONFIG.value, _WORKDIR.value,
                        flags_only=_FLAGS_ONLY)
  cli.use_fast_allocator()
  return remaining


def main(argv):
  # Again for callers that parse the flags themselves (tests' wrappers).
  cli.refuse_before_jax(argv, _CONFIG.value, _WORKDIR.value,
                        flags_only=_FLAGS_ONLY)
  cli.prepare_jax()
  import jax  # pylint: disable=g-import-not-at-top
  from training import host_devices  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    cli.run(cli.join_processes)
  else:
    # On a CPU host, config.cpu_devices devices per run (docs/benchmarks.md);
    # a count the user set wins. A bad value exits 2 with its message.
    cli.run(lambda: host_devices.split_cpu(
        host_devices.cpu_devices_per_run(_CONFIG.value)))
  cli.start_backend()
  from training import allocator, trainer  # pylint: disable=g-import-not-at-top
  logging.info('JAX %s: %d processes, %d devices (%s); allocator: %s',
               jax.__version__, jax.process_count(), jax.device_count(),
               jax.devices()[0].device_kind,
               allocator.describe())
  cli.run(lambda: trainer.train_and_evaluate(
      _CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value,
      profile_steps=cli.profile_steps()))
  cli.print_results(_WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
