"""The configured optimizers (training/optimizers.py), against their own rules.

Each optimizer named in a config is built by `create_optimizer` (wrapped in
optax.inject_hyperparams, lr schedule inside); here its updates are checked
against a float64 NumPy transcription of the rule it is meant to follow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from training import configuration
from training import optimizers


def _run(config, grads, params):
  optimizer = optimizers.create_optimizer(config, steps_per_epoch=10)
  params = jax.tree.map(jnp.asarray, params)
  state = optimizer.init(params)
  out = []
  for g in grads:
    updates, state = optimizer.update(jnp.asarray(g), state, params)
    params = params + updates
    out.append(np.asarray(params, np.float64))
  return out


def _lion_reference(grads, params, lr, b1, b2, wd):
  """Lion (arXiv 2302.06675, Algorithm 2), decoupled decay scaled by lr."""
  m = np.zeros_like(params)
  out = []
  for g in grads:
    update = np.sign(b1 * m + (1 - b1) * g) + wd * params
    params = params - lr * update
    m = b2 * m + (1 - b2) * g
    out.append(params.copy())
  return out


def test_lion_from_its_config_defaults_follows_the_lion_rule():
  config = default.set_optimizer(default.get_config(), 'lion')
  configuration.validate(config)
  opt = config.optimizer
  assert (opt.learning_rate, opt.b1, opt.b2, opt.weight_decay) == (
      1e-4, 0.9, 0.99, 0.5)
  rng = np.random.default_rng(0)
  params = rng.normal(size=(5,))
  grads = rng.normal(size=(4, 5))
  got = _run(config, grads, params.astype(np.float32))
  want = _lion_reference(grads, params, opt.learning_rate, opt.b1, opt.b2,
                         opt.weight_decay)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('name', optimizers.OPTIMIZERS)
def test_every_optimizer_has_defaults_that_validate(name):
  config = default.set_optimizer(default.get_config(), name)
  configuration.validate(config)
  assert set(configuration.OPTIMIZER_DEFAULTS[name]) <= {
      'learning_rate', *optimizers.HYPERPARAMETERS[name]}


def test_lion_b1_out_of_range_is_refused_with_padax_range():
  config = default.set_optimizer(default.get_config(), 'lion')
  config.optimizer.b1 = 1.5
  with pytest.raises(ValueError, match=r'optimizer \(lion\): b1=1\.5 is out '
                     r'of range; allowed: 0 <= b1 < 1'):
    configuration.validate(config)
