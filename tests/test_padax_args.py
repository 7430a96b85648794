"""Arguments accepted but wrong (issue 17, item 10) and squares that overflow
(item 11): table-driven, the issue's examples and more of the same class."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import padax
from tests import padam_reference

S = padax.scale_by_partial_adaptive
INF, NAN = float('inf'), float('nan')

# ------------------------------------------------------------------ item 10
# (description, constructor, fragments the ValueError must contain)
REFUSED_AT_CONSTRUCTION = [
    # The issue's examples.
    ('p an array, one value per element',
     lambda: padax.padam(0.1, p=jnp.array([0.1, 0.5])),
     ['padam', 'p=', 'shape (2,), not a scalar', '0 <= p <= 0.5']),
    ('p a list', lambda: padax.padam(0.1, p=[0.1, 0.2]),
     ['p=[0.1, 0.2] is not a number']),
    ('mu_dtype int8', lambda: padax.padam(0.1, mu_dtype='int8'),
     ["mu_dtype='int8' is not a floating dtype", 'jnp.bfloat16']),
    ('eps inf', lambda: padax.padam(0.1, eps=INF),
     ['eps=inf is out of range', 'eps >= 0, finite']),
    ('learning_rate inf', lambda: padax.padam(INF),
     ['learning_rate=inf is out of range']),
    ('weight_decay inf', lambda: padax.padamw(0.1, weight_decay=INF),
     ['padamw', 'weight_decay=inf is out of range']),
    # More of the same class, found here.
    ('b1 an array', lambda: S(b1=np.array([0.9, 0.8])),
     ['b1=', 'shape (2,), not a scalar']),
    ('b2 a 1-element array', lambda: S(b2=jnp.array([0.999])),
     ['b2=', 'shape (1,), not a scalar']),
    ('weight_decay a tuple', lambda: padax.padam(0.1, weight_decay=(1e-4,)),
     ['weight_decay=(0.0001,) is not a number']),
    ('p a bool', lambda: S(p=True), ['p=True is a bool, not a number']),
    ('learning_rate a bool', lambda: padax.padamw(True),
     ['learning_rate=True is a bool']),
    ('eps NaN', lambda: S(eps=NAN), ['eps=nan is out of range']),
    ('learning_rate NaN', lambda: padax.padam(NAN), ['learning_rate=nan']),
    ('weight_decay -inf', lambda: padax.padam(0.1, weight_decay=-INF),
     ['weight_decay=-inf is out of range']),
    ('b1 inf', lambda: S(b1=INF), ['b1=inf is out of range']),
    ('eps an int32 array', lambda: S(eps=np.int32(0)),
     ['eps=0 has dtype int32, not a floating dtype']),
    ('p a complex', lambda: S(p=0.1 + 0j), ['p=(0.1+0j) is not a number']),
    ('mu_dtype bool', lambda: S(mu_dtype=jnp.bool_),
     ['is not a floating dtype']),
    ('mu_dtype complex', lambda: S(mu_dtype=jnp.complex64),
     ['is not a floating dtype']),
    ('mu_dtype not a dtype', lambda: S(mu_dtype='fast'),
     ["mu_dtype='fast' is not a floating dtype"]),
]


@pytest.mark.parametrize('constructor, fragments',
                         [c[1:] for c in REFUSED_AT_CONSTRUCTION],
                         ids=[c[0] for c in REFUSED_AT_CONSTRUCTION])
def test_refused_at_construction(constructor, fragments):
  with pytest.raises(ValueError) as info:
    constructor()
  for fragment in fragments:
    assert fragment in str(info.value), (fragment, str(info.value))


ACCEPTED = [
    ('Python int lr and weight decay', lambda: padax.padam(1, weight_decay=0)),
    ('0-d float32 arrays', lambda: padax.padam(
        jnp.float32(0.1), p=jnp.asarray(0.25), b2=np.float32(0.99))),
    ('bfloat16 scalar p', lambda: S(p=jnp.asarray(0.125, jnp.bfloat16))),
    ('mu_dtype bfloat16 by name', lambda: S(mu_dtype='bfloat16')),
    ('a weakly typed int (what inject_hyperparams makes of 0)',
     lambda: padax.padam(0.1, weight_decay=jnp.asarray(0))),
]


@pytest.mark.parametrize('constructor', [c[1] for c in ACCEPTED],
                         ids=[c[0] for c in ACCEPTED])
def test_accepted(constructor):
  optimizer = constructor()
  params = {'w': jnp.array([1.0, -2.0])}
  updates, _ = optimizer.update(params, optimizer.init(params), params)
  assert np.all(np.isfinite(updates['w'])) and np.all(updates['w'] != 0)


# Values a schedule or inject_hyperparams hands over when traced.
REFUSED_WHEN_TRACED = [
    ('p schedule returning a vector',
     lambda: padax.padam(0.1, p=lambda count: jnp.full((2,), 0.1)),
     'the schedule given as p returned a value that is an array of shape (2,)'),
    ('lr schedule returning a vector',
     lambda: padax.padamw(lambda count: jnp.ones(2) * 0.1),
     'the schedule given as learning_rate returned a value that is an array'),
    ('injected p given as a vector',
     lambda: optax.inject_hyperparams(padax.padam)(0.1, p=jnp.array([0.1, 0.2])),
     'is an array of shape (2,), not a scalar'),
]


@pytest.mark.parametrize('constructor, fragment',
                         [c[1:] for c in REFUSED_WHEN_TRACED],
                         ids=[c[0] for c in REFUSED_WHEN_TRACED])
def test_refused_when_traced(constructor, fragment):
  params = {'w': jnp.array([1.0, -2.0])}
  with pytest.raises(ValueError) as info:
    optimizer = constructor()
    jax.jit(optimizer.update)(params, optimizer.init(params), params)
  assert fragment in str(info.value), str(info.value)


# Integer (and other non-floating) parameters: refused by init, naming the
# leaf. optax's optimizers accept them and round (the issue: params [1, 2]
# became [0, 1]); padax will not train them silently wrong.
NON_FLOAT_PARAMS = [
    ('int32 leaf (the issue)', {'w': jnp.array([1, 2])}, "['w'] has dtype int32"),
    ('int8 leaf in a list', [jnp.ones(2), jnp.array([1], jnp.int8)],
     '[1] has dtype int8'),
    ('bool leaf', {'mask': jnp.array([True])}, "['mask'] has dtype bool"),
    ('complex leaf', {'z': jnp.array([1j])}, "['z'] has dtype complex64"),
    ('integer root', jnp.arange(3), 'the root has dtype int32'),
]


@pytest.mark.parametrize('params, fragment', [c[1:] for c in NON_FLOAT_PARAMS],
                         ids=[c[0] for c in NON_FLOAT_PARAMS])
@pytest.mark.parametrize('factory', (padax.padam, padax.padamw),
                         ids=('padam', 'padamw'))
def test_non_floating_parameters_are_refused(factory, params, fragment):
  with pytest.raises(TypeError) as info:
    factory(0.1).init(params)
  assert fragment in str(info.value) and 'optax.partition' in str(info.value)


def test_integer_leaves_pass_through_with_partition():
  """The way the message points to: integer leaves get no update at all."""
  params = {'w': jnp.array([1.0, 2.0]), 'step': jnp.array([1, 2])}
  optimizer = optax.partition(
      {'float': padax.padam(0.1), 'int': optax.set_to_zero()},
      {'w': 'float', 'step': 'int'})
  state = optimizer.init(params)
  grads = {'w': jnp.array([0.5, -0.5]), 'step': jnp.zeros(2, jnp.int32)}
  updates, _ = optimizer.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new['step'], [1, 2])
  assert new['step'].dtype == jnp.int32
  assert np.all(new['w'] != params['w'])


# ------------------------------------------------------------------ item 11
# A finite gradient whose square overflows the dtype: padax clips it where it
# enters the second moment, so the moment stays finite and the parameter is
# not frozen (optax.amsgrad: v = inf, updates 0 forever). Each case: one such
# gradient at step 1 in element 0, then 100 ordinary steps; element 0 must
# stay finite and keep moving, and the other elements must follow the
# float64 NumPy transcription (the bad element does not disturb them).
# (description, dtype, bad gradient, padam kwargs, tolerance)
OVERFLOW_CASES = [
    ('float32 1e20 (the issue), authors', jnp.float32, 1e20, {}, 2e-5),
    ('float32 1e20, paper', jnp.float32, 1e20, dict(formulation='paper'),
     2e-5),
    ('float32 -3e38 near the largest float, report', jnp.float32, -3e38,
     dict(formulation='report'), 2e-5),
    ('float32 1e20 without amsgrad', jnp.float32, 1e20,
     dict(amsgrad=False), 2e-5),
    ('float16 300 (300**2 > 65504), authors', jnp.float16, 300.0, {}, 1e-2),
    ('bfloat16 1e20', jnp.bfloat16, 1e20, dict(p=0.25), 5e-2),
]


@pytest.mark.parametrize('dtype, bad, kwargs, rtol',
                         [c[1:] for c in OVERFLOW_CASES],
                         ids=[c[0] for c in OVERFLOW_CASES])
def test_gradient_whose_square_is_not_representable(dtype, bad, kwargs, rtol):
  rng = np.random.default_rng(0)
  steps = 101
  grads64 = rng.normal(size=(steps, 4)).astype(np.float32).astype(np.float64)
  grads64[0, 0] = bad
  as_dtype = lambda x: np.asarray(jnp.asarray(x, dtype), np.float64)
  grads64 = as_dtype(grads64)  # what the optimizer really sees
  params = jnp.zeros(4, dtype)
  optimizer = padax.padam(0.1, **kwargs)

  def step(carry, g):
    x, state = carry
    updates, state = optimizer.update(g, state, x)
    return (optax.apply_updates(x, updates), state), updates
  (_, state), updates = jax.jit(lambda: jax.lax.scan(
      step, (params, optimizer.init(params)), jnp.asarray(grads64, dtype)))()
  inner = state[0]
  for moment in (inner.nu, inner.nu_max):
    if moment is not None:
      assert np.all(np.isfinite(np.asarray(moment, np.float64)))
  updates = np.asarray(updates, np.float64)
  assert np.all(np.isfinite(updates))
  # Element 0 still moves after the bad step: not frozen.
  assert np.all(updates[1:, 0] != 0)
  expected = padam_reference.padam_updates(
      [np.zeros(4)], [[g] for g in grads64], lr=0.1, p=kwargs.get('p', 0.125),
      amsgrad=kwargs.get('amsgrad', True),
      formulation=kwargs.get('formulation', 'authors'))
  expected = np.array([e[0] for e in expected])
  # The other elements, relative to each one's largest update.
  for i in range(1, 4):
    scale = np.max(np.abs(expected[:, i]))
    err = np.max(np.abs(updates[:, i] - expected[:, i])) / scale
    assert err <= rtol, (i, err)


def test_optax_amsgrad_freezes_on_the_same_gradient():
  """The issue's observation, kept as the contrast padax's docstring names:
  optax.amsgrad's second moment becomes inf and the element stops moving."""
  optimizer = optax.amsgrad(0.1)
  params = jnp.zeros(2)
  state = optimizer.init(params)
  updates, state = optimizer.update(jnp.array([1e20, 1.0]), state, params)
  for _ in range(5):
    updates, state = optimizer.update(jnp.array([1.0, 1.0]), state, params)
  assert float(updates[0]) == 0.0 and float(updates[1]) != 0.0
