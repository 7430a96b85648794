"""What a run does when something goes wrong, shared by train.py and sweeps:
stop requests (`StopRequests`), the non-finite policy (`NonfiniteWatch`), the
host loop state a checkpoint carries for a resumed run to be bit-identical
(`LoopState`), and the exit codes train.py and sweep.py give each exception.
docs/reliability.md has the guarantees.
"""

import collections
import dataclasses
import logging
import signal
import threading
from typing import Optional

import numpy as np

EXIT_STOPPED = 0       # a stop request: a checkpoint was saved
EXIT_REFUSED = 2       # bad input: nothing was written
EXIT_DIVERGED = 3      # non-finite loss or gradient: nothing saved after it
EXIT_WRITE_FAILED = 4  # disk full / I/O error: the previous checkpoint is intact
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once, no checkpoint

NONFINITE_POLICIES = ('stop', 'skip')

# How many steps late the watch reads a step's `finite` flag: the host then
# waits only on a step that is long done.
_WATCH_LAG = 2


class RunStopped(Exception):
  """The run stopped on request after saving a checkpoint (not an error)."""


class Diverged(Exception):
  """A non-finite loss or gradient stopped a run (policy 'stop' or too many
  skips with 'skip'); the checkpoints saved before it are untouched."""

  def __init__(self, step: int, reason: str, message: str = None):
    super().__init__(message or f'{reason} at step {step}')
    self.step = step
    self.reason = reason


def first_line(e: BaseException, *, with_type: bool = False) -> str:
  """The first line of `e`'s message, for a one-line error or log.

  with_type: 'TypeName: first line' ('TypeName: ' when there is no message);
  else the first line alone, or the type's name when there is no message.
  """
  lines = str(e).strip().splitlines()
  if with_type:
    return f'{type(e).__name__}: {lines[0] if lines else ""}'
  return lines[0] if lines else type(e).__name__


class WriteError(Exception):
  """A file of the run could not be written (disk full, I/O error); what was
  written before is intact."""


class StopRequests:
  """SIGTERM and SIGINT set `requested`; the loop stops at a step boundary.

  A context manager: installs the handlers on entry (in the main thread only;
  elsewhere signals cannot be caught and the flag stays unset unless
  `request` is called) and restores the previous ones on exit. A second
  SIGINT raises KeyboardInterrupt at once, for an impatient Ctrl-C.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: Optional[str] = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def request(self, name: str = 'a stop request') -> None:
    self.signal_name = self.signal_name or name

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    name = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint at the next step '
                    'boundary, then stopping.', name)
    self.request(name)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    return False


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
  """Host state of the epoch loop at a checkpoint (one entry per member).

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
                steps_per_epoch: int) -> 'LoopState':
    """The stored state of a checkpoint at `step`; ValueError if unusable.

    A checkpoint without one (written before padax stored it) is valid only
    at an epoch end, where there is nothing to carry but the counters.
    """
    steps_done = step % steps_per_epoch
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
                       f'not match step {step} with {steps_per_epoch} steps '
                       'per epoch')
    if len(state.nonfinite_in_a_row) != num_members or len(
        state.diverged) != num_members:
      raise ValueError(f'its loop state is for {len(state.diverged)} '
                       f'members, not {num_members}')
    return state


class NonfiniteWatch:
  """Applies `policy` to each step's `finite` flags, in order, a little late.

  policy 'stop': a member's first non-finite step fails it. 'skip': train_step
  already dropped the update; `max_in_a_row` skipped steps in a row fail it.
  A failed member of a single run (`stop_run`) raises Diverged; in a sweep it
  is recorded in `diverged` (step, epoch, reason) with a warning, and the
  others go on (vmap keeps members apart).
  """

  def __init__(self, policy: str, max_in_a_row: int, loop: LoopState, *,
               steps_per_epoch: int, stop_run: bool,
               member_names: Optional[list] = None):
    self.policy = policy
    self.max_in_a_row = max_in_a_row
    self.loop = loop
    self.steps_per_epoch = steps_per_epoch
    self.stop_run = stop_run
    self.member_names = member_names
    self._pending = collections.deque()

  def push(self, step: int, finite) -> None:
    """Records the device flags of global step `step` (1-based)."""
    self._pending.append((step, finite))
    while len(self._pending) > _WATCH_LAG:
      self._check(*self._pending.popleft())

  def flush(self) -> None:
    """Checks every step pushed so far (before a checkpoint or a row)."""
    while self._pending:
      self._check(*self._pending.popleft())

  def _check(self, step: int, finite) -> None:
    flags = np.asarray(finite).reshape(-1)
    for k in range(self.loop.num_members):
      if flags[k] > 0.5:
        self.loop.nonfinite_in_a_row[k] = 0
        continue
      self.loop.nonfinite_in_a_row[k] += 1
      if self.loop.diverged[k] is not None:
        continue
      if self.policy == 'stop':
        reason = 'non-finite loss or gradient'
      elif self.loop.nonfinite_in_a_row[k] >= self.max_in_a_row:
        reason = (f'{self.loop.nonfinite_in_a_row[k]} steps in a row skipped for '
                  'a non-finite loss or gradient')
      else:
        continue
      if self.stop_run:
        raise Diverged(step, reason)
      epoch = (step - 1) // self.steps_per_epoch + 1
      self.loop.diverged[k] = {'step': step, 'epoch': epoch, 'reason': reason}
      logging.warning('Member %s: %s at step %d (epoch %d): marked diverged; '
                      'the other members go on.', self.member_names[k],
                      reason, step, epoch)
