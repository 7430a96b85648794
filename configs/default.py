"""Base config: the report's Table 1 setting for Padam on ResNet18 / CIFAR-10.

Every experiment config starts from `get_config()` here and changes a few
keys; training/configuration.py lists and documents every key.
"""

from training import configuration


def get_config():
  return configuration.base_config()


def set_optimizer(config, name):
  """`config` with optimizer `name` and its defaults
  (configuration.OPTIMIZER_DEFAULTS)."""
  config.optimizer.name = name
  for key, value in configuration.OPTIMIZER_DEFAULTS[name].items():
    config.optimizer[key] = value
  return config
