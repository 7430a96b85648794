"""`scale_by_partial_adaptive`: Padam's rescaling as an Optax transformation."""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from padax import _checks
from padax import _power

# The three published formulations of Padam; see `scale_by_partial_adaptive`.
AUTHORS = 'authors'
PAPER = 'paper'
REPORT = 'report'
FORMULATIONS = (AUTHORS, PAPER, REPORT)


class ScaleByPartialAdaptiveState(NamedTuple):
  """State of `scale_by_partial_adaptive`.

  Attributes:
    count: number of updates applied so far (int32).
    mu: first moment, EMA of gradients, in `mu_dtype`.
    nu: second moment, EMA of squared gradients (raw, not bias-corrected).
    nu_max: running maximum of the second moment used by the denominator (of
      the raw `nu` for 'authors' and 'report', of the bias-corrected `nu` for
      'paper'); None when `amsgrad=False`.
  """
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  nu_max: Optional[optax.Updates]


def scale_by_partial_adaptive(
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    p: Any = 0.125,
    amsgrad: bool = True,
    formulation: str = AUTHORS,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by Padam's partially adaptive denominator.

  With gradient g, step t = 1, 2, ... and
  m_t = b1 m_{t-1} + (1 - b1) g,  v_t = b2 v_{t-1} + (1 - b2) g^2,
  bc1 = 1 - b1^t,  bc2 = 1 - b2^t, the update (before the learning rate) is:

  * ``'authors'`` (default): the authors' PyTorch code (github uclaml/Padam,
    ``Padam.py``), which produced the paper's numbers.
    vmax_t = max(vmax_{t-1}, v_t) over the raw v;
    u = (sqrt(bc2) / bc1) * m_t / (sqrt(vmax_t) + eps)^(2p).
    The sqrt(bc2) is applied whatever p is, and eps sits inside the power.
  * ``'paper'``: Algorithm 1 of Chen & Gu (arXiv 1806.06763), as AMSGrad is
    written in Optax: vmax_t = max(vmax_{t-1}, v_t / bc2) over the
    bias-corrected v; u = (m_t / bc1) / (vmax_t^p + eps). At p = 1/2 this is
    exactly ``optax.amsgrad``.
  * ``'report'``: the reproducibility report's TensorFlow code (arXiv
    1901.09878): vmax over the raw v;
    u = (sqrt(bc2) / bc1) * m_t / (vmax_t^p + eps).

  With ``amsgrad=False`` each formulation uses v_t (bias-corrected for
  'paper') in place of the running max. At p = 0 every formulation is SGD with
  momentum, up to a factor: 'authors' and 'report' scale early steps by
  sqrt(bc2) = bc2^(1/2 - p), an implicit warm-up that 'paper' lacks.

  Every numeric argument may be a traced array, so the transformation works
  under ``optax.inject_hyperparams`` and ``jax.vmap`` over hyperparameters.
  For the paper's p values a constant p is computed with square roots rather
  than ``jnp.power``, which on a CPU is about 3x faster; a traced or scheduled
  p uses exp(e log x), about 1.5x faster than ``jnp.power``.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: non-negative stabiliser; where it enters depends on `formulation`.
    p: partially adaptive exponent in [0, 1/2] (0: SGD with momentum; 1/2:
      AMSGrad), or an optax schedule of the update count, evaluated like a
      learning-rate schedule (at 0 for the first update). A schedule's values
      are not checked.
    amsgrad: keep the running maximum of the second moment (Padam's default).
    formulation: one of ``'authors'``, ``'paper'``, ``'report'`` (above).
    mu_dtype: dtype of the first moment in the state (e.g. ``jnp.bfloat16``);
      None keeps the dtype of the parameters. Bias corrections are computed in
      at least float32 whatever this is.

  Returns:
    An ``optax.GradientTransformation``.

  Raises:
    ValueError: for an argument out of range, naming the argument, the value
      and the allowed range.
  """
  owner = 'scale_by_partial_adaptive'
  _checks.check_hyperparameters(owner, b1=b1, b2=b2, eps=eps, p=p)
  _checks.check_bool(owner, 'amsgrad', amsgrad)
  _checks.check_choice(owner, 'formulation', formulation, FORMULATIONS)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    mu = jax.tree.map(
        lambda t: jnp.zeros_like(t, dtype=mu_dtype or t.dtype), params)
    nu = jax.tree.map(jnp.zeros_like, params)
    nu_max = jax.tree.map(jnp.zeros_like, params) if amsgrad else None
    return ScaleByPartialAdaptiveState(
        count=jnp.zeros([], jnp.int32), mu=mu, nu=nu, nu_max=nu_max)

  def update_fn(updates, state, params=None):
    del params
    p_t = p(state.count) if callable(p) else p
    count_inc = optax.safe_increment(state.count)
    # Bias corrections in at least float32: b**t rounds to 1 in bfloat16.
    scalar_dtype = jnp.promote_types(
        jnp.float32, optax.tree.dtype(updates, 'highest'))
    t = count_inc.astype(scalar_dtype)
    bc1 = _bias_correction(b1, t)
    bc2 = _bias_correction(b2, t)

    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    if formulation == PAPER:
      # As optax.amsgrad: divide in the moment's dtype by float32 corrections.
      nu_eff = _map(lambda v: v / bc2.astype(v.dtype), nu)
      numerator = _map(lambda m: m / bc1.astype(m.dtype), mu)
    else:
      nu_eff = nu
      step_factor = jnp.sqrt(bc2) / bc1
      numerator = _map(lambda m: m * step_factor.astype(m.dtype), mu)
    if amsgrad:
      nu_max = jax.tree.map(
          lambda a, b: None if a is None else jnp.maximum(a, b),
          state.nu_max, nu_eff, is_leaf=_is_none)
      nu_denominator = nu_max
    else:
      nu_max = None
      nu_denominator = nu_eff

    eps_ = lambda v: jnp.asarray(eps, v.dtype)
    if formulation == AUTHORS:
      # (sqrt(v) + eps)^(2p): eps inside the power, as in the authors' code.
      denominator = lambda v: _power.power(jnp.sqrt(v) + eps_(v), 2 * p_t)
    else:
      denominator = lambda v: _power.power(v, p_t) + eps_(v)
    new_updates = jax.tree.map(
        lambda n, v: None if n is None else n / denominator(v),
        numerator, nu_denominator, is_leaf=_is_none)
    # The state keeps its dtypes (mu in mu_dtype) so a jitted step never
    # retraces; arithmetic above ran in the promoted dtype.
    mu = _cast_like(mu, state.mu)
    nu = _cast_like(nu, state.nu)
    if amsgrad:
      nu_max = _cast_like(nu_max, state.nu_max)
    return new_updates, ScaleByPartialAdaptiveState(
        count=count_inc, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


def _bias_correction(decay, t: jax.Array) -> jax.Array:
  """1 - decay**t as -expm1(t log decay), in t's dtype.

  For a Python number the log is taken in double precision, as the authors'
  code computes its corrections in Python floats: 1 - b2**t from a float32 b2
  is off by 1.3e-5 (relative) at t = 1 for b2 = 0.999, since float32(0.999)
  itself is. A traced decay is used as given.
  """
  values = _checks.concrete_values(decay)
  if values is not None and not isinstance(decay, jax.Array):
    log_decay = math.log(float(decay)) if float(decay) > 0 else -math.inf
  else:
    log_decay = jnp.log(jnp.asarray(decay, t.dtype))
  return -jnp.expm1(t * jnp.asarray(log_decay, t.dtype))


def _is_none(x) -> bool:
  return x is None


def _map(fn, tree):
  """jax.tree.map over one tree, passing None leaves through."""
  return jax.tree.map(lambda t: None if t is None else fn(t), tree,
                      is_leaf=_is_none)


def _cast_like(tree, reference):
  return jax.tree.map(
      lambda t, r: None if t is None else t.astype(r.dtype),
      tree, reference, is_leaf=_is_none)
