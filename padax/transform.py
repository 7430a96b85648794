"""`scale_by_partial_adaptive`: Padam's rescaling as an Optax transformation."""

import math
from typing import NamedTuple, Optional

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
    mu: first moment, EMA of gradients, in ``mu_dtype``.
    nu: second moment, EMA of squared gradients (raw, not bias-corrected),
      in the parameters' dtype.
    nu_max: running maximum of the second moment used by the denominator (of
      the raw ``nu`` for ``'authors'`` and ``'report'``, of the
      bias-corrected ``nu`` for ``'paper'``); None when ``amsgrad=False``.
  """
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  nu_max: Optional[optax.Updates]


def scale_by_partial_adaptive(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    p: optax.ScalarOrSchedule = 0.125,
    amsgrad: bool = True,
    formulation: str = AUTHORS,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by Padam's partially adaptive denominator.

  With gradient :math:`g_t`, step :math:`t = 1, 2, \ldots` and

  .. math::

    m_t = b_1 m_{t-1} + (1 - b_1) g_t, \quad
    v_t = b_2 v_{t-1} + (1 - b_2) g_t^2, \quad
    c_1 = 1 - b_1^t, \quad c_2 = 1 - b_2^t,

  the update (before the learning rate) is, for each ``formulation``:

  * ``'authors'`` (default): the authors' PyTorch code (``Padam.py`` of
    github.com/uclaml/Padam), which produced the paper's numbers.
    :math:`\hat v_t = \max(\hat v_{t-1}, v_t)` over the raw :math:`v`;
    :math:`u_t = (\sqrt{c_2} / c_1)\, m_t / (\sqrt{\hat v_t} + \epsilon)^{2p}`.
    The :math:`\sqrt{c_2}` is applied whatever p is, and eps sits inside the
    power.
  * ``'paper'``: Algorithm 1 of Chen & Gu, as AMSGrad is written in Optax:
    :math:`\hat v_t = \max(\hat v_{t-1}, v_t / c_2)` over the bias-corrected
    :math:`v`; :math:`u_t = (m_t / c_1) / (\hat v_t^{\,p} + \epsilon)`. At
    p = 1/2 this is ``optax.amsgrad``.
  * ``'report'``: the reproducibility report's TensorFlow code:
    :math:`\hat v` over the raw :math:`v`;
    :math:`u_t = (\sqrt{c_2} / c_1)\, m_t / (\hat v_t^{\,p} + \epsilon)`.

  With ``amsgrad=False`` each formulation uses :math:`v_t` (bias-corrected for
  ``'paper'``) in place of the running max. At p = 0 every formulation is SGD
  with momentum up to a factor: ``'authors'`` and ``'report'`` scale early
  steps by :math:`\sqrt{c_2} = c_2^{1/2 - p}` relative to ``'paper'``, an
  implicit warm-up that Algorithm 1 lacks.

  Numerics: :math:`v_t` is computed as ``optax.amsgrad`` and the authors'
  code compute it, except that a gradient whose square would overflow the
  dtype (``|g| > 1.8e19`` in float32, ``> 256`` in float16) enters
  :math:`v_t` as if it were that large. So such a gradient never turns the
  second moment into ``inf``: the parameter keeps moving (with a smaller
  denominator than exact arithmetic would give). (``optax.amsgrad`` squares the
  gradient: one such gradient makes its second moment ``inf`` and that
  parameter's updates 0 forever.) A square that underflows rounds to 0, as
  in optax and the authors' code. A non-finite gradient still poisons the
  state; skip such steps with ``optax.apply_if_finite``. For the paper's p
  values a constant p is computed with square roots rather than
  ``jnp.power``; a traced or scheduled p uses :math:`\exp(p \log v)`.

  Every numeric argument may be a traced scalar, so the transformation works
  under ``optax.inject_hyperparams`` and ``jax.vmap`` over hyperparameters,
  and changing an injected p does not retrace a jitted step.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: non-negative, finite stabiliser; where it enters depends on
      ``formulation``.
    p: partially adaptive exponent in [0, 1/2] (0: SGD with momentum; 1/2:
      AMSGrad), or an optax schedule of the update count returning a scalar,
      evaluated like a learning-rate schedule (at 0 for the first update).
      A schedule's values are not checked.
    amsgrad: keep the running maximum of the second moment (Padam's default).
    formulation: one of ``'authors'``, ``'paper'``, ``'report'`` (above);
      `padax.FORMULATIONS` lists them.
    mu_dtype: floating dtype of the first moment in the state (e.g.
      ``jnp.bfloat16``); None keeps the parameters' dtype. Bias corrections
      are computed in at least float32 whatever this is.

  Returns:
    An ``optax.GradientTransformationExtraArgs``: its ``update`` accepts (and
    ignores) extra keyword arguments, and returns updates in the gradients'
    dtype. ``init`` accepts arrays or ``jax.ShapeDtypeStruct`` leaves of a
    floating dtype, and the state's arrays follow the parameters' shapes,
    dtypes and shardings.

  Raises:
    ValueError: at construction, for a hyperparameter that is not a real
      scalar, not finite or out of range, an unknown formulation or a
      non-floating ``mu_dtype``; the message names the argument, the value and
      what is allowed.
    TypeError: from ``init``, for a parameter of a non-floating dtype
      (integer, bool, complex). Padam is not defined for them; pass such
      leaves through with ``optax.partition`` or ``optax.masked``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import padax
    >>> params = {'w': jnp.array([1.0, -2.0])}
    >>> tx = optax.chain(padax.scale_by_partial_adaptive(p=0.125),
    ...                  optax.scale(-0.1))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.array([1.0, -2.0])}, state)
    >>> [round(float(u), 4) for u in updates['w']]
    [-0.0075, 0.0126]

    At step 1 ``'authors'`` gives
    :math:`\sqrt{c_2}/c_1 \cdot m_1 / \sqrt{v_1}^{\,2p}
    = 0.001^{1/2 - p}\, \mathrm{sign}(g)\, |g|^{1-2p}` (eps aside), so for
    g = -2 the update is ``0.1 * 0.001**0.375 * 2**0.75 = 0.0126``.

  References:
    * J. Chen, Q. Gu et al., "Closing the Generalization Gap of Adaptive
      Gradient Methods in Training Deep Neural Networks", arXiv:1806.06763.
    * The authors' code: https://github.com/uclaml/Padam (``Padam.py``).
    * The reproducibility report on Padam, arXiv:1901.09878 (its TensorFlow
      code is the ``'report'`` formulation).
  """
  owner = 'scale_by_partial_adaptive'
  _checks.check_hyperparameters(owner, b1=b1, b2=b2, eps=eps, p=p)
  _checks.check_bool(owner, 'amsgrad', amsgrad)
  _checks.check_choice(owner, 'formulation', formulation, FORMULATIONS)
  mu_dtype = _checks.check_float_dtype(owner, 'mu_dtype', mu_dtype)
  if callable(p):
    p = _checks.checked_schedule(owner, 'p', p)

  def init_fn(params):
    _checks.check_float_params(owner, params)
    mu = jax.tree.map(
        lambda t: jnp.zeros_like(t, dtype=mu_dtype or t.dtype), params)
    nu = jax.tree.map(jnp.zeros_like, params)
    nu_max = jax.tree.map(jnp.zeros_like, params) if amsgrad else None
    return ScaleByPartialAdaptiveState(
        count=jnp.zeros([], jnp.int32), mu=mu, nu=nu, nu_max=nu_max)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    p_t = p(state.count) if callable(p) else p
    count_inc = optax.safe_increment(state.count)
    # Bias corrections in at least float32: b**t rounds to 1 in bfloat16.
    scalar_dtype = jnp.promote_types(
        jnp.float32, optax.tree.dtype(updates, 'highest'))
    t = count_inc.astype(scalar_dtype)
    bc1 = _bias_correction(b1, t)
    bc2 = _bias_correction(b2, t)

    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = _map(lambda g, v: _second_moment(g, v, b2), updates, state.nu)
    if formulation == PAPER:
      # As optax.amsgrad: divide in the moment's dtype by float32 corrections.
      nu_eff = _map(lambda v: _capped(v / bc2.astype(v.dtype), v), nu)
      numerator = _map(lambda m: m / bc1.astype(m.dtype), mu)
    else:
      nu_eff = nu
      step_factor = jnp.sqrt(bc2) / bc1
      numerator = _map(lambda m: m * step_factor.astype(m.dtype), mu)
    if amsgrad:
      nu_max = _map(jnp.maximum, state.nu_max, nu_eff)
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
    new_updates = _map(lambda g, n, r: (n / denominator(r)).astype(g.dtype),
                       updates, numerator, nu_denominator)
    # The state keeps its dtypes (mu in mu_dtype) so a jitted step never
    # retraces; arithmetic above ran in the promoted dtype.
    cast_like = lambda t, r: t.astype(r.dtype)
    mu = _map(cast_like, mu, state.mu)
    nu = _map(cast_like, nu, state.nu)
    if amsgrad:
      nu_max = _map(cast_like, nu_max, state.nu_max)
    return new_updates, ScaleByPartialAdaptiveState(
        count=count_inc, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _second_moment(g: jax.Array, v: jax.Array, b2) -> jax.Array:
  """b2 v + (1 - b2) g^2 with |g| at most sqrt(largest finite value).

  The expression of optax.tree.update_moment_per_elem_norm, so every
  gradient whose square is finite gives the same bits; a larger one counts
  as that large, so g^2 never overflows to inf.
  """
  limit = jnp.sqrt(jnp.asarray(jnp.finfo(v.dtype).max, v.dtype))
  g = jnp.clip(g, -limit, limit)
  return (1 - b2) * (g ** 2) + b2 * v


def _capped(x: jax.Array, source: jax.Array) -> jax.Array:
  """`x`, at most the dtype's largest finite value where `source` is finite
  (a non-finite `source`, from a non-finite gradient, stays as it is)."""
  largest = jnp.asarray(jnp.finfo(x.dtype).max, x.dtype)
  return jnp.where(jnp.isfinite(source), jnp.minimum(x, largest), x)


def _bias_correction(decay, t: jax.Array) -> jax.Array:
  """1 - decay**t as -expm1(t log decay), in t's dtype.

  For a Python number the log is taken in double precision, as the authors'
  code computes its corrections in Python floats (float32(0.999) is not
  0.999). A JAX array (concrete or traced) is used in t's dtype.
  """
  if isinstance(decay, jax.Array):
    log_decay = jnp.log(jnp.asarray(decay, t.dtype))
  else:
    decay = float(decay)
    log_decay = math.log(decay) if decay > 0 else -math.inf
  return -jnp.expm1(t * jnp.asarray(log_decay, t.dtype))


def _is_none(x) -> bool:
  return x is None


def _map(fn, tree, *rest):
  """jax.tree.map, passing the None leaves of `tree` through."""
  return jax.tree.map(lambda t, *r: None if t is None else fn(t, *r), tree,
                      *rest, is_leaf=_is_none)
