"""Building blocks shared by the model families: PyTorch-style initialisers and
a BatchNorm with PyTorch semantics.

The paper's models were written in PyTorch, so the defaults here reproduce
PyTorch's, not Flax's:

* Conv / Linear weights: ``kaiming_uniform_(a=sqrt(5))``, i.e.
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) == ``variance_scaling(1/3, 'fan_in',
  'uniform')``. (PyTorch 0.3/0.4, which the authors used, drew the same
  distribution under the name ``uniform_(-stdv, stdv)``.)
* Conv / Linear biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Flax bias
  initialisers do not see ``fan_in``, so :func:`torch_bias_init` closes over it.
* BatchNorm: scale 1, bias 0, running mean 0, running var 1.
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = Any
Initializer = Callable[..., jax.Array]

# PyTorch's default Conv2d / Linear weight init (kaiming_uniform, a=sqrt(5)).
torch_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default Conv2d / Linear bias init: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, in_features: int, dtype: Dtype,
                name: str) -> nn.Dense:
  """``nn.Linear`` with PyTorch's default initialisation."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=torch_kernel_init,
                  bias_init=torch_bias_init(in_features), name=name)


# Output maps of at most this many positions (VGG16's 2x2 and 1x1 stages)
# are convolved as one matmul over their patches: XLA:CPU's convolution
# took 3.8 s for a 2x2x512 layer's forward and gradients at batch 128, the
# matmul 94 ms (benchmarks/cpu_kernels.py, docs/benchmarks.md). Larger maps keep XLA's convolution, which is faster
# there.
PATCHES_MATMUL_MAX_POSITIONS = 4


def _is_plain_2d(dimension_numbers, lhs_dilation, rhs_dilation,
                 feature_group_count) -> bool:
  """NHWC input, HWIO kernel, no dilation, no groups: the case we rewrite."""
  nhwc = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1),
                                        ('NHWC', 'HWIO', 'NHWC'))
  return (dimension_numbers == nhwc and feature_group_count == 1 and
          all(d == 1 for d in (lhs_dilation or (1, 1))) and
          all(d == 1 for d in (rhs_dilation or (1, 1))))


@jax.custom_batching.custom_vmap
def _kept_conditional(x: jax.Array, first: jax.Array) -> jax.Array:
  """``x`` through a conditional whose two branches give the same bits."""
  # -(-x) is exact (NaN payloads and -0 included); the branches are written
  # differently because XLA drops a conditional whose branches are identical.
  return jax.lax.cond(first == first, lambda x: x, lambda x: -(-x), x)


@_kept_conditional.def_vmap
def _kept_conditional_vmap(axis_size, in_batched, x, first):
  # vmap turns a conditional with a batched predicate into a select, which
  # XLA drops. One conditional over all members' inputs, on one member's
  # predicate, keeps the buffer (through _kept_conditional again, so that
  # an outer vmap does the same).
  del axis_size
  return _kept_conditional(x, first.reshape(-1)[0]), in_batched[0]


@jax.custom_vjp
def _materialized(x: jax.Array, first: jax.Array) -> jax.Array:
  return _kept_conditional(x, first)


def _materialized_fwd(x, first):
  return _kept_conditional(x, first), None


def _materialized_bwd(_, cotangent):
  # The identity's gradient; the predicate gets none.
  return cotangent, None


_materialized.defvjp(_materialized_fwd, _materialized_bwd)


def _materialized_on_cpu(x: jax.Array, weights: jax.Array) -> jax.Array:
  """``x``, unchanged, but computed into a buffer of its own on XLA:CPU.

  The weight gradient of a convolution reads its input in another layout.
  XLA:CPU fuses that transpose with the element-wise ops that produced the
  input (BatchNorm, ReLU, the residual adds of several blocks) and computes
  them again, reading every tensor of the chain with a stride: 20% of a
  ResNet18 step. XLA does not fuse across a conditional, so passing the
  input through one makes the transpose read it once (ResNet18 step 1.9 ->
  1.6 s, docs/benchmarks.md). ``optimization_barrier`` would say this
  directly, but XLA:CPU removes barriers before fusion. The predicate comes
  from the (replicated) weights, so a batch-sharded ``x`` needs no
  collective. A custom batching rule keeps the conditional under ``vmap``
  (sweeps), and a custom gradient passes the cotangent straight through.
  Not on GPUs, where a conditional waits for its predicate on the host.
  """
  if jax.default_backend() != 'cpu':
    return x
  return _materialized(x, weights.reshape(-1)[0])


def conv_general_dilated(lhs, rhs, window_strides, padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1,
                         precision=None):
  """``lax.conv_general_dilated`` (as ``nn.Conv`` calls it), except that a
  plain NHWC convolution with a tiny output map is one matmul of its patches
  with the reshaped kernel: the same sums, in another order."""
  if _is_plain_2d(dimension_numbers, lhs_dilation, rhs_dilation,
                  feature_group_count):
    kh, kw, cin, cout = rhs.shape
    (top, bottom), (left, right) = padding
    sh, sw = window_strides
    out_h = (lhs.shape[1] + top + bottom - kh) // sh + 1
    out_w = (lhs.shape[2] + left + right - kw) // sw + 1
    if out_h * out_w <= PATCHES_MATMUL_MAX_POSITIONS:
      padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
      # Channels of the patch in (row, column, input channel) order: HWIO's.
      patches = jnp.concatenate([
          padded[:, i:i + (out_h - 1) * sh + 1:sh,
                 j:j + (out_w - 1) * sw + 1:sw]
          for i in range(kh) for j in range(kw)], axis=-1)
      return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout),
                     precision=precision)
  lhs = _materialized_on_cpu(lhs, rhs)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)


def conv(features: int, kernel_size: int, in_features: int, *,
         strides: int = 1, use_bias: bool = False,
         kernel_init: Initializer = torch_kernel_init,
         dtype: Dtype = jnp.float32, name: str) -> nn.Conv:
  """Square ``nn.Conv2d`` with PyTorch padding ``kernel_size // 2``."""
  pad = kernel_size // 2
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(strides, strides),
      # Explicit symmetric padding: 'SAME' pads asymmetrically for stride 2.
      padding=((pad, pad), (pad, pad)), use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=torch_bias_init(in_features * kernel_size * kernel_size),
      dtype=dtype, param_dtype=jnp.float32,
      conv_general_dilated=conv_general_dilated, name=name)


def _channel_sums(x: jax.Array) -> jax.Array:
  """Sums of an (N, positions, C) array over its first two axes: per-example
  sums as a batched matrix-vector product, then a sum over the N examples.

  XLA:CPU splits a plain reduction this large into reduce-windows that read
  the channels with a stride; the matmuls ran 3-13x faster at ResNet18's
  shapes (three runs), with no more rounding error
  (benchmarks/cpu_kernels.py, `bn`).
  Per-example partial sums are also the same whether or not the batch is
  split over devices, which keeps data-parallel runs closer to 1-device
  ones (tests/test_data_parallel.py)."""
  ones = jnp.ones((x.shape[0], 1, x.shape[1]), x.dtype)
  per_example = jnp.matmul(ones, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.sum(per_example[:, 0], axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """Training-mode batch normalisation of float32 ``x`` (N, ..., C) over
  every axis but the last: ``(y, mean, biased variance)``. The gradient is
  written out (the standard closed form) so that its channel sums are
  :func:`_channel_sums` too."""
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _per_example(x):
  """(N, positions, C) view of an (N, ..., C) array, and N * positions."""
  x3 = x.reshape(x.shape[0], -1, x.shape[-1])
  return x3, x3.shape[0] * x3.shape[1]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  x3, n = _per_example(x)
  mean = _channel_sums(x3) / n
  centred = x3 - mean
  # Two-pass variance: no cancellation when |mean| >> std.
  var = _channel_sums(jnp.square(centred)) / n
  inv = jax.lax.rsqrt(var + epsilon)
  y = centred * (inv * scale) + bias
  return (y.reshape(x.shape), mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  dy, dmean, dvar = cotangents
  x3, n = _per_example(x)
  dy3 = dy.reshape(x3.shape)
  centred = x3 - mean
  dbias = _channel_sums(dy3)
  dy_centred = _channel_sums(dy3 * centred)
  # Through y (directly and via the batch mean and variance), then through
  # the mean and variance outputs (the running statistics).
  dx = (scale * inv) * (dy3 - dbias / n -
                        centred * (inv * inv * dy_centred / n))
  dx = dx + dmean / n + centred * (2.0 * dvar / n)
  return dx.reshape(x.shape), dy_centred * inv, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm2d`` (momentum 0.1, eps 1e-5) for NHWC inputs.

  Training normalises with the *biased* variance of the batch (as PyTorch),
  but the running variance is updated with the *unbiased* estimate
  ``var * n / (n - 1)``, n = N*H*W, exactly as PyTorch does; ``flax.linen.
  BatchNorm`` would store the biased one. ``momentum`` is the weight of the
  old running value (Flax convention): PyTorch's 0.1 is 0.9 here.

  Statistics are reduced over every axis but the last, over whatever batch
  the module is given; under ``jit`` with a sharded batch that is the global
  batch, so no ``axis_name`` is needed. They are computed in float32 whatever
  the computation ``dtype``; the output is cast to ``dtype``.
  Variables: params ``scale``, ``bias``; batch_stats ``mean``, ``var``.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

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
      y, mean, var = batch_norm_train(x32, scale, bias, self.epsilon)
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


def _window_corners(x: jax.Array):
  """The four positions of every 2x2 window, in row-major window order."""
  return (x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2],
          x[:, 1::2, 1::2])


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.max_pool(x, (2, 2), strides=(2, 2))`` for NHWC ``x`` with even H, W.

  Same values, and the same gradient: all of it to the first maximum of each
  window in row-major order, as XLA's select-and-scatter (and PyTorch) give
  it. Written with strided slices because XLA:CPU expanded the
  select-and-scatter of the generic pool into gathers and scatters over
  index arrays, ~200 ms per 32x32x64 layer at batch 128.
  """
  a, b, c, d = _window_corners(x)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_2x2_fwd(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _max_pool_2x2_bwd(residuals, g):
  x, y = residuals
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for corner in _window_corners(x):
    wins = (corner == y) & ~taken
    parts.append(jnp.where(wins, g, jnp.zeros_like(g)))
    taken = taken | wins
  n, h, w, c = y.shape
  # (corner row, corner column) back between the window rows and columns.
  grad = jnp.stack(parts, axis=3).reshape(n, h, w, 2, 2, c)
  grad = grad.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)
  return (grad,)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)
