"""The report's section 4.2: Padam with p in {1/4, 1/8, 1/16} on ResNet18.

  python sweep.py --config sweeps/configs/report_p_grid.py:cifar10 \
      --workdir workdirs/p-grid-c10

lr 0.1, x0.1 every 30 epochs (30/60/90), 100 epochs (our choice of length:
change --config.num_epochs, and --config.optimizer.lr_milestones with it),
batch 128, the report's Padam hyperparameters (configs/default.py). The three
members train at once. Argument: the dataset, cifar10 (default) or cifar100.
"""

from configs import default
from sweeps.configs import common


def get_config(arg='cifar10'):
  config = default.set_optimizer(default.get_config(), 'padam')
  config.model = 'resnet18'
  config.dataset = common.dataset_arg(arg)
  config.num_epochs = 100
  config.optimizer.learning_rate = 0.1
  config.optimizer.lr_milestones = (30, 60, 90)
  config.optimizer.lr_factor = 0.1
  return common.add_sweep(config, p=common.P_GRID, learning_rate=(0.1,))
