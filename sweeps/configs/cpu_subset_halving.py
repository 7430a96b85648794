"""The CPU tuning preset (cpu_subset_tuning.py) with successive halving, eta 3.

  python sweep.py --config sweeps/configs/cpu_subset_halving.py \
      --workdir workdirs/sweep-cpu-halving

cpu_subset_tuning's grid (p x lr, 3 x 3, tiny_cnn on the first 5,000 CIFAR-10
training images, 1,000 of them held out for validation), over 9 epochs.
At epoch 1 the 3 members with the lowest validation error go on, at epoch 3
the best of those, which trains on to epoch 9: 21 member-epochs of the full
grid's 81. The full grid of the same preset, for comparison:
--config.sweep.halving.eta=0.
"""

from sweeps.configs import cpu_subset_tuning


def get_config():
  config = cpu_subset_tuning.get_config()
  config.num_epochs = 9
  config.sweep.halving.eta = 3
  return config
