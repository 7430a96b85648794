"""Orbax checkpoints that survive kills, full disks and damaged files.

A `CheckpointStore` keeps the checkpoints of one TrainState (a run, or one
chunk of a sweep) in one directory. A checkpoint exists once Orbax renamed
its tmp directory to `<step>`; a failed write raises `faults.WriteError` and
leaves the older ones as they were; old ones are pruned only after the new
one is complete (not Orbax's `max_to_keep`: it prunes even when the write
failed), through an atomic rename to `.deleting-<step>`; one that does not
read back is set aside as `unreadable-<step>` and the previous one is tried.
Each carries the loop state (`LoopState` as JSON) and its step in its
Orbax custom metadata; a checkpoint whose metadata is damaged, or whose name,
recorded step and state's step disagree, does not read back.
docs/reliability.md has the details. What is on disk is read without Orbax
by training/rundir.py.

Multi-host: every process calls save and restore (Orbax's collectives); only
process 0 removes, renames or checks files.
"""

import dataclasses
import glob
import logging
import os
import re
import shutil
from typing import Callable, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from training import faults
from training import rundir

LOOP_METADATA_KEY = 'padax_loop'
DELETING_PREFIX = '.deleting-'
_ORBAX_TMP = re.compile(r'^\d+\.orbax-checkpoint-tmp')


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _encode_array(x) -> dict:
  # Bits, not decimals: exact for float32 and fine for NaN / inf, which JSON
  # does not carry.
  x = np.asarray(x, np.float32)
  return {'shape': list(x.shape), 'float32_bits': x.view(np.uint32).ravel()
                                                   .tolist()}


def _decode_array(d: dict) -> np.ndarray:
  return np.asarray(d['float32_bits'], np.uint32).view(np.float32).reshape(
      d['shape'])


@dataclasses.dataclass
class LoopState:
  """Host state of the epoch loop at a checkpoint (one entry per member),
  which a resumed run needs to be bit-identical; stored as JSON in the
  checkpoint's metadata.

  steps_done: training steps done in the epoch in progress (0 at an epoch
    end); totals: their summed metrics (host float32 arrays), None at 0;
  train_seconds: the time they took; nonfinite_in_a_row and diverged: the
  NonfiniteWatch's counters.
  """
  num_members: int = 1
  steps_done: int = 0
  totals: Optional[dict] = None
  train_seconds: float = 0.0
  nonfinite_in_a_row: list = None
  diverged: list = None

  def __post_init__(self):
    if self.nonfinite_in_a_row is None:
      self.nonfinite_in_a_row = [0] * self.num_members
    if self.diverged is None:
      self.diverged = [None] * self.num_members

  def start_epoch(self) -> None:
    self.steps_done, self.totals, self.train_seconds = 0, None, 0.0

  def to_json(self) -> dict:
    return {
        'version': 1,
        'steps_done': self.steps_done,
        'totals': (None if self.totals is None else {
            k: _encode_array(v) for k, v in self.totals.items()}),
        'train_seconds': self.train_seconds,
        'nonfinite_in_a_row': list(self.nonfinite_in_a_row),
        'diverged': list(self.diverged),
    }

  @classmethod
  def from_json(cls, d: Optional[dict], num_members: int, step: int,
                shape) -> 'LoopState':
    """The stored state of a checkpoint at `step` of a run of `shape` (a
    run_shape.RunShape); ValueError if unusable.

    A checkpoint without one (written before padax stored it) is valid only
    at an epoch end, where there is nothing to carry but the counters.
    """
    steps_done = shape.steps_into_epoch(step)
    if not d:
      if steps_done:
        raise ValueError(f'step {step} is inside an epoch but the checkpoint '
                         'holds no epoch totals')
      return cls(num_members)
    state = cls(num_members, steps_done=int(d['steps_done']),
                totals=None if d['totals'] is None else {
                    k: _decode_array(v) for k, v in d['totals'].items()},
                train_seconds=float(d['train_seconds']),
                nonfinite_in_a_row=[int(n) for n in d['nonfinite_in_a_row']],
                diverged=list(d['diverged']))
    if state.steps_done != steps_done or (steps_done > 0) != (
        state.totals is not None):
      raise ValueError(f'its loop state (steps_done={state.steps_done}) does '
                       f'not match step {step} with {shape.steps_per_epoch} '
                       'steps per epoch')
    if len(state.nonfinite_in_a_row) != num_members or len(
        state.diverged) != num_members:
      raise ValueError(f'its loop state is for {len(state.diverged)} '
                       f'members, not {num_members}')
    return state


class _NoWaitForPreviousSaveWarning(logging.Filter):
  """Drops Orbax's "Waiting for previous save to complete took N seconds. If
  this number is high, consider checkpointing less frequently."

  `CheckpointStore.save` waits for each save to finish, so that pruning
  follows a complete write; Orbax counts that wait at the next save as time
  spent waiting for a previous save. Nothing was pending then and training
  did not overlap any write: the advice does not apply.
  """

  def filter(self, record):
    return not (f'{os.sep}orbax{os.sep}' in record.pathname and
                str(record.msg).startswith('Waiting for previous save'))


_NO_WAIT_WARNING = _NoWaitForPreviousSaveWarning()


def _check_state_step(state, step: int) -> None:
  """ValueError unless the restored `state`'s own step (each member's) is
  `step`, the checkpoint's name."""
  stored = getattr(state, 'step', None)
  if stored is None:
    return
  values = np.unique(np.asarray(jax.device_get(stored)).reshape(-1))
  if values.size and not (values.size == 1 and int(values[0]) == step):
    raise ValueError(f'its name says step {step} but its state holds step '
                     f'{", ".join(str(int(v)) for v in values)}')


class CheckpointStore:
  """The checkpoints in `directory`; see the module docstring. Close it."""

  def __init__(self, directory: str, keep: int):
    # Orbax logs through absl's logger; adding the same filter twice is a
    # no-op.
    logging.getLogger('absl').addFilter(_NO_WAIT_WARNING)
    self.directory = os.path.abspath(directory)
    self.keep = keep
    if jax.process_index() == 0 and os.path.isdir(self.directory):
      # Incomplete writes and deletions that a killed run left behind; the
      # run lock guarantees no other process is writing here.
      for name in os.listdir(self.directory):
        if _ORBAX_TMP.match(name) or name.startswith(DELETING_PREFIX):
          shutil.rmtree(os.path.join(self.directory, name),
                        ignore_errors=True)
    _sync('padax-checkpoints-open')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True),
        # Named up front, so that reading a checkpoint's metadata before any
        # save or restore knows how (else Orbax warns it cannot).
        item_handlers=ocp.StandardCheckpointHandler())
    self._closed = False

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      # A failed save is reported by `save`; closing must not mask it.
      logging.warning('Closing the checkpoint manager of %s: %s',
                      self.directory, faults.first_line(e, with_type=True))

  def steps(self) -> list:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state, loop: dict) -> None:
    """Writes `state` and `loop` as checkpoint `step`, then prunes old ones.

    A step already saved (e.g. at an epoch end, then a stop request before
    the next step) is left as it is.
    """
    previous = self.steps()
    if step in previous:
      return
    error = None
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state),
                         custom_metadata={LOOP_METADATA_KEY: loop,
                                          rundir.STEP_METADATA_KEY: step})
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      error = e
    complete = True
    if jax.process_index() == 0:
      complete = error is None and os.path.isdir(self._path(step))
    if jax.process_count() > 1:
      complete = bool(multihost_utils.broadcast_one_to_all(complete))
    if not complete:
      self._failed_save(step, previous, error)
    self._prune()

  def _failed_save(self, step: int, previous: list, error) -> None:
    # Closed first (its writer threads may still be at it), then its tmp
    # directory goes, to give the space back on a full disk; a thread that
    # writes on after that leaves some, removed when the store next opens.
    self.close()
    if jax.process_index() == 0:
      for tmp in glob.glob(os.path.join(glob.escape(self.directory),
                                        f'{step}.orbax-checkpoint-tmp*')):
        shutil.rmtree(tmp, ignore_errors=True)
    cause = (faults.first_line(error, with_type=True) if error is not None
             else 'Orbax did not finalize it')
    kept = (f'the previous checkpoint (step {previous[-1]}) is intact'
            if previous else 'there was no earlier checkpoint')
    raise faults.WriteError(
        f'the checkpoint of step {step} could not be written to '
        f'{self.directory} ({cause}); {kept}. Free space or fix the file '
        'system, then run the same command again to resume.')

  def _prune(self) -> None:
    """Deletes all but the newest `keep` checkpoints (all complete)."""
    doomed = self.steps()[:-self.keep]
    if not doomed:
      return
    if jax.process_index() == 0:
      for step in doomed:
        trash = os.path.join(self.directory, f'{DELETING_PREFIX}{step}')
        os.rename(self._path(step), trash)
        shutil.rmtree(trash)
    _sync('padax-checkpoints-pruned')
    self._manager.reload()

  def loop_metadata(self, step: int) -> Optional[dict]:
    """The loop state stored with checkpoint `step` (None if it has none);
    ValueError if its metadata is damaged or records another step."""
    return rundir.read_custom_metadata(self._path(step), step).get(
        LOOP_METADATA_KEY)

  def restore_latest(self, template, check: Callable[[int, Optional[dict]],
                                                       object]):
    """(step, state, check's result) of the newest readable checkpoint.

    `template`: a pytree with the state's structure, shapes and shardings,
    or a function of the step giving it (a halving sweep's checkpoints hold
    fewer members past each rung).
    `check(step, loop_metadata)` validates the loop state (raises ValueError
    if it does not fit) and returns what the caller needs of it. None when
    there is no checkpoint.
    """
    steps = self.steps()
    if not steps:
      return None
    failures = []
    for step in reversed(steps):
      try:
        metadata = self.loop_metadata(step)
        abstract = jax.tree.map(
            ocp.utils.to_shape_dtype_struct,
            template(step) if callable(template) else template)
        state = self._manager.restore(
            step, args=ocp.args.StandardRestore(abstract))
        _check_state_step(state, step)
        loop = check(step, metadata)
      except Exception as e:  # pylint: disable=broad-except
        # Whatever Orbax or TensorStore raise on damaged files.
        failures.append((step, faults.first_line(e, with_type=True)))
        logging.warning('Checkpoint %s is unreadable (%s); trying the '
                        'previous one.', self._path(step), failures[-1][1])
        continue
      if failures:
        self._set_aside([s for s, _ in failures])
      return step, state, loop
    raise rundir.CheckpointReadError(
        f'none of the checkpoints in {self.directory} reads back ('
        + '; '.join(f'step {s}: {why}' for s, why in failures) +
        '); not starting the run over on top of them: move the directory '
        'away to start afresh.')

  def _set_aside(self, steps: list) -> None:
    _sync('padax-checkpoints-restored')
    if jax.process_index() == 0:
      for step in steps:
        target = os.path.join(self.directory, f'{rundir.UNREADABLE_PREFIX}{step}')
        n = 1
        while os.path.exists(target):
          n += 1
          target = os.path.join(self.directory,
                                f'{rundir.UNREADABLE_PREFIX}{step}-{n}')
        os.rename(self._path(step), target)
        logging.warning('Moved unreadable checkpoint %s to %s (kept for '
                        'inspection).', self._path(step), target)
    _sync('padax-checkpoints-set-aside')
    self._manager.reload()
