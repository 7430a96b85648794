"""A CPU-sized sweep: 9 members (p x lr, 3 x 3) of tiny_cnn on 5,000 CIFAR-10 images.

  python sweep.py --config sweeps/configs/cpu_subset.py --workdir workdirs/sweep-cpu

CIFAR-10 from the official archive (data_source='download', fetched once and
cached), trained on its first 5,000 training images (train_examples) and
tested on all 10,000 test images; 3 epochs at batch 128, constant lr, the 9
members at once. Minutes on a CPU, where sweep.py splits the host into 4
devices per member (cpu_devices; docs/benchmarks.md). For a local copy add
--config.data_source=local --config.data_dir=DIR.
"""

from configs import default
from sweeps.configs import common

TRAIN_EXAMPLES = 5000


def get_config():
  config = default.set_optimizer(default.get_config(), 'padam')
  config.model = 'tiny_cnn'
  config.dataset = 'cifar10'
  config.train_examples = TRAIN_EXAMPLES
  # As configs/quick.py: the tiny CNN trains faster split over 4 devices.
  config.cpu_devices = 4
  config.num_epochs = 3
  config.batch_size = 128
  config.checkpoint_every_epochs = 1
  config.optimizer.lr_milestones = ()
  return common.add_sweep(config, p=common.P_GRID,
                          learning_rate=(0.1, 0.01, 0.001))
