"""WRN-16-4 exactly as the Padam authors built it (``WResNet_cifar10`` in
their ``models/wideresnet.py``, depth 16, multiplier 4).

This is *not* Zagoruyko & Komodakis' pre-activation WRN (16-wide stem,
dropout). The authors reuse the post-activation ResNet BasicBlock: 3x3 stem
conv of width 16*4 = 64 (no bias) + BN + ReLU; 2 BasicBlocks per stage
(WRN's (depth - 4) / 6; the authors' int((depth - 2) / 6) agrees at depth
16) at widths 64/128/256, first strides 1/2/2; a 1x1 conv + BN projection
only where the shape changes (so none in stage 1, whose input is already 64
wide); an 8x8 average pool (the whole 8x8 map for 32x32 input), flatten,
Dense.

Initialisation follows the authors' ``init_model``: every conv weight (the
1x1 projections included) ~ N(0, 2 / (k*k*out_channels)), i.e.
``variance_scaling(2, 'fan_out', 'normal')`` (JAX's 'normal' is not
truncated); BatchNorm and the Dense layer keep PyTorch's defaults
(``models.layers``).
"""
import jax
import jax.numpy as jnp
import flax.linen as nn

from models.kernels import PER_PLATFORM, Kernels
from models.layers import BatchNorm, Dtype, classifier, conv
from models.resnet import BasicBlock

he_normal_fan_out = nn.initializers.variance_scaling(
    2.0, 'fan_out', 'normal')


class WideResNet(nn.Module):
  """The authors' CIFAR wide ResNet: depth 6n+4, widths 16k/32k/64k."""
  depth: int
  widen_factor: int
  num_classes: int
  dtype: Dtype = jnp.float32
  kernels: Kernels = PER_PLATFORM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if (self.depth - 4) % 6:
      raise ValueError(f'depth={self.depth} is not allowed; allowed: 6n+4.')
    blocks_per_stage = (self.depth - 4) // 6
    base = 16 * self.widen_factor
    x = conv(base, 3, x.shape[-1], kernel_init=he_normal_fan_out,
             dtype=self.dtype, kernels=self.kernels, name='stem_conv')(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, kernels=self.kernels,
                          name='stem_bn')(x, train))
    for stage in range(3):
      for block in range(blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(base * 2 ** stage, strides,
                       kernel_init=he_normal_fan_out, dtype=self.dtype,
                       kernels=self.kernels,
                       name=f'stage{stage + 1}_block{block + 1}')(x, train)
    x = nn.avg_pool(x, (8, 8), strides=(8, 8))
    x = x.reshape((x.shape[0], -1))
    return classifier(x, self.num_classes, self.dtype)
