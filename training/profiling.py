"""A JAX profiler trace of a few training steps (train.py/sweep.py --profile).

The first steps compile and warm up, so the trace covers the `count` steps
after `WARMUP_STEPS` (TensorBoard or Perfetto read it).
"""

import contextlib
import logging
import os

import jax

WARMUP_STEPS = 5


class StepTrace:
  """Call `after_step(metrics)` after each dispatched step; use as a context."""

  def __init__(self, directory: str, count: int = 5):
    self.directory, self.count = directory, count
    self._seen = 0
    self._tracing = False

  def _stop(self):
    jax.profiler.stop_trace()
    self._tracing = False
    logging.info('Profiler trace of %d steps written to %s', self.count,
                 self.directory)

  def after_step(self, metrics) -> None:
    self._seen += 1
    if self._seen == WARMUP_STEPS and not self._tracing:
      # Only the traced steps' own work: wait for the warm-up steps first.
      jax.block_until_ready(metrics)
      os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self.directory)
      self._tracing = True
    elif self._seen == WARMUP_STEPS + self.count and self._tracing:
      jax.block_until_ready(metrics)
      self._stop()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    # A run shorter than the warm-up + count: end the trace still running.
    if self._tracing:
      self._stop()


def step_trace(directory: str, count: int):
  """A StepTrace of `count` steps (None when count is 0), closed on exit."""
  return StepTrace(directory, count) if count else contextlib.nullcontext()
