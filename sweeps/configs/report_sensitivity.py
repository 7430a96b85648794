"""The report's section 4.3: sensitivity of Padam to p and the learning rate.

  python sweep.py --config sweeps/configs/report_sensitivity.py:cifar10 \
      --workdir workdirs/sensitivity-c10 [--chunk 3]

p in {1/4, 1/8, 1/16} x lr in {0.1, 0.01, 0.001} (9 members) on ResNet18,
30 epochs at batch 128 with a constant lr (the 30-epoch step schedule of
section 4.2 has no decay within 30 epochs). Argument: the dataset, cifar10
(default) or cifar100.
"""

from configs import default
from sweeps.configs import common


def get_config(arg='cifar10'):
  config = default.set_optimizer(default.get_config(), 'padam')
  config.model = 'resnet18'
  config.dataset = common.dataset_arg(arg)
  config.num_epochs = 30
  config.checkpoint_every_epochs = 5
  config.optimizer.lr_milestones = ()
  return common.add_sweep(config, p=common.P_GRID,
                          learning_rate=(0.1, 0.01, 0.001))
