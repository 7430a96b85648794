"""The CPU preset (cpu_subset.py) for tuning p and lr: a validation split.

  python sweep.py --config sweeps/configs/cpu_subset_tuning.py --workdir workdirs/tune-cpu

The same 9 members (p x lr, 3 x 3), data and schedule as cpu_subset.py,
except that 1,000 of its 5,000 training images are held out
(validation_examples): the members train on the other 4,000 and each epoch's
row gains val_loss, val_error and val_top5_error, which a choice of p and lr
reads instead of the test error. The 10,000 test images stay whole.
"""

from sweeps.configs import cpu_subset

VALIDATION_EXAMPLES = 1000


def get_config():
  config = cpu_subset.get_config()
  config.validation_examples = VALIDATION_EXAMPLES
  return config
