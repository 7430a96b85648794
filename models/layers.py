"""Building blocks shared by the model families: PyTorch-style initialisers and
a BatchNorm with PyTorch semantics. Convolutions and batch statistics are
computed by the `kernels` given (models/kernels.py; default PER_PLATFORM).

The paper's models were written in PyTorch, so the defaults here reproduce
PyTorch's, not Flax's:

* Conv / Linear weights: ``kaiming_uniform_(a=sqrt(5))``, i.e.
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) == ``variance_scaling(1/3, 'fan_in',
  'uniform')`` (the authors' PyTorch called it ``uniform_(-stdv, stdv)``).
* Conv / Linear biases: the same range. Flax bias initialisers do not see
  ``fan_in``, so :func:`torch_bias_init` closes over it.
* BatchNorm: scale 1, bias 0, running mean 0, running var 1.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from models.kernels import PER_PLATFORM, Kernels

Dtype = Any
Initializer = Callable[..., jax.Array]

torch_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default Conv2d / Linear bias init: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def classifier(x: jax.Array, num_classes: int, dtype: Dtype) -> jax.Array:
  """float32 logits from ``x`` by an ``nn.Linear`` with PyTorch's default
  initialisation, the submodule 'classifier' of the caller."""
  dense = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32,
                   kernel_init=torch_kernel_init,
                   bias_init=torch_bias_init(x.shape[-1]), name='classifier')
  return dense(x).astype(jnp.float32)


def conv(features: int, kernel_size: int, in_features: int, *,
         strides: int = 1, use_bias: bool = False,
         kernel_init: Initializer = torch_kernel_init,
         dtype: Dtype = jnp.float32,
         kernels: Kernels = PER_PLATFORM, name: str) -> nn.Conv:
  """Square ``nn.Conv2d`` with PyTorch padding ``kernel_size // 2``."""
  pad = kernel_size // 2
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(strides, strides),
      # Explicit symmetric padding: 'SAME' pads asymmetrically for stride 2.
      padding=((pad, pad), (pad, pad)), use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=torch_bias_init(in_features * kernel_size * kernel_size),
      dtype=dtype, param_dtype=jnp.float32,
      conv_general_dilated=kernels.conv_general_dilated, name=name)


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm2d`` (momentum 0.1, eps 1e-5) for NHWC inputs.

  Training normalises with the *biased* variance of the batch but updates the
  running variance with the *unbiased* ``var * n / (n - 1)``, n = N*H*W, as
  PyTorch does (``flax.linen.BatchNorm`` stores the biased one).
  ``momentum`` is the weight of the old running value (Flax convention):
  PyTorch's 0.1 is 0.9 here.

  Statistics are reduced over every axis but the last, over whatever batch
  the module is given; under ``jit`` with a sharded batch that is the global
  batch, so no ``axis_name`` is needed. They are computed in float32 whatever
  the computation ``dtype``; the output is cast to ``dtype``.
  Variables: params ``scale``, ``bias``; batch_stats ``mean``, ``var``.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  kernels: Kernels = PER_PLATFORM

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros,
                                 (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones,
                                (features,), jnp.float32)
    scale = self.param('scale', nn.initializers.ones, (features,),
                       jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)

    x32 = x.astype(jnp.float32)
    if train:
      y, mean, var = self.kernels.batch_norm_train(x32, scale, bias,
                                                    self.epsilon)
      if not self.is_initializing():
        n = x.size // features
        unbiased_var = var * (n / max(n - 1, 1))
        m = self.momentum
        running_mean.value = m * running_mean.value + (1.0 - m) * mean
        running_var.value = m * running_var.value + (1.0 - m) * unbiased_var
      return y.astype(self.dtype)
    mean, var = running_mean.value, running_var.value
    y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)
