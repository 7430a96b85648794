"""A tiny CNN for CPU tests and the quick config (not in the paper).

Three conv3x3 (no bias: BN follows) + BN + ReLU blocks of widths 16/32/64,
a 2x2 max-pool after the first two, global average pool, Dense: about 24k
parameters for 10 classes. PyTorch-default initialisation like the paper's
models (see ``models.layers``).
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from models.kernels import PER_PLATFORM, Kernels
from models.layers import BatchNorm, Dtype, classifier, conv


class TinyCNN(nn.Module):
  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  dtype: Dtype = jnp.float32
  kernels: Kernels = PER_PLATFORM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, width in enumerate(self.widths, start=1):
      x = conv(width, 3, x.shape[-1], dtype=self.dtype, kernels=self.kernels,
               name=f'conv{i}')(x)
      x = nn.relu(BatchNorm(dtype=self.dtype, kernels=self.kernels,
                            name=f'bn{i}')(x, train))
      if i < len(self.widths):
        x = self.kernels.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return classifier(x, self.num_classes, self.dtype)
