"""`padam` and `padamw`: Padam with the learning rate and weight decay."""

from typing import Any, Callable, Optional, Union

import jax
import numpy as np
import optax

from padax import _checks
from padax import transform

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def padam(
    learning_rate: optax.ScalarOrSchedule,
    p: optax.ScalarOrSchedule = 0.125,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    amsgrad: bool = True,
    formulation: str = transform.AUTHORS,
    mask: MaskOrFn = None,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Padam with coupled L2 weight decay, as the paper's experiments ran it.

  The L2 term is added to the gradient before the moments, as in the
  authors' code (an L2 penalty, not AdamW's decoupled decay: see `padamw`);
  then `scale_by_partial_adaptive`'s rescaling and the learning rate:

  .. math::

    g_t \leftarrow g_t + \lambda\, \theta_{t-1}, \qquad
    \theta_t = \theta_{t-1} - \eta_t\, u_t(g_1, \ldots, g_t),

  with :math:`u_t` the formulation's update (``'authors'`` by default:
  :math:`(\sqrt{c_2}/c_1)\, m_t / (\sqrt{\hat v_t} + \epsilon)^{2p}`), the
  weight decay :math:`\lambda` and the learning rate :math:`\eta_t`. The
  report's decaying p (1/4, halved every 50 epochs) is
  ``optax.exponential_decay(0.25, 50 * steps_per_epoch, 0.5,
  staircase=True)`` passed as ``p``.

  Args:
    learning_rate: a non-negative finite scalar or an optax schedule.
    p: partially adaptive exponent in [0, 1/2], or an optax schedule.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: non-negative finite stabiliser (see `scale_by_partial_adaptive`).
    weight_decay: non-negative finite L2 coefficient (may be traced).
    amsgrad: keep the running maximum of the second moment.
    formulation: ``'authors'``, ``'paper'`` or ``'report'``.
    mask: which parameters get weight decay: a pytree of bools, or a function
      of the parameters returning one, as in ``optax.add_decayed_weights``.
    mu_dtype: floating dtype of the first moment; None: the parameters'.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``params`` when weight decay is used.

  Raises:
    ValueError: for a bad argument, naming it, its value and what is allowed.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, padax
    >>> loss = lambda w: jnp.sum((w - 3.0) ** 2)
    >>> params = jnp.zeros(2)
    >>> optimizer = padax.padam(learning_rate=0.1, p=0.125)
    >>> state = optimizer.init(params)
    >>> for _ in range(300):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = optimizer.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(jnp.allclose(params, 3.0, atol=0.05))
    True

  References:
    * Chen & Gu et al., arXiv:1806.06763 (Padam; its experiments' weight
      decay is this coupled L2 term).
    * github.com/uclaml/Padam, the authors' code; arXiv:1901.09878, the
      reproducibility report.
  """
  _checks.check_hyperparameters(
      'padam', learning_rate=learning_rate, p=p, b1=b1, b2=b2, eps=eps,
      weight_decay=weight_decay)
  return optax.chain(
      *_decay(weight_decay, mask),
      transform.scale_by_partial_adaptive(
          b1=b1, b2=b2, eps=eps, p=p, amsgrad=amsgrad,
          formulation=formulation, mu_dtype=mu_dtype),
      _learning_rate('padam', learning_rate),
  )


def padamw(
    learning_rate: optax.ScalarOrSchedule,
    p: optax.ScalarOrSchedule = 0.125,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 1e-4,
    amsgrad: bool = True,
    formulation: str = transform.AUTHORS,
    mask: MaskOrFn = None,
    mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Padam with decoupled weight decay, applied after the scaling (AdamW's).

  .. math::

    \theta_t = \theta_{t-1} - \eta_t\, (u_t + \lambda\, \theta_{t-1}),

  with :math:`u_t` from `scale_by_partial_adaptive` on the raw gradients, so
  the decay is scaled by the learning rate (and its schedule) but not by the
  adaptive denominator, as in ``optax.adamw``. The default weight decay,
  1e-4, is ``optax.adamw``'s.

  Args:
    learning_rate: a non-negative finite scalar or an optax schedule.
    p: partially adaptive exponent in [0, 1/2], or an optax schedule.
    b1, b2, eps, amsgrad, formulation, mu_dtype: as in `padam`.
    weight_decay: non-negative finite decoupled decay (may be traced).
    mask: which parameters are decayed (a pytree of bools or a function of
      the parameters returning one), as in ``optax.add_decayed_weights``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes the
    ``params`` (the decay needs them).

  Raises:
    ValueError: as `padam`, for a bad argument.

  Examples:
    With zero gradients only the decay acts: each step multiplies the
    parameters by ``1 - learning_rate * weight_decay``.

    >>> import jax.numpy as jnp, optax, padax
    >>> optimizer = padax.padamw(learning_rate=0.1, weight_decay=0.5)
    >>> params = jnp.array([2.0])
    >>> state = optimizer.init(params)
    >>> updates, state = optimizer.update(jnp.zeros(1), state, params)
    >>> optax.apply_updates(params, updates).tolist()
    [1.899999976158142]

  References:
    * Padam: arXiv:1806.06763; code: github.com/uclaml/Padam; report:
      arXiv:1901.09878.
    * Decoupled weight decay: Loshchilov & Hutter, arXiv:1711.05101.
  """
  _checks.check_hyperparameters(
      'padamw', learning_rate=learning_rate, p=p, b1=b1, b2=b2, eps=eps,
      weight_decay=weight_decay)
  return optax.chain(
      transform.scale_by_partial_adaptive(
          b1=b1, b2=b2, eps=eps, p=p, amsgrad=amsgrad,
          formulation=formulation, mu_dtype=mu_dtype),
      *_decay(weight_decay, mask),
      _learning_rate('padamw', learning_rate),
  )


def _learning_rate(owner, learning_rate) -> optax.GradientTransformation:
  if callable(learning_rate):
    learning_rate = _checks.checked_schedule(owner, 'learning_rate',
                                             learning_rate)
  return optax.scale_by_learning_rate(learning_rate)


def _decay(weight_decay, mask) -> tuple:
  # Only a literal zero is skipped: an array (e.g. under inject_hyperparams)
  # keeps the chain's structure the same in init and in a traced update.
  if isinstance(weight_decay, (int, float, np.number)) and weight_decay == 0:
    return ()
  return (optax.add_decayed_weights(weight_decay, mask),)
