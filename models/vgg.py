"""VGG16 for CIFAR, as in the Padam authors' ``models/vgg.py``.

Every 3x3 conv (padding 1, *with* bias) is followed by BatchNorm and ReLU;
'M' is a 2x2 max-pool, stride 2. Five pools take 32x32 to 1x1, so the
features flatten to 512 and a single Dense layer gives the logits. (The
authors' trailing ``AvgPool2d(kernel_size=1, stride=1)`` is the identity and
is left out.)

Initialisation: PyTorch's defaults (``models.layers``), since the authors do
not re-initialise.
"""
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import flax.linen as nn

from models.kernels import PER_PLATFORM, Kernels
from models.layers import BatchNorm, Dtype, classifier, conv

MAX_POOL = 'M'
VGG16_LAYOUT = (64, 64, MAX_POOL, 128, 128, MAX_POOL, 256, 256, 256, MAX_POOL,
                512, 512, 512, MAX_POOL, 512, 512, 512, MAX_POOL)


class VGG(nn.Module):
  """VGG with BatchNorm; ``layout`` lists conv widths and 'M' pools."""
  layout: Sequence[Union[int, str]]
  num_classes: int
  dtype: Dtype = jnp.float32
  kernels: Kernels = PER_PLATFORM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    stage, index = 1, 1
    for item in self.layout:
      if item == MAX_POOL:
        x = self.kernels.max_pool(x, (2, 2), strides=(2, 2))
        stage, index = stage + 1, 1
        continue
      prefix = f'stage{stage}_'
      x = conv(item, 3, x.shape[-1], use_bias=True, dtype=self.dtype,
               kernels=self.kernels, name=f'{prefix}conv{index}')(x)
      x = BatchNorm(dtype=self.dtype, kernels=self.kernels,
                    name=f'{prefix}bn{index}')(x, train)
      x = nn.relu(x)
      index += 1
    x = x.reshape((x.shape[0], -1))
    return classifier(x, self.num_classes, self.dtype)
