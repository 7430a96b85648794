"""`padam` and `padamw`: Padam with the learning rate and weight decay."""

from typing import Any, Callable, Optional, Union

import numpy as np
import optax

from padax import _checks
from padax import transform

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def padam(
    learning_rate: optax.ScalarOrSchedule,
    p: optax.ScalarOrSchedule = 0.125,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    weight_decay: Any = 0.0,
    amsgrad: bool = True,
    formulation: str = transform.AUTHORS,
    mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  """Padam (Chen & Gu, arXiv 1806.06763) with coupled L2 weight decay.

  ``weight_decay * params`` is added to the gradient before the moments, as in
  the authors' code and the paper's experiments (an L2 penalty, not AdamW's
  decoupled decay: see `padamw`). Then `scale_by_partial_adaptive` and the
  learning rate. The report's decaying p (start 1/4, halved every 50 epochs)
  is ``optax.exponential_decay(0.25, 50 * steps_per_epoch, 0.5,
  staircase=True)`` passed as `p`.

  Args:
    learning_rate: a non-negative number or an optax schedule.
    p: partially adaptive exponent in [0, 1/2], or an optax schedule.
    b1, b2, eps, amsgrad, formulation, mu_dtype: see
      `scale_by_partial_adaptive`.
    weight_decay: non-negative L2 coefficient (may be traced).
    mask: which parameters get weight decay: a pytree of bools, or a function
      of the parameters returning one, as in ``optax.add_decayed_weights``.

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params`` when
    weight decay is used.
  """
  _check_lr_and_decay('padam', learning_rate, weight_decay)
  return optax.chain(
      *_decay(weight_decay, mask),
      transform.scale_by_partial_adaptive(
          b1=b1, b2=b2, eps=eps, p=p, amsgrad=amsgrad,
          formulation=formulation, mu_dtype=mu_dtype),
      optax.scale_by_learning_rate(learning_rate),
  )


def padamw(
    learning_rate: optax.ScalarOrSchedule,
    p: optax.ScalarOrSchedule = 0.125,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    weight_decay: Any = 1e-4,
    amsgrad: bool = True,
    formulation: str = transform.AUTHORS,
    mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  """Padam with decoupled weight decay, applied after the scaling as ``optax.adamw``.

  The update is ``-learning_rate * (u + weight_decay * params)`` with u from
  `scale_by_partial_adaptive`, so the decay is scaled by the learning rate
  (and its schedule) but not by the adaptive denominator. Arguments as in
  `padam`; the default weight decay, 1e-4, is ``optax.adamw``'s.
  """
  _check_lr_and_decay('padamw', learning_rate, weight_decay)
  return optax.chain(
      transform.scale_by_partial_adaptive(
          b1=b1, b2=b2, eps=eps, p=p, amsgrad=amsgrad,
          formulation=formulation, mu_dtype=mu_dtype),
      *_decay(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def _check_lr_and_decay(owner, learning_rate, weight_decay) -> None:
  _checks.check_hyperparameters(owner, learning_rate=learning_rate,
                                weight_decay=weight_decay)


def _decay(weight_decay, mask) -> tuple:
  # Only a literal zero is skipped: an array (e.g. under inject_hyperparams)
  # keeps the chain's structure the same in init and in a traced update.
  if isinstance(weight_decay, (int, float, np.number)) and weight_decay == 0:
    return ()
  return (optax.add_decayed_weights(weight_decay, mask),)
