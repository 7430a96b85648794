"""The report's proposed experiment (section 4.4): Padam with a decaying p.

lr 0.001 and p 0.25, p halved every 50 epochs, lr x0.1 once at epoch 100.
Argument: `model,dataset` (default resnet18,cifar10).
"""

from configs import default


def get_config(arg='resnet18,cifar10'):
  model, dataset = arg.split(',')
  config = default.set_optimizer(default.get_config(), 'padam')
  config.model = model
  config.dataset = dataset
  config.optimizer.learning_rate = 1e-3
  config.optimizer.lr_milestones = (100,)
  config.optimizer.p = 0.25
  config.optimizer.p_decay_every_epochs = 50
  config.optimizer.p_decay_factor = 0.5
  return config
