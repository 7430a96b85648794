"""Construction-time argument checks with messages that name the argument.

Only values known at construction are checked: a Python or NumPy number, or a
concrete (not traced) JAX array. Schedules and traced arrays (inside `jax.jit`
or `jax.vmap`, e.g. under `optax.inject_hyperparams`) cannot be checked up
front and pass through unchecked.
"""

from typing import Any, Optional

import jax
import numpy as np


def concrete_values(value: Any) -> Optional[np.ndarray]:
  """Returns `value` as a float64 NumPy array if it is known now, else None."""
  if callable(value) or isinstance(value, (jax.core.Tracer, str, bytes)):
    return None
  try:
    return np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    return None


def check_range(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float,
    high: Optional[float] = None,
    high_inclusive: bool = True,
    schedule_allowed: bool = False,
) -> None:
  """Raises ValueError unless every known value lies in [low, high] (or [low, high))."""
  if callable(value) and not schedule_allowed:
    raise ValueError(
        f'{owner}: {name}={value!r} is a callable; {name} must be a number '
        '(schedules are not supported for it).')
  values = concrete_values(value)
  if values is None:
    if not callable(value) and not isinstance(value, jax.core.Tracer):
      raise ValueError(
          f'{owner}: {name}={value!r} is not a number; allowed: '
          f'{_describe(name, low, high, high_inclusive, schedule_allowed)}.')
    return
  upper_ok = (values <= high if high_inclusive else values < high
              ) if high is not None else np.ones_like(values, dtype=bool)
  # NaN fails both comparisons and is rejected too.
  if not np.all((values >= low) & upper_ok):
    shown = value if np.ndim(value) == 0 else np.asarray(value).tolist()
    raise ValueError(
        f'{owner}: {name}={shown!r} is out of range; allowed: '
        f'{_describe(name, low, high, high_inclusive, schedule_allowed)}.')


def _describe(name, low, high, high_inclusive, schedule_allowed) -> str:
  if high is None:
    text = f'{name} >= {low:g}'
  else:
    text = f'{low:g} <= {name} {"<=" if high_inclusive else "<"} {high:g}'
  if schedule_allowed:
    text += ' (a number, or an optax schedule whose values are not checked)'
  return text


# The allowed range of each numeric hyperparameter of padax's optimizers.
HYPERPARAMETER_RANGES = {
    'learning_rate': dict(low=0.0, schedule_allowed=True),
    'p': dict(low=0.0, high=0.5, schedule_allowed=True),
    'b1': dict(low=0.0, high=1.0, high_inclusive=False),
    'b2': dict(low=0.0, high=1.0, high_inclusive=False),
    'eps': dict(low=0.0),
    'weight_decay': dict(low=0.0),
}


def check_hyperparameters(owner: str, **values: Any) -> None:
  """Checks padax hyperparameters by name (see `HYPERPARAMETER_RANGES`).

  Public as `padax.check_hyperparameters`, so that code building padax from a
  config (or checking an optax optimizer's b1, b2, eps the same way) states no
  range of its own. Raises ValueError naming `owner`, the argument, the value
  and the allowed range; TypeError for a name padax does not know.
  """
  for name, value in values.items():
    if name not in HYPERPARAMETER_RANGES:
      raise TypeError(f'check_hyperparameters: unknown hyperparameter '
                      f'{name!r}; known: {", ".join(HYPERPARAMETER_RANGES)}.')
    check_range(owner, name, value, **HYPERPARAMETER_RANGES[name])


def check_choice(owner: str, name: str, value: Any, allowed) -> None:
  if value not in allowed:
    choices = ', '.join(repr(a) for a in allowed)
    raise ValueError(
        f'{owner}: {name}={value!r} is not known; allowed: {choices}.')


def check_bool(owner: str, name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(
        f'{owner}: {name}={value!r} must be a bool (True or False).')
