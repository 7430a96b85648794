"""The paper's grid: {vgg16, resnet18, wrn16_4} x {cifar10, cifar100} x optimizers.

  python train.py --config configs/paper.py:resnet18,cifar10,padam --workdir ...

The argument is `model,dataset,optimizer[,milestones]`; milestones is
`report` (lr x0.1 at epochs 50/100/150, the default) or `authors` (100/150).
"""

from configs import default
from training import configuration

MILESTONES = {'report': (50, 100, 150), 'authors': (100, 150)}


def get_config(arg='resnet18,cifar10,padam'):
  parts = arg.split(',')
  if len(parts) not in (3, 4):
    raise ValueError(
        f'config argument {arg!r} is not allowed; allowed: '
        "'model,dataset,optimizer[,milestones]', e.g. 'vgg16,cifar100,padam'.")
  model, dataset, optimizer = parts[:3]
  milestones = parts[3] if len(parts) == 4 else 'report'
  if optimizer not in configuration.OPTIMIZER_DEFAULTS:
    raise ValueError(f'optimizer={optimizer!r} is not known; allowed: '
                     f'{", ".join(configuration.OPTIMIZER_DEFAULTS)}.')
  if milestones not in MILESTONES:
    raise ValueError(f'milestones={milestones!r} is not known; allowed: '
                     f'{", ".join(MILESTONES)}.')
  config = default.set_optimizer(default.get_config(), optimizer)
  config.model = model
  config.dataset = dataset
  config.optimizer.lr_milestones = MILESTONES[milestones]
  return config
