"""A CPU-sized sweep: 9 members (p x lr, 3 x 3) of tiny_cnn on the CIFAR subset.

  python sweep.py --config sweeps/configs/cpu_subset.py --workdir /tmp/sweep_cpu

The genuine CIFAR-10 subset shipped beside the checkout
(../shared/data/cifar10-subset: 5085 train, 1017 test images), read with
data_source='local'; 3 epochs at batch 128, constant lr, the 9 members at once.
Minutes on a CPU, where sweep.py splits the host into one device per member
(docs/benchmarks.md). Point --config.data_dir elsewhere for another copy.
"""

import os

from configs import default
from sweeps.configs import common

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SUBSET = os.path.join(os.path.dirname(_ROOT), 'shared', 'data',
                      'cifar10-subset')


def get_config():
  config = default.set_optimizer(default.get_config(), 'padam')
  config.model = 'tiny_cnn'
  config.dataset = 'cifar10'
  config.data_source = 'local'
  config.data_dir = SUBSET
  config.num_epochs = 3
  config.batch_size = 128
  config.checkpoint_every_epochs = 1
  config.optimizer.lr_milestones = ()
  return common.add_sweep(config, p=common.P_GRID,
                          learning_rate=(0.1, 0.01, 0.001))
