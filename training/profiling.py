"""A JAX profiler trace of a few training steps (train.py/sweep.py --profile).

The first steps of a process compile and warm up, so the trace starts after
`skip` of them and covers the next `count`; it is written under `directory`
(TensorBoard's profile plugin or Perfetto read it; benchmarks/trace_summary.py
prints where the time went).
"""

import contextlib
import logging
import os

import jax


class StepTrace:
  """Call `after_step(metrics)` after each dispatched step; `close()` at the end."""

  def __init__(self, directory: str, count: int = 5, skip: int = 5):
    if count < 1 or skip < 0:
      raise ValueError(f'profile steps: count={count}, skip={skip}; allowed: '
                       'count >= 1, skip >= 0.')
    self.directory, self.count, self.skip = directory, count, skip
    self._seen = 0
    self._tracing = False
    if skip == 0:
      self._start()

  def _start(self):
    os.makedirs(self.directory, exist_ok=True)
    jax.profiler.start_trace(self.directory)
    self._tracing = True

  def _stop(self):
    jax.profiler.stop_trace()
    self._tracing = False
    logging.info('Profiler trace of %d steps written to %s', self.count,
                 self.directory)

  def after_step(self, metrics) -> None:
    self._seen += 1
    if self._seen == self.skip and not self._tracing:
      # Only the traced steps' own work: wait for the warm-up steps first.
      jax.block_until_ready(metrics)
      self._start()
    elif self._seen == self.skip + self.count and self._tracing:
      jax.block_until_ready(metrics)
      self._stop()

  def close(self) -> None:
    """Ends a trace still running (a run shorter than skip + count steps)."""
    if self._tracing:
      self._stop()


@contextlib.contextmanager
def step_trace(directory: str, count: int):
  """A StepTrace of `count` steps (None when count is 0), closed on exit."""
  if not count:
    yield None
    return
  trace = StepTrace(directory, count)
  try:
    yield trace
  finally:
    trace.close()
