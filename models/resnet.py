"""ResNet18, CIFAR variant, as in the Padam authors' ``models/resnet.py``.

3x3 stem conv (64, no bias) + BN + ReLU with no max-pool, then four stages of
two post-activation BasicBlocks (widths 64/128/256/512, first strides
1/2/2/2); a 1x1 conv + BN projection shortcut wherever stride or width
changes; global average pool (the authors' ``avg_pool2d(4)`` on the 4x4 map);
Dense.

Initialisation: PyTorch's defaults (``models.layers``), since the authors do
not re-initialise.
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from models.kernels import PER_PLATFORM, Kernels
from models.layers import (BatchNorm, Dtype, Initializer, classifier, conv,
                           torch_kernel_init)


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU (convs without bias)."""
  features: int
  strides: int = 1
  kernel_init: Initializer = torch_kernel_init
  dtype: Dtype = jnp.float32
  kernels: Kernels = PER_PLATFORM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    in_features = x.shape[-1]
    conv3x3 = functools.partial(conv, kernel_size=3,
                                kernel_init=self.kernel_init,
                                dtype=self.dtype, kernels=self.kernels)
    norm = functools.partial(BatchNorm, dtype=self.dtype,
                             kernels=self.kernels)
    y = conv3x3(self.features, in_features=in_features, strides=self.strides,
                name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y, train))
    y = conv3x3(self.features, in_features=self.features, name='conv2')(y)
    y = norm(name='bn2')(y, train)

    shortcut = x
    if self.strides != 1 or in_features != self.features:
      # Projection so the residual matches the new shape.
      shortcut = conv(self.features, 1, in_features, strides=self.strides,
                      kernel_init=self.kernel_init, dtype=self.dtype,
                      kernels=self.kernels, name='shortcut_conv')(x)
      shortcut = norm(name='shortcut_bn')(shortcut, train)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """CIFAR ResNet built from BasicBlocks."""
  blocks_per_stage: Sequence[int]
  num_classes: int
  stem_width: int = 64
  dtype: Dtype = jnp.float32
  kernels: Kernels = PER_PLATFORM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv(self.stem_width, 3, x.shape[-1], dtype=self.dtype,
             kernels=self.kernels, name='stem_conv')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, kernels=self.kernels,
                          name='stem_bn')(x, train))
    for stage, num_blocks in enumerate(self.blocks_per_stage):
      width = self.stem_width * 2 ** stage
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, strides, dtype=self.dtype, kernels=self.kernels,
                       name=f'stage{stage + 1}_block{block + 1}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return classifier(x, self.num_classes, self.dtype)
