"""The paper's optimizers built from a config, with lr and p injected.

Wrapped in `optax.inject_hyperparams`, the learning rate (and Padam's p) live
in the optimizer state: logged each epoch, vmapped over by sweeps. Weight
decay follows the authors' code: an L2 term added to the gradient (PyTorch's
`weight_decay`), decoupled for AdamW and Lion.
"""

import collections
import inspect
from typing import Optional

import ml_collections
import numpy as np
import optax

import padax

def _coupled(weight_decay, transformation):
  return optax.chain(optax.add_decayed_weights(weight_decay), transformation)


def sgdm(learning_rate, momentum=0.9, weight_decay=0.0):
  """PyTorch's SGD(momentum, weight_decay, dampening=0)."""
  return _coupled(weight_decay, optax.sgd(learning_rate, momentum=momentum))


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  return _coupled(weight_decay, optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def amsgrad(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  return _coupled(weight_decay,
                  optax.amsgrad(learning_rate, b1=b1, b2=b2, eps=eps))


def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05):
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay)


def padam(learning_rate, p=0.125, b1=0.9, b2=0.999, eps=1e-8,
          weight_decay=0.0, formulation=padax.AUTHORS):
  return padax.padam(learning_rate, p=p, b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay, formulation=formulation)


def lion(learning_rate, b1=0.9, b2=0.99, weight_decay=1e-3):
  """optax.lion: the sign of an interpolated momentum, decoupled decay."""
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


_FACTORIES = dict(sgdm=sgdm, adam=adam, amsgrad=amsgrad, adamw=adamw,
                  padam=padam, lion=lion)
OPTIMIZERS = tuple(_FACTORIES)
# Config keys each optimizer takes besides learning_rate: its factory's
# arguments, e.g. ('momentum', 'weight_decay') for sgdm.
# training/configuration.py keeps the same table, without importing Optax.
HYPERPARAMETERS = {name: tuple(inspect.signature(f).parameters)[1:]
                   for name, f in _FACTORIES.items()}
# Hyperparameters that are not numbers: arguments of the optimizer's
# factory, not arrays of its state.
STATIC_HYPERPARAMETERS = ('formulation',)


def step_schedule(base: float, milestones_epochs, factor: float,
                  steps_per_epoch: int) -> optax.Schedule:
  """`base`, multiplied by `factor` at each milestone epoch, as PyTorch's
  MultiStepLR (a milestone given twice multiplies twice)."""
  counts = collections.Counter(int(e) for e in milestones_epochs)
  return optax.piecewise_constant_schedule(
      base, {e * steps_per_epoch: factor ** n for e, n in counts.items()})


def schedule_shapes(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Multipliers of the peak lr and the initial p, as functions of the step.

  lr: x lr_factor at each milestone epoch. p: constant (None), or (the
  report's proposal) x p_decay_factor every p_decay_every_epochs epochs.
  """
  opt = config.optimizer
  lr_shape = step_schedule(1.0, opt.lr_milestones, opt.lr_factor,
                           steps_per_epoch)
  if not opt.get('p_decay_every_epochs', 0):
    return lr_shape, None
  return lr_shape, optax.exponential_decay(
      1.0, transition_steps=opt.p_decay_every_epochs * steps_per_epoch,
      decay_rate=opt.p_decay_factor, staircase=True)


def injected_values(config: ml_collections.ConfigDict) -> dict:
  """{name: float32 scalar} of the numeric hyperparameters `create_optimizer`
  injects (the peak lr, the initial p, b1, ...), as its init stores them
  (inject_hyperparams casts them to the parameters' dtype: every model's
  parameters are float32).

  Given to a jitted init as an argument (`create_optimizer(..., values)`
  inside it), their values stay out of the compiled program: a run with
  other values loads it from the persistent compilation cache.
  """
  opt = config.optimizer
  return {k: np.asarray(opt[k], np.float32)
          for k in ('learning_rate',) + HYPERPARAMETERS[opt.name]
          if k not in STATIC_HYPERPARAMETERS}


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int,
                     values: Optional[dict] = None
                     ) -> optax.GradientTransformation:
  """The configured optimizer, wrapped in `optax.inject_hyperparams`.

  The injected `learning_rate` and `p` are the peak lr and the initial p,
  which the schedules' shapes multiply inside: each member of a vmapped
  sweep carries its own in its state, all share the shapes. `values`
  ({name: scalar}, e.g. traced `injected_values`) replace the config's
  initial values of those hyperparameters; the update reads them from the
  state, whatever they were.
  """
  name = config.optimizer.name
  if name not in _FACTORIES:
    raise ValueError(f'optimizer.name={name!r} is not known; allowed: '
                     f'{", ".join(OPTIMIZERS)}')
  lr_shape, p_shape = schedule_shapes(config, steps_per_epoch)
  base = _FACTORIES[name]

  def factory(learning_rate, **kwargs):
    if 'p' in kwargs and p_shape is not None:
      p0 = kwargs['p']
      kwargs['p'] = lambda count: p0 * p_shape(count)
    return base(lambda count: learning_rate * lr_shape(count), **kwargs)

  # inject_hyperparams reads the factory's signature: give it base's.
  factory.__signature__ = inspect.signature(base)
  kwargs = {k: config.optimizer[k]
            for k in ('learning_rate',) + HYPERPARAMETERS[name]}
  kwargs.update(values or {})
  static = tuple(k for k in STATIC_HYPERPARAMETERS if k in kwargs)
  return optax.inject_hyperparams(factory, static_args=static)(**kwargs)


def current_hyperparameters(config: ml_collections.ConfigDict,
                            steps_per_epoch: int, opt_state, step) -> dict:
  """lr (and p, for Padam) that the optimizer uses at `step` (0-based)."""
  lr_shape, p_shape = schedule_shapes(config, steps_per_epoch)
  hyper = opt_state.hyperparams
  out = {'learning_rate': hyper['learning_rate'] * lr_shape(step)}
  if 'p' in hyper:
    out['p'] = hyper['p'] * (p_shape(step) if p_shape is not None else 1.0)
  return out
