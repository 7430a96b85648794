"""What a run does when something goes wrong, shared by train.py and sweeps:
stop requests (`StopRequests`), the non-finite policy (`NonfiniteWatch`), and
the exit codes train.py and sweep.py give each exception.
docs/reliability.md has the guarantees.
"""

import collections
import logging
import signal
import threading
from typing import Optional

import numpy as np

EXIT_STOPPED = 0       # a stop request: a checkpoint was saved
EXIT_REFUSED = 2       # bad input: nothing was written
EXIT_DIVERGED = 3      # non-finite loss or gradient: nothing saved after it
EXIT_WRITE_FAILED = 4  # disk full / I/O error: the previous checkpoint is intact
EXIT_PEER_LOST = 5     # another process of a multi-process run is gone
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


class NonfiniteWatch:
  """Applies `policy` to each step's `finite` flags, in order, a little late.

  policy 'stop': a member's first non-finite step fails it. 'skip': train_step
  already dropped the update; `max_in_a_row` skipped steps in a row fail it.
  loop: the checkpoints.LoopState it counts in; shape: the
  run_shape.RunShape. A failed single run (no `member_names`) raises
  Diverged; in a sweep it is recorded in `diverged` (step, epoch, reason)
  with a warning, and the others go on (vmap keeps members apart).
  """

  def __init__(self, policy: str, max_in_a_row: int, loop, *, shape,
               member_names: Optional[list] = None):
    self.policy = policy
    self.max_in_a_row = max_in_a_row
    self.loop = loop
    self.shape = shape
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
      if self.member_names is None:
        raise Diverged(step, reason)
      epoch = self.shape.epoch_of(step)
      self.loop.diverged[k] = {'step': step, 'epoch': epoch, 'reason': reason}
      logging.warning('Member %s: %s at step %d (epoch %d): marked diverged; '
                      'the other members go on.', self.member_names[k],
                      reason, step, epoch)
