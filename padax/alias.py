"""`padam` and `padamw`: Padam with the learning rate and weight decay."""

from typing import Any, Callable, Optional, Union

import jax
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
    weight_decay: Optional[jax.typing.ArrayLike] = None,
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
    weight_decay: None (the default: no L2 term), or a non-negative finite
      L2 coefficient (may be traced). Any number, 0 included, puts
      ``optax.add_decayed_weights`` in the chain and its (empty) state in the
      optimizer state, so the state's structure is the same whether the
      value is static or injected by ``optax.inject_hyperparams``; only None
      leaves the term out, as in optax's own optimizers.
    amsgrad: keep the running maximum of the second moment.
    formulation: ``'authors'``, ``'paper'`` or ``'report'``.
    mask: which parameters get weight decay: a pytree of bools, or a function
      of the parameters returning one, as in ``optax.add_decayed_weights``.
    mu_dtype: floating dtype of the first moment; None: the parameters'.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs
    ``params`` when weight decay is used, and refuses, saying what to do, a
    state laid out with the weight-decay term when built without it or the
    reverse (such as a state of padax 0.1.0's ``padam`` with
    ``weight_decay=0``, which left the term out: build with
    ``weight_decay=None`` to resume it).

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
  return _padam_chain('padam', False, learning_rate, p, b1, b2, eps,
                      weight_decay, amsgrad, formulation, mask, mu_dtype)


def padamw(
    learning_rate: optax.ScalarOrSchedule,
    p: optax.ScalarOrSchedule = 0.125,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: Optional[jax.typing.ArrayLike] = 1e-4,
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
    weight_decay: non-negative finite decoupled decay (may be traced), or
      None for no decay term; as in `padam`, any number (0 included) keeps
      the term and its state.
    mask: which parameters are decayed (a pytree of bools or a function of
      the parameters returning one), as in ``optax.add_decayed_weights``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes the
    ``params`` (the decay needs them) and refuses a state of the other
    layout, as `padam`'s.

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
  return _padam_chain('padamw', True, learning_rate, p, b1, b2, eps,
                      weight_decay, amsgrad, formulation, mask, mu_dtype)


def _padam_chain(owner, decoupled, learning_rate, p, b1, b2, eps,
                 weight_decay, amsgrad, formulation, mask, mu_dtype):
  """The chain of `padam` (the weight-decay term before the scaling) or,
  `decoupled`, of `padamw` (after it), then the learning rate."""
  # None (the optional term left out) is not checked.
  given = {} if weight_decay is None else dict(weight_decay=weight_decay)
  _checks.check_hyperparameters(owner, learning_rate=learning_rate, p=p,
                                b1=b1, b2=b2, eps=eps, **given)
  # Whether the term is there must not depend on the value, which
  # inject_hyperparams turns into an array: only None (which it keeps static)
  # leaves it out, as optax's own optimizers do.
  decay = () if weight_decay is None else (
      optax.add_decayed_weights(weight_decay, mask),)
  scale = (transform.scale_by_partial_adaptive(
      b1=b1, b2=b2, eps=eps, p=p, amsgrad=amsgrad, formulation=formulation,
      mu_dtype=mu_dtype),)
  if callable(learning_rate):
    learning_rate = _checks.checked_schedule(owner, 'learning_rate',
                                             learning_rate)
  transforms = (*(scale + decay if decoupled else decay + scale),
                optax.scale_by_learning_rate(learning_rate))
  chained = optax.chain(*transforms)

  def update(updates, state, params=None, **extra_args):
    # A state laid out for the chain with or without the weight-decay term.
    if isinstance(state, tuple) and len(state) != len(transforms):
      raise ValueError(_layout_message(owner, weight_decay, len(state),
                                       len(transforms)))
    return chained.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(chained.init, update)


def _layout_message(owner, weight_decay, got, expected) -> str:
  if weight_decay is not None and got == expected - 1:
    return (
        f'{owner}: weight_decay={weight_decay!r} but the state has {got} '
        f'parts where {expected} are expected: it has no slot for the '
        'weight-decay term, as a state made with weight_decay=None, or with '
        'weight_decay=0 by padax 0.1.0 (which left the term out for a '
        f'literal zero). To resume it bit-identically, build {owner} with '
        'weight_decay=None; or start from a fresh init.')
  if weight_decay is None and got == expected + 1:
    return (
        f'{owner}: weight_decay=None but the state has {got} parts where '
        f'{expected} are expected: it was made with a weight-decay term. '
        f'Build {owner} with the weight_decay it was made with (0 included).')
  return (f'{owner}: the state has {got} parts where {expected} are '
          f'expected; it was not made by this {owner} (call init).')
