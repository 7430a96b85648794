"""padax against the independent float64 NumPy transcription (issue 2, point 1).

Error measure: normwise relative error per step and leaf,
max|actual - expected| / max|expected|, worst over 100 steps and all leaves.
"""

import itertools

import jax
import jax.numpy as jnp
import optax
import pytest

import padax
from tests import optimizer_runner
from tests import padam_reference

NUM_STEPS = 100
# The paper's p values, the end points, and two p that take the other code
# paths: 3/16 (a product of square roots) and 0.3 (jnp.power).
P_VALUES = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 16, 0.3)
CONFIGS = list(itertools.product(padax.FORMULATIONS, (True, False), (0.0, 5e-4)))


def _config_id(config):
  formulation, amsgrad, wd = config
  return f'{formulation}-amsgrad{int(amsgrad)}-wd{wd:g}'


def _errors(p_values, config, seed, dtype):
  """Worst relative error of padax vs numpy for each p, one compile for all."""
  formulation, amsgrad, wd = config
  params, grads = padam_reference.random_problem(seed, NUM_STEPS)
  optimizers = [padax.padam(0.1, p=p, weight_decay=wd, amsgrad=amsgrad,
                            formulation=formulation) for p in p_values]
  actual = optimizer_runner.run_many(optimizers, params, grads, dtype)
  return {
      p: padam_reference.max_relative_error(a, padam_reference.padam_updates(
          params, grads, lr=0.1, p=p, weight_decay=wd, amsgrad=amsgrad,
          formulation=formulation))
      for p, a in zip(p_values, actual)}


@pytest.mark.parametrize('config', CONFIGS, ids=_config_id)
def test_matches_numpy_float32(config):
  errors = _errors(P_VALUES, config, seed=0, dtype=jnp.float32)
  assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize('config', CONFIGS, ids=_config_id)
def test_matches_numpy_float64(config):
  with optimizer_runner.enable_x64(True):
    errors = _errors(P_VALUES, config, seed=1, dtype=jnp.float64)
  assert max(errors.values()) <= 1e-12, errors


@pytest.mark.parametrize('formulation', padax.FORMULATIONS)
def test_traced_p_matches_numpy(formulation):
  """p injected as a traced array takes the run-time dispatch: same numbers."""
  p_values = (0.0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 0.3)
  params, grads = padam_reference.random_problem(2, 30)
  inject = optax.inject_hyperparams(
      padax.padam, static_args=('b1', 'b2', 'eps', 'weight_decay'))
  actual = optimizer_runner.run_many(
      [inject(learning_rate=0.1, p=p, formulation=formulation)
       for p in p_values], params, grads)
  errors = {p: padam_reference.max_relative_error(
      a, padam_reference.padam_updates(params, grads, lr=0.1, p=p,
                                       formulation=formulation))
            for p, a in zip(p_values, actual)}
  assert max(errors.values()) <= 1e-5, errors


def test_padamw_matches_numpy():
  params, grads = padam_reference.random_problem(3, 50)
  actual = optimizer_runner.run_many(
      [padax.padamw(0.05, p=0.125, weight_decay=1e-2, formulation=f)
       for f in padax.FORMULATIONS], params, grads)
  for formulation, a in zip(padax.FORMULATIONS, actual):
    expected = padam_reference.padam_updates(
        params, grads, lr=0.05, p=0.125, weight_decay=1e-2,
        formulation=formulation, decoupled=True)
    assert padam_reference.max_relative_error(a, expected) <= 1e-5, formulation


def test_reference_formulations_really_differ():
  """Guards the tests above: the three formulations give different numbers."""
  params, grads = padam_reference.random_problem(0, 20)
  runs = {f: padam_reference.padam_updates(params, grads, lr=0.1, p=0.125,
                                           formulation=f)
          for f in padax.FORMULATIONS}
  for a, b in itertools.combinations(padax.FORMULATIONS, 2):
    assert padam_reference.max_relative_error(runs[a], runs[b]) > 1e-3
