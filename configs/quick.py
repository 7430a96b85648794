r"""A few minutes on a CPU: a small CNN with Padam on CIFAR-10.

Real data, real model, a short schedule: for trying the pipeline end to end.
CIFAR-10 is downloaded on first use (configs/default.py: data_source).
  python train.py --config configs/quick.py --workdir workdirs/quick
Offline, from a local copy of the official archive or its extracted folder:
  python train.py --config configs/quick.py --workdir workdirs/quick \
      --config.data_source=local --config.data_dir=DIR
"""

from configs import default


def get_config():
  config = default.set_optimizer(default.get_config(), 'padam')
  config.model = 'tiny_cnn'
  config.num_epochs = 6
  config.batch_size = 128
  # The tiny CNN's operations are too small to keep a CPU's cores busy: its
  # step runs faster split over 4 devices (docs/benchmarks.md).
  config.cpu_devices = 4
  config.optimizer.lr_milestones = (4,)
  config.checkpoint_every_epochs = 2
  return config
