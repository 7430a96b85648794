"""`RunShape`: what a run's config and data fix about it, derived once.

Every step <-> epoch conversion of the loop, the checks of a run directory
and the checkpoints goes through it. JAX-free.
"""

import dataclasses

from training import input_pipeline


@dataclasses.dataclass(frozen=True)
class RunShape:
  """The run's size: steps per epoch, examples per split, classes, images."""
  steps_per_epoch: int
  batch_size: int
  train_examples: int
  test_examples: int
  num_classes: int
  image_shape: tuple

  @classmethod
  def of(cls, config, data: input_pipeline.CifarData) -> 'RunShape':
    return cls(input_pipeline.steps_per_epoch(data.train.num_examples,
                                              config.batch_size),
               config.batch_size, data.train.num_examples,
               data.test.num_examples, data.num_classes,
               tuple(data.spec.image_shape))

  def epochs_done(self, step: int) -> int:
    """The epochs complete at global step `step`."""
    return step // self.steps_per_epoch

  def steps_into_epoch(self, step: int) -> int:
    """The steps done at `step` in the epoch in progress (0 at an end)."""
    return step % self.steps_per_epoch

  def end_step(self, epoch: int) -> int:
    """The global step at the end of `epoch` (0: before the first)."""
    return epoch * self.steps_per_epoch

  def epoch_of(self, step: int) -> int:
    """The epoch that 1-based step `step` belongs to."""
    return (step - 1) // self.steps_per_epoch + 1

  def position(self, step: int) -> str:
    """'step 6 (epoch 2, 2 of its 4 steps done)' or 'step 8 (end of epoch
    2)'."""
    done = self.steps_into_epoch(step)
    if not done:
      return f'step {step} (end of epoch {self.epochs_done(step)})'
    return (f'step {step} (epoch {self.epochs_done(step) + 1}, {done} of its '
            f'{self.steps_per_epoch} steps done)')
