"""The one place that chooses the models' kernels: per platform, when lowering.

A `Kernels` is the three operations the models delegate: a convolution (with
``lax.conv_general_dilated``'s signature, as ``nn.Conv`` calls it),
training-mode batch normalisation ``(x, scale, bias, epsilon) -> (y, batch
mean, biased batch variance)``, and a max pool (``nn.max_pool``'s
signature). The models take one as their ``kernels`` attribute:

* `PER_PLATFORM` (the default): `XLA_CPU` in a program lowered for the CPU,
  `PLAIN` for any other platform, by `jax.lax.platform_dependent`, resolved
  when the program is lowered, not where it is traced: a train step exported
  from a CPU host for a GPU holds the plain operations only.
* `PLAIN`: the stock operations (``lax.conv_general_dilated``, BatchNorm by
  autodiff of its formula, ``nn.max_pool``), on every platform.
* `XLA_CPU`: models/xla_cpu.py's kernels, on every platform (the same
  values and gradients as `PLAIN` up to float rounding).
"""
import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import xla_cpu


@dataclasses.dataclass(frozen=True)
class Kernels:
  conv_general_dilated: Callable
  batch_norm_train: Callable
  max_pool: Callable


def batch_norm_train(x, scale, bias, epsilon):
  """Training-mode batch normalisation of ``x`` (N, ..., C) over every axis
  but the last, by its formula (gradients by autodiff):
  ``(y, mean, biased variance)``."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  centred = x - mean
  # Two-pass variance: no cancellation when |mean| >> std.
  var = jnp.mean(jnp.square(centred), axis=axes)
  y = centred * (jax.lax.rsqrt(var + epsilon) * scale) + bias
  return y, mean, var


def _per_platform(cpu: Callable, default: Callable,
                  num_arrays: int) -> Callable:
  """`cpu` in programs lowered for the CPU, `default` for other platforms.

  The first `num_arrays` positional arguments are the arrays that the
  platform conditional passes to either branch; the others are static.
  """
  def chosen(*args, **static):
    rest = args[num_arrays:]
    return jax.lax.platform_dependent(
        *args[:num_arrays],
        cpu=lambda *arrays: cpu(*arrays, *rest, **static),
        default=lambda *arrays: default(*arrays, *rest, **static))

  return chosen


PLAIN = Kernels(conv_general_dilated=jax.lax.conv_general_dilated,
                batch_norm_train=batch_norm_train, max_pool=nn.max_pool)
XLA_CPU = Kernels(conv_general_dilated=xla_cpu.conv_general_dilated,
                  batch_norm_train=xla_cpu.batch_norm_train,
                  max_pool=xla_cpu.max_pool)
PER_PLATFORM = Kernels(**{
    field.name: _per_platform(getattr(XLA_CPU, field.name),
                              getattr(PLAIN, field.name), num_arrays)
    for field, num_arrays in zip(dataclasses.fields(Kernels), (2, 3, 1))})
