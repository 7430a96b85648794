"""Argument checks with messages that name the argument, the value and what is
allowed; `check_hyperparameters` says what a numeric hyperparameter may be.
"""

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


def concrete_values(value: Any) -> Optional[np.ndarray]:
  """`value` as a float64 NumPy array if it is known now, else None (a
  callable, a string, a traced array, anything that is not numbers)."""
  if callable(value) or isinstance(value, (str, bytes)):
    return None
  try:
    return np.asarray(value, dtype=np.float64)
  # A tracer raises jax.errors' concretization errors, TypeErrors too.
  except (TypeError, ValueError, OverflowError):
    return None


def scalar_problem(value: Any) -> Optional[str]:
  """Why `value` is not a real scalar of an allowed dtype, or None if it is.

  Looks only at the type, shape and dtype, so it works for traced arrays.
  """
  if isinstance(value, bool) or getattr(value, 'dtype', None) == np.bool_:
    return 'is a bool, not a number'
  if isinstance(value, (int, float)):
    return None
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    shape = np.shape(value)
    if shape != ():
      return f'is an array of shape {shape}, not a scalar'
    dtype = np.dtype(value.dtype)
    if jnp.issubdtype(dtype, jnp.floating):
      return None
    # JAX arrays and tracers both carry `weak_type`.
    if (jnp.issubdtype(dtype, jnp.integer) and isinstance(value, jax.Array)
        and getattr(value, 'weak_type', False)):
      return None
    return f'has dtype {dtype.name}, not a floating dtype'
  return 'is not a number'


def check_range(owner: str, name: str, value: Any, *, low: float,
                high: Optional[float] = None, high_inclusive: bool = True,
                schedule_allowed: bool = False) -> None:
  """Raises ValueError unless `value` is a finite real scalar in range.

  The range is [low, high] (or [low, high) with ``high_inclusive=False``;
  no upper bound when `high` is None). A traced array is checked for shape and
  dtype only; a callable is accepted (unchecked) when `schedule_allowed`.
  """
  allowed = _describe(name, low, high, high_inclusive, schedule_allowed)
  if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
    if schedule_allowed:
      return
    raise ValueError(
        f'{owner}: {name}={value!r} is a callable; {name} must be a number '
        f'(schedules are not supported for it); allowed: {allowed}.')
  problem = scalar_problem(value)
  if problem is not None:
    raise ValueError(
        f'{owner}: {name}={_shown(value)} {problem}; allowed: {allowed}.')
  values = concrete_values(value)
  if values is None:  # traced: shape and dtype were checked above
    return
  x = float(values)
  upper_ok = True if high is None else (x <= high if high_inclusive
                                        else x < high)
  # NaN fails both comparisons; inf is refused whatever the bounds.
  if not (math.isfinite(x) and x >= low and upper_ok):
    allowed = _describe(name, low, high, high_inclusive, schedule_allowed,
                        finite=not math.isfinite(x))
    raise ValueError(
        f'{owner}: {name}={_shown(value)} is out of range; allowed: '
        f'{allowed}.')


def _shown(value: Any) -> str:
  """The value as the message shows it: an array's numbers as Python's."""
  if (isinstance(value, (np.ndarray, np.generic, jax.Array))
      and concrete_values(value) is not None):
    return repr(np.asarray(value).tolist())
  return repr(value)


def _describe(name, low, high, high_inclusive, schedule_allowed,
              finite=False) -> str:
  if high is None:
    text = f'{name} >= {low:g}'
  else:
    text = f'{low:g} <= {name} {"<=" if high_inclusive else "<"} {high:g}'
  if finite:
    text += ', finite'
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
  """Checks padax hyperparameters by name against padax's allowed ranges.

  Public as `padax.check_hyperparameters`, so that code building padax from a
  config (or checking an optax optimizer's ``b1``, ``b2``, ``eps`` the same
  way) states no range of its own. The ranges: ``learning_rate >= 0``,
  ``0 <= p <= 1/2`` (both may be optax schedules, whose values are not
  checked), ``0 <= b1 < 1``, ``0 <= b2 < 1``, ``eps >= 0``,
  ``weight_decay >= 0``. Every value must be a real scalar: a Python ``int``
  or ``float``, or a 0-d NumPy or JAX array of a floating dtype (or the
  weakly typed integer array ``optax.inject_hyperparams`` makes of an
  ``int``); bools, strings, lists and larger arrays are refused. A value
  known now must also be finite and in range; the values of a traced array
  (inside ``jax.jit``, ``jax.vmap``) and of a schedule are not checked.

  Args:
    owner: who is checking, the start of the message (e.g. ``'padam'``).
    **values: hyperparameters by name.

  Returns:
    None, when every value is allowed.

  Raises:
    ValueError: ``"{owner}: {name}={value!r} is out of range; allowed: ..."``
      for a value out of range or not finite, and a message of the same shape
      for a value of the wrong kind (a bool, an array, a string).
    TypeError: for a name padax does not know.

  Examples:
    >>> import padax
    >>> padax.check_hyperparameters('config', p=0.125, b1=0.9)
    >>> padax.check_hyperparameters('config', p=0.75)
    Traceback (most recent call last):
    ...
    ValueError: config: p=0.75 is out of range; allowed: 0 <= p <= 0.5 (a number, or an optax schedule whose values are not checked).
    >>> padax.check_hyperparameters('config', eps=float('inf'))
    Traceback (most recent call last):
    ...
    ValueError: config: eps=inf is out of range; allowed: eps >= 0, finite.

  References:
    The range of p, [0, 1/2], is Padam's (arXiv:1806.06763, Algorithm 1: 0 is
    SGD with momentum, 1/2 AMSGrad); the others are Adam's.
  """
  for name, value in values.items():
    if name not in HYPERPARAMETER_RANGES:
      raise TypeError(f'check_hyperparameters: unknown hyperparameter '
                      f'{name!r}; known: {", ".join(HYPERPARAMETER_RANGES)}.')
    check_range(owner, name, value, **HYPERPARAMETER_RANGES[name])


def checked_schedule(owner: str, name: str, schedule: Callable) -> Callable:
  """`schedule`, with its value checked to be a real scalar when traced."""
  def checked(count):
    value = schedule(count)
    problem = scalar_problem(value)
    if problem is not None:
      raise ValueError(
          f'{owner}: the schedule given as {name} returned a value that '
          f'{problem} (shape {np.shape(value)}); allowed: a scalar.')
    return value
  return checked


def check_choice(owner: str, name: str, value: Any, allowed) -> None:
  if value not in allowed:
    choices = ', '.join(repr(a) for a in allowed)
    raise ValueError(
        f'{owner}: {name}={value!r} is not known; allowed: {choices}.')


def check_bool(owner: str, name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(
        f'{owner}: {name}={value!r} must be a bool (True or False).')


def check_float_dtype(owner: str, name: str, value: Any) -> Optional[np.dtype]:
  """`value` as a floating NumPy dtype (None stays None), else ValueError."""
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f'{owner}: {name}={value!r} is not a floating dtype; allowed: None '
        '(the parameters\' dtype) or a floating dtype such as jnp.bfloat16 '
        'or jnp.float32.')
  return dtype


def check_float_params(owner: str, params: Any) -> None:
  """Refuses parameters of a non-floating dtype (integer, bool, complex):
  an integer parameter would keep integer moments and round every update."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = getattr(leaf, 'dtype', None)
    if dtype is None:
      dtype = np.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f'{owner}: the parameter at {jax.tree_util.keystr(path) or "the root"}'
          f' has dtype {np.dtype(dtype).name}; Padam needs floating-point '
          'parameters. Pass such leaves through with optax.partition (and '
          'optax.set_to_zero()) or optax.masked.')
