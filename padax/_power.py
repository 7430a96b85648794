"""Elementwise fractional powers x**e for x >= 0, e in [0, 1], fast for Padam.

`jnp.power` with a non-integer exponent is slow on a CPU. Padam's exponents
are dyadic (p = j / 2**k), and for those x**e is a product of repeated square
roots, each correctly rounded: faster and more accurate. A constant exponent
picks that path at trace time. A traced exponent (`optax.inject_hyperparams`,
a p schedule, `jax.vmap` over p) uses exp(e * log(x)), cheaper than
`jnp.power` and without control flow (a conditional choice of path broke
XLA:CPU's fusion), so vmapping over p costs nothing extra.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Deepest chain of square roots used for a constant exponent e = j / 2**k.
MAX_SQRT_DEPTH = 6


def dyadic_bits(e: float):
  """The i >= 1 with e == sum(2**-i), or None if e is not j / 2**MAX_SQRT_DEPTH."""
  if not 0.0 <= e < 1.0:
    return None
  scaled = e * 2**MAX_SQRT_DEPTH
  if scaled != np.floor(scaled):
    return None
  numerator = int(scaled)
  return tuple(i for i in range(1, MAX_SQRT_DEPTH + 1)
               if numerator & (1 << (MAX_SQRT_DEPTH - i)))


def power(x: jax.Array, e) -> jax.Array:
  """x**e elementwise, with 0**0 == 1; e a Python number or a scalar array."""
  # A traced exponent is a jax.Array too (tracers are instances of it).
  if isinstance(e, jax.Array):
    return _exp_log_power(x, e)
  e = float(e)
  if e == 0.0:
    return jnp.ones_like(x)
  if e == 1.0:
    return x
  bits = dyadic_bits(e)
  if bits is None:
    return _exp_log_power(x, e)
  result = None
  root = x
  for i in range(1, max(bits) + 1):
    root = jnp.sqrt(root)
    if i in bits:
      result = root if result is None else result * root
  return result


def _exp_log_power(x, e):
  e = jnp.asarray(e, x.dtype)
  # log(0) = -inf gives 0 for e > 0; e == 0 must give 1, not exp(nan).
  return jnp.where(e == 0, jnp.ones_like(x), jnp.exp(e * jnp.log(x)))
