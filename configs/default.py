"""Base config: the report's Table 1 setting for Padam on ResNet18 / CIFAR-10.

Every experiment config starts from `get_config()` here and changes a few keys.
"""

import ml_collections

# The report's Table 1 hyperparameters per optimizer (AdamW: ours, see README).
OPTIMIZER_DEFAULTS = {
    'sgdm': dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4),
    'adam': dict(learning_rate=1e-3, b1=0.9, b2=0.99, weight_decay=1e-4),
    'amsgrad': dict(learning_rate=1e-3, b1=0.9, b2=0.99, weight_decay=1e-4),
    # Decoupled decay scaled by lr: 1e-3 * 0.05 = 5e-5 per step, the same
    # shrinkage per step as SGD's 0.1 * 5e-4.
    'adamw': dict(learning_rate=1e-3, b1=0.9, b2=0.999, weight_decay=0.05),
    'padam': dict(learning_rate=0.1, b1=0.9, b2=0.999, weight_decay=5e-4,
                  p=0.125),
}


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = 'resnet18'
  config.dataset = 'cifar10'
  # 'tfds' (tensorflow-datasets, array_record) or 'local' (a directory in the
  # canonical CIFAR python layout, or holding the official .tar.gz).
  config.data_source = 'tfds'
  config.data_dir = ''
  config.dtype = 'float32'
  config.batch_size = 128
  config.eval_batch_size = 500
  # XLA devices a CPU-only host is split into for one data-parallel run
  # (train.py), and for each member of a sweep (sweep.py): an integer >= 1,
  # cut to what divides both batch sizes. Ignored where JAX runs on a GPU or
  # TPU, and where the user set XLA_FLAGS' device count or
  # JAX_NUM_CPU_DEVICES (training/host_devices.py). 1: the paper models'
  # convolutions keep the cores busy by themselves; small models gain from
  # more (docs/benchmarks.md, "train.py on a CPU host: the device split").
  config.cpu_devices = 1
  config.num_epochs = 200
  config.checkpoint_every_epochs = 10
  config.keep_checkpoints = 3
  # A non-finite loss or gradient: 'stop' the run at once (the last
  # checkpoint stays as it was), or 'skip' the update (as
  # optax.apply_if_finite; counted in the metrics' skipped_steps) and stop
  # after max_consecutive_skips in a row. In a sweep the member is marked
  # diverged and the others go on.
  config.nonfinite_policy = 'stop'
  config.max_consecutive_skips = 10

  config.optimizer = ml_collections.ConfigDict()
  opt = config.optimizer
  opt.name = 'padam'
  opt.learning_rate = 0.1
  # lr x lr_factor at each milestone epoch (the report: 50/100/150).
  opt.lr_milestones = (50, 100, 150)
  opt.lr_factor = 0.1
  opt.momentum = 0.9
  opt.b1 = 0.9
  opt.b2 = 0.999
  opt.eps = 1e-8
  opt.weight_decay = 5e-4
  opt.p = 0.125
  # The report's proposal: p x p_decay_factor every p_decay_every_epochs
  # (0: constant p).
  opt.p_decay_every_epochs = 0
  opt.p_decay_factor = 0.5
  opt.formulation = 'authors'
  return config


def set_optimizer(config, name):
  config.optimizer.name = name
  for key, value in OPTIMIZER_DEFAULTS[name].items():
    config.optimizer[key] = value
  return config
