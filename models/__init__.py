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
# The architectures create_model builds, and the smallest image side each
# takes where there is one: VGG16 halves the image five times and WRN-16-4
# pools an 8x8 map after two halvings; the others pool globally. Kept free of
# JAX: training/configuration.py checks a config against them before JAX loads.
MODEL_NAMES = ('vgg16', 'resnet18', 'wrn16_4', 'tiny_cnn')
MIN_IMAGE_SIDE = {'vgg16': 32, 'wrn16_4': 32}


def create_model(name: str, num_classes: int, dtype=None, kernels=None):
  """Builds model ``name`` with ``num_classes`` outputs in ``dtype``
  (default float32), computed by ``kernels`` (models/kernels.py: the default
  chooses per platform when the program is lowered)."""
  # pylint: disable=g-import-not-at-top
  import functools
  import jax.numpy as jnp
  from models import kernels as kernel_sets
  from models.resnet import ResNet
  from models.tiny_cnn import TinyCNN
  from models.vgg import VGG, VGG16_LAYOUT
  from models.wide_resnet import WideResNet
  # pylint: enable=g-import-not-at-top
  builders = {
      'vgg16': functools.partial(VGG, VGG16_LAYOUT),
      'resnet18': functools.partial(ResNet, (2, 2, 2, 2)),
      'wrn16_4': functools.partial(WideResNet, 16, 4),
      'tiny_cnn': TinyCNN,
  }
  if name not in builders:
    raise ValueError(f'model={name!r} is not known; allowed: '
                     f'{", ".join(MODEL_NAMES)}')
  return builders[name](
      num_classes=num_classes, dtype=jnp.float32 if dtype is None else dtype,
      kernels=kernel_sets.PER_PLATFORM if kernels is None else kernels)
