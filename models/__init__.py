"""Model registry: the paper's CIFAR architectures plus a tiny test model.

Interface used by the training loop::

  model = create_model('resnet18', num_classes=10)
  variables = model.init(rng, x, train=False)  # {'params', 'batch_stats'}
  logits, new_state = model.apply(variables, x, train=True,
                                  mutable=['batch_stats'])
  logits = model.apply(variables, x, train=False)

``x`` is float NHWC, already normalised; logits are float32 whatever the
computation ``dtype`` (params are always float32).

  layers.py     PyTorch-initialised convolutions, dense layers, BatchNorm
  kernels.py    the kernels (convolution, BatchNorm, max pool), chosen per
                platform when a program is lowered; xla_cpu.py: XLA:CPU's
  vgg.py, resnet.py, wide_resnet.py, tiny_cnn.py   the models

May import: JAX and Flax only (nothing of training/).
"""
import functools

import jax.numpy as jnp
import flax.linen as nn

from models.kernels import PER_PLATFORM, Kernels
from models.resnet import ResNet
from models.tiny_cnn import TinyCNN
from models.vgg import VGG, VGG16_LAYOUT
from models.wide_resnet import WideResNet

_BUILDERS = {
    'vgg16': functools.partial(VGG, VGG16_LAYOUT),
    'resnet18': functools.partial(ResNet, (2, 2, 2, 2)),
    'wrn16_4': functools.partial(WideResNet, 16, 4),
    'tiny_cnn': TinyCNN,
}
MODEL_NAMES = tuple(_BUILDERS)


def create_model(name: str, num_classes: int, dtype=jnp.float32,
                 kernels: Kernels = PER_PLATFORM) -> nn.Module:
  """Builds model ``name`` with ``num_classes`` outputs in ``dtype``,
  computed by ``kernels`` (models/kernels.py: the default chooses per
  platform when the program is lowered)."""
  if name not in _BUILDERS:
    raise ValueError(f'model={name!r} is not known; allowed: '
                     f'{", ".join(MODEL_NAMES)}')
  return _BUILDERS[name](num_classes=num_classes, dtype=dtype, kernels=kernels)
