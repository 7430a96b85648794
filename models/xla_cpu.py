"""The XLA:CPU kernels of the models: faster there, and only used there.

`models.kernels.PER_PLATFORM` (the models' default) picks these in a program
lowered for the CPU. `conv_general_dilated`, `batch_norm_train` and
`max_pool` each have the signature of their plain counterpart and compute the
same values and gradients, up to float rounding (the same sums in another
order; tests/test_kernels.py). Timings behind each choice: docs/benchmarks.md
(benchmarks/cpu_kernels.py).

`batch_norm_train` sums each example in one matmul row whatever the batch
split, so a batch sharded over several CPU devices differs from one device
only in how the N per-example sums are added (tests/test_data_parallel.py).
The plain kernels make no such promise.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# Output maps of at most this many positions (VGG16's 2x2 and 1x1 stages)
# are convolved as one matmul over their patches, where XLA:CPU's own
# convolution is slower.
PATCHES_MATMUL_MAX_POSITIONS = 4


def _is_plain_2d(dimension_numbers, lhs_dilation, rhs_dilation,
                 feature_group_count) -> bool:
  """NHWC input, HWIO kernel, no dilation, no groups: the case we rewrite."""
  nhwc = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1),
                                        ('NHWC', 'HWIO', 'NHWC'))
  return (dimension_numbers == nhwc and feature_group_count == 1 and
          set(lhs_dilation or ()) | set(rhs_dilation or ()) <= {1})


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
def materialized(x: jax.Array, weights: jax.Array) -> jax.Array:
  """``x``, unchanged, but computed into a buffer of its own.

  The weight gradient of a convolution reads its input in another layout.
  XLA:CPU fuses that transpose with the element-wise ops that produced the
  input (BatchNorm, ReLU, residual adds) and computes them again, reading
  each with a stride. XLA does not fuse across a conditional, so passing the
  input through one makes the transpose read it once (XLA:CPU removes an
  ``optimization_barrier`` before fusion). The predicate comes from the
  (replicated) weights, so a batch-sharded ``x`` needs no collective. A
  custom batching rule keeps the conditional under ``vmap`` (sweeps). Never
  for GPUs, where a conditional waits for its predicate on the host.
  """
  return _kept_conditional(x, weights.reshape(-1)[0])


# The identity's gradient; the weights get none.
materialized.defvjp(lambda x, weights: (materialized(x, weights), None),
                    lambda _, cotangent: (cotangent, None))


def conv_general_dilated(lhs, rhs, window_strides, padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1,
                         precision=None):
  """``lax.conv_general_dilated`` (as ``nn.Conv`` calls it), except that a
  plain NHWC convolution with a tiny output map is one matmul of its patches
  with the reshaped kernel (the same sums, in another order), and a larger
  one reads its input from a buffer of its own (`materialized`)."""
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
  lhs = materialized(lhs, rhs)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)


def channel_sums(x: jax.Array) -> jax.Array:
  """Sums of an (N, positions, C) array over its first two axes: one
  matrix-vector product per example (the same whatever the batch split),
  then a sum over the N examples. XLA:CPU splits a plain reduction this
  large into reduce-windows that read the channels with a stride."""
  ones = jnp.ones((x.shape[0], 1, x.shape[1]), x.dtype)
  per_example = jnp.matmul(ones, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.sum(per_example[:, 0], axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """Training-mode batch normalisation of float32 ``x`` (N, ..., C) over
  every axis but the last: ``(y, mean, biased variance)``. The gradient is
  written out (the standard closed form) so that its channel sums are
  `channel_sums` too."""
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _per_example(x):
  """(N, positions, C) view of an (N, ..., C) array, and N * positions."""
  x3 = x.reshape(x.shape[0], -1, x.shape[-1])
  return x3, x3.shape[0] * x3.shape[1]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  x3, n = _per_example(x)
  mean = channel_sums(x3) / n
  centred = x3 - mean
  # Two-pass variance: no cancellation when |mean| >> std.
  var = channel_sums(jnp.square(centred)) / n
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
  dbias = channel_sums(dy3)
  dy_centred = channel_sums(dy3 * centred)
  # Through y (directly and via the batch mean and variance), then through
  # the mean and variance outputs (the running statistics).
  dx = (scale * inv) * (dy3 - dbias / n -
                        centred * (inv * inv * dy_centred / n))
  dx = dx + dmean / n + centred * (2.0 * dvar / n)
  return dx.reshape(x.shape), dy_centred * inv, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def _window_corners(x: jax.Array):
  """The four positions of every 2x2 window, in row-major window order."""
  return (x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2],
          x[:, 1::2, 1::2])


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """``nn.max_pool(x, (2, 2), strides=(2, 2))`` for NHWC ``x`` with even H, W.

  Same values, and the same gradient: all of it to the first maximum of each
  window in row-major order, as XLA's select-and-scatter (and PyTorch) give
  it. Written with strided slices because XLA:CPU expands the
  select-and-scatter of the generic pool into gathers and scatters over
  index arrays.
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


def max_pool(x, window_shape, strides=None, padding='VALID'):
  """``nn.max_pool``, by `max_pool_2x2` where that is the same operation."""
  if (tuple(window_shape) == (2, 2) and strides is not None and
      tuple(strides) == (2, 2) and padding == 'VALID' and x.ndim == 4 and
      x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0):
    return max_pool_2x2(x)
  return nn.max_pool(x, window_shape, strides=strides, padding=padding)
