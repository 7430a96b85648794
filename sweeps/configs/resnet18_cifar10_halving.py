"""Tuning Padam's p and lr for ResNet18 on CIFAR-10 by successive halving.

  python sweep.py --config sweeps/configs/resnet18_cifar10_halving.py \
      --workdir workdirs/halving-resnet18-c10

The sensitivity grid of the report's section 4.3 (p in {1/4, 1/8, 1/16} x
lr in {0.1, 0.01, 0.001}, 9 members, constant lr, batch 128), 30 epochs on
the 45,000 training images left once 5,000 are held out for validation. At
epoch 3 the 3 members with the lowest validation error go on, at epoch 9
the best of those (the rung at 27 has one member left to keep); the test
split decides nothing. GPU-sized; on a CPU see cpu_subset_halving.py.
"""

from configs import default
from sweeps.configs import common


def get_config():
  config = default.set_optimizer(default.get_config(), 'padam')
  config.model = 'resnet18'
  config.dataset = 'cifar10'
  config.validation_examples = 5000
  config.num_epochs = 30
  config.checkpoint_every_epochs = 5
  config.optimizer.lr_milestones = ()
  config = common.add_sweep(config, p=common.P_GRID,
                            learning_rate=(0.1, 0.01, 0.001))
  config.sweep.halving.eta = 3
  config.sweep.halving.first_rung_epochs = 3
  return config
