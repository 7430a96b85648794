"""`train.py` or `sweep.py` on random CIFAR-shaped data, with fault injection.

  python tests/e2e_scripts/fault_run.py --entry=train|sweep \
      --mock_num_train=128 --mock_num_test=64 --events=FILE \
      [--kill_at=KIND:N] [--term_at=KIND:N] [--step_delay=S] \
      [--full_disk_at_save=N] <the entry point's flags>

Runs the entry point's `main` (with its own flag parsing and exit codes),
`load_cifar` serving small random splits (the config's data source is not
read; no TFDS to import), and appends one line per event to
--events, `KIND N TIME` (one write(2) each, so a line is whole even when
the process is killed right after):

  step N          before this process's N-th training step
  eval N          before its N-th evaluation batch
  ckpt_save N     CheckpointStore.save entered (N-th time)
  ckpt_write N    Orbax writes a metadata file into a checkpoint's tmp dir
  ckpt_finalize N Orbax is about to rename a complete tmp dir to <step>
  prune N         an old checkpoint was renamed to .deleting-<step>, not yet
                  deleted
  metrics N       a metrics / config file's tmp copy is written, not yet
                  renamed over the old one
  done            main returned

--kill_at=KIND:N sends SIGKILL to this process at the N-th KIND event (from
whichever thread it happens in: Orbax writes in background threads);
--term_at=KIND:N sends SIGTERM there (a stop request). --step_delay sleeps
before each training step: no result changes, a test only gets time to act.
--full_disk_at_save=N makes the N-th checkpoint save fail as a full disk
does (OSError ENOSPC from Orbax's writes).
"""

import errno
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

# train.py and sweep.py define the same flags: import only the one asked for.
ENTRY = 'sweep' if '--entry=sweep' in sys.argv else 'train'
if ENTRY == 'sweep':
  import sweep as entry_point  # pylint: disable=g-import-not-at-top
else:
  import train as entry_point  # pylint: disable=g-import-not-at-top
from training import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_enum('entry', 'train', ['train', 'sweep'], 'Entry point.')
_NUM_TRAIN = flags.DEFINE_integer('mock_num_train', 128, 'Train split size.')
_NUM_TEST = flags.DEFINE_integer('mock_num_test', 64, 'Test split size.')
_EVENTS = flags.DEFINE_string('events', None, 'File to append events to.')
_KILL_AT = flags.DEFINE_string('kill_at', None, 'KIND:N: SIGKILL there.')
_TERM_AT = flags.DEFINE_string('term_at', None, 'KIND:N: SIGTERM there.')
_STEP_DELAY = flags.DEFINE_float('step_delay', 0.0,
                                 'Seconds to sleep before each step.')
_FULL_DISK_AT_SAVE = flags.DEFINE_integer(
    'full_disk_at_save', 0, 'The N-th checkpoint save meets a full disk.')

_counts = {}
_events_fd = None


def _plan(text):
  if not text:
    return None
  kind, n = text.split(':')
  return kind, int(n)


def event(kind: str) -> None:
  _counts[kind] = n = _counts.get(kind, 0) + 1
  if _events_fd is not None:
    os.write(_events_fd, f'{kind} {n} {time.time():.3f}\n'.encode())
  if _plan(_KILL_AT.value) == (kind, n):
    os.kill(os.getpid(), signal.SIGKILL)
  if _plan(_TERM_AT.value) == (kind, n):
    os.kill(os.getpid(), signal.SIGTERM)


class _Proxy:
  """A module whose `name` is wrapped; everything else is the module's."""

  def __init__(self, module, **wrapped):
    self._module = module
    self.__dict__.update(wrapped)

  def __getattr__(self, name):
    return getattr(self._module, name)


def _install_hooks() -> None:
  # pylint: disable=g-import-not-at-top,protected-access
  import shutil
  # Orbax has no hook for "a checkpoint file is being written" or "about to
  # finalize": its public path modules' functions are wrapped instead.
  from orbax.checkpoint.path import atomicity
  async_path = atomicity.async_path
  from training import checkpoints
  from training import train_lib
  from training import rundir

  init = train_lib.MeshSteps.__init__

  def init_and_wrap(self, *args, **kwargs):
    init(self, *args, **kwargs)
    train_step, eval_step = self.train_step, self.eval_step

    def step(state, batch):
      event('step')
      if _STEP_DELAY.value:
        time.sleep(_STEP_DELAY.value)
      return train_step(state, batch)

    def evaluate(state, batch):
      event('eval')
      return eval_step(state, batch)

    self.train_step, self.eval_step = step, evaluate

  # The sweep's GridSteps builds its steps through MeshSteps.__init__ too.
  train_lib.MeshSteps.__init__ = init_and_wrap

  save = checkpoints.CheckpointStore.save

  def save_with_event(self, step, state, loop):
    event('ckpt_save')
    return save(self, step, state, loop)

  checkpoints.CheckpointStore.save = save_with_event

  write_text = async_path.write_text

  async def write_text_with_event(path, text, *args, **kwargs):
    event('ckpt_write')
    if _counts.get('ckpt_save', 0) == _FULL_DISK_AT_SAVE.value:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return await write_text(path, text, *args, **kwargs)

  async_path.write_text = write_text_with_event

  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize_with_event(self, *args, **kwargs):
    event('ckpt_finalize')
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize_with_event

  def rmtree(path, *args, **kwargs):
    if os.path.basename(path).startswith(checkpoints.DELETING_PREFIX):
      event('prune')
    return shutil.rmtree(path, *args, **kwargs)

  checkpoints.shutil = _Proxy(shutil, rmtree=rmtree)

  def replace(src, dst):
    event('metrics')
    return os.replace(src, dst)

  rundir.os = _Proxy(os, replace=replace)


def _serve_random_cifar() -> None:
  """load_cifar serves small random splits (seed 0): no TFDS to import."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from training import input_pipeline

  def load_cifar(dataset, **kwargs):
    del kwargs
    rng = np.random.default_rng(0)
    split = lambda n: input_pipeline.Split(
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, (n,)).astype(np.int32))
    return input_pipeline.CifarData(
        split(_NUM_TRAIN.value), split(_NUM_TEST.value),
        input_pipeline.SPECS[dataset].num_classes, dataset, 'random test data')

  input_pipeline.load_cifar = load_cifar


def main(argv):
  global _events_fd
  if _EVENTS.value:
    _events_fd = os.open(_EVENTS.value,
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  _install_hooks()
  _serve_random_cifar()
  try:
    entry_point.main(argv)
  finally:
    event('done')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
