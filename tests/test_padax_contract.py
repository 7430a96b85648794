"""Optax's contract for optimizers, as padax tests (issue 15, point 2).

The properties optax checks of its own and contributed optimizers
(optax/contrib/_common_test.py, optax/_src/sharding_test.py), written anew for
padax and parameterized over `padam`, `padamw` and `scale_by_partial_adaptive`
(chained with a fixed learning rate) x the three formulations x p constant,
scheduled, or injected with `optax.inject_hyperparams`.

To stay fast, each property runs every parameterization in ONE jitted program
(cached per module) and each test case reads its own result from it.

Where padax deliberately differs from what optax expects, the test says so:
  * integer parameters are refused by `init` (optax's optimizers keep integer
    moments and round the updates): `test_integer_parameters_are_refused`;
  * injected hyperparameters are cast by `inject_hyperparams` to the
    parameters' dtype, and bfloat16(0.999) == 1.0 makes b2 a no-op decay, so
    the injected variants inject only `learning_rate` and `p` (b1, b2, eps
    stay static): `test_injecting_b2_in_bfloat16_rounds_it_to_one`.
"""

import functools
import inspect
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import padax
from tests import optimizer_runner

from tests.padax_contract_cases import CASES, IDS, OPTIMIZERS, P
from tests.padax_contract_cases import layout, make, padax_state


# ------------------------------------------------------------------ targets
# The four optimization targets of optax's common tests, in float32.


def _parabola():
  final = jnp.array([1.0, -1.0, 1.0])
  return jnp.array([-1.0, 10.0, 1.0]), final, lambda x: jnp.sum((x - final)**2)


def _rosenbrock():
  final = jnp.array([1.0, 1.0])
  return jnp.zeros(2), final, lambda x: ((1.0 - x[0])**2 +
                                         100.0 * (x[1] - x[0]**2)**2)


def _matrix_parabola():
  final = jnp.array([[3.0, -2.0], [1.0, 4.0]])
  return jnp.zeros((2, 2)), final, lambda x: jnp.sum((x - final)**2)


def _mixed_pytree():
  final = {'v': jnp.array([1.0, -1.0, 2.0]),
           'm': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
  start = jax.tree.map(jnp.zeros_like, final)
  loss = lambda x: sum(jnp.sum((x[k] - final[k])**2) for k in final)
  return start, final, loss


TARGETS = {'parabola': _parabola, 'rosenbrock': _rosenbrock,
           'matrix': _matrix_parabola, 'mixed_pytree': _mixed_pytree}


def _descend(optimizer, params, loss, steps, **update_kwargs):
  def step(carry, _):
    x, state = carry
    grads = jax.grad(loss)(x)
    updates, state = optimizer.update(grads, state, x, **update_kwargs)
    return (optax.apply_updates(x, updates), state), None
  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                length=steps)
  return params


@functools.lru_cache(maxsize=None)
def _converged(target):
  start, _, loss = TARGETS[target]()
  return jax.jit(lambda x: {name: _descend(o, x, loss, 2000)
                            for name, o in OPTIMIZERS.items()})(start)


@pytest.mark.parametrize('target', TARGETS)
@pytest.mark.parametrize('name', IDS)
def test_converges(name, target):
  _, final, _ = TARGETS[target]()
  # padamw's default weight decay (1e-4) moves the optimum by ~1e-4 * |x|;
  # the tolerance is optax's.
  for a, b in zip(jax.tree.leaves(_converged(target)[name]),
                  jax.tree.leaves(final)):
    np.testing.assert_allclose(a, b, rtol=3e-2, atol=3e-2)


# ------------------------------------------- extra arguments, recompilation


@functools.lru_cache(maxsize=None)
def _stepped_with_extra_kwargs():
  """Every optimizer, 3 jitted steps on Rosenbrock with an unexpected keyword
  argument, in one jitted function; returns its results and trace count."""
  start, _, loss = _rosenbrock()
  traces = []

  @jax.jit
  def step(xs, states):
    traces.append(1)
    out = {}
    for name, optimizer in OPTIMIZERS.items():
      updates, state = optimizer.update(
          jax.grad(loss)(xs[name]), states[name], xs[name],
          unexpected_extra_args_your_optimizer_doesnt_expect=1)
      out[name] = optax.apply_updates(xs[name], updates), state
    return ({n: o[0] for n, o in out.items()},
            {n: o[1] for n, o in out.items()})

  xs = {name: start for name in OPTIMIZERS}
  states = {name: o.init(start) for name, o in OPTIMIZERS.items()}
  for _ in range(3):
    xs, states = step(xs, states)
  return xs, len(traces)


@pytest.mark.parametrize('name', IDS)
def test_update_accepts_extra_kwargs_without_recompiling(name):
  xs, traces = _stepped_with_extra_kwargs()
  assert traces == 1  # the second and third calls reuse the first trace
  x = xs[name]
  assert np.all(np.isfinite(x)) and not np.array_equal(x, _rosenbrock()[0])


# ------------------------------------------------------------- map_params


@pytest.mark.parametrize('name', IDS)
def test_tree_map_params_maps_only_parameter_shaped_leaves(name):
  optimizer = OPTIMIZERS[name]
  params = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}
  state = optimizer.init(params)
  same = optax.tree.map_params(optimizer, lambda v: v, state)
  assert jax.tree.structure(same) == jax.tree.structure(state)
  sevens = optax.tree.map_params(optimizer, lambda v: jnp.full_like(v, 7.0),
                                 state)
  inner = padax_state(sevens)
  for moment in (inner.mu, inner.nu, inner.nu_max):
    assert all(np.all(np.asarray(v) == 7.0) for v in jax.tree.leaves(moment))
  # The scalars (count, injected hyperparameters) are not parameters.
  assert int(inner.count) == 0
  if hasattr(sevens, 'hyperparams'):
    assert float(sevens.hyperparams['p']) == P


# ------------------------------------------------------------------ dtypes


@functools.lru_cache(maxsize=None)
def _one_step(dtype_name, multi_steps):
  dtype = jnp.dtype(dtype_name)
  params = jnp.array([1.0, 2.0], dtype)
  grads = jax.grad(lambda x: jnp.sum(x**2))(params)

  def run(params, grads):
    out = {}
    for name, o in OPTIMIZERS.items():
      if multi_steps:
        o = optax.MultiSteps(o, every_k_schedule=4)
      out[name] = o.update(grads, o.init(params), params)[0]
    return out
  return jax.jit(run)(params, grads), grads


@pytest.mark.parametrize('dtype', ('bfloat16', 'float32'))
@pytest.mark.parametrize('name', IDS)
def test_updates_keep_the_parameters_dtype(name, dtype):
  updates, _ = _one_step(dtype, False)
  assert updates[name].dtype == jnp.dtype(dtype)
  assert np.all(np.isfinite(np.asarray(updates[name], np.float32)))
  assert np.all(np.asarray(updates[name], np.float32) != 0)


@pytest.mark.parametrize('dtype', ('bfloat16', 'float32'))
@pytest.mark.parametrize('name', IDS)
def test_multi_steps_first_microbatch_gives_zeros_of_the_dtype(name, dtype):
  updates, grads = _one_step(dtype, True)
  assert updates[name].dtype == grads.dtype
  np.testing.assert_array_equal(np.asarray(updates[name], np.float32), 0.0)


@functools.lru_cache(maxsize=None)
def _cond_step_types(dtype_name):
  """Traces (no compile) a step that updates inside lax.cond, for every
  optimizer, twice: the second time on the first's output state."""
  describe = lambda tree: jax.tree.map(
      lambda s: (jnp.shape(s), jnp.result_type(s)), tree)
  with optimizer_runner.enable_x64(dtype_name == 'float64'):
    dtype = jnp.dtype(dtype_name)
    optimizers = {name: make(*case) for name, case in zip(IDS, CASES)}
    final = jnp.array([1.0, -1.0, 1.0], dtype)
    loss = lambda x: jnp.sum((x - final)**2)

    def step(params, states):
      grads = {n: jax.grad(loss)(x) for n, x in params.items()}
      pick = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      out = {}
      for name, o in optimizers.items():
        updates, state = jax.lax.cond(
            pick, lambda o=o, name=name: o.update(grads[name], states[name],
                                                  params[name]),
            lambda name=name: (params[name], states[name]))
        out[name] = optax.apply_updates(params[name], updates), state
      return ({n: v[0] for n, v in out.items()},
              {n: v[1] for n, v in out.items()})

    params = {n: jnp.array([-1.0, 10.0, 1.0], dtype) for n in optimizers}
    states = {n: o.init(params[n]) for n, o in optimizers.items()}
    first = jax.eval_shape(step, params, states)
    second = jax.eval_shape(step, *first)
    return describe(states), describe(first), describe(second)


@pytest.mark.parametrize('dtype', ('float16', 'bfloat16', 'float32', 'float64'))
@pytest.mark.parametrize('name', IDS)
def test_state_dtypes_are_stable_under_lax_cond(name, dtype):
  """lax.cond needs both branches to return the same types, so tracing the
  step decides it; the state's shapes and dtypes never change over steps."""
  init, first, second = _cond_step_types(dtype)
  assert first[0][name] == ((3,), jnp.dtype(dtype))
  assert first[1][name] == init[name]
  assert second[1][name] == init[name] and second[0][name] == first[0][name]


# ------------------------------------------------- schedule == constant lr


@pytest.mark.parametrize('name', [i for i in IDS if 'scale_by' not in i])
def test_constant_learning_rate_schedule_equals_the_constant(name):
  case = CASES[IDS.index(name)]
  start, _, loss = _parabola()
  with_schedule = make(*case, learning_rate=optax.constant_schedule(1e-3))
  with_number = make(*case, learning_rate=1e-3)
  a, b = jax.jit(lambda x: [_descend(o, x, loss, 10)
                            for o in (with_schedule, with_number)])(start)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, start)


@pytest.mark.parametrize('function', (padax.padam, padax.padamw))
def test_learning_rate_and_p_are_annotated_as_schedules(function):
  """optax's common test passes a schedule to any optimizer whose
  learning_rate is annotated ScalarOrSchedule; padax's are, and p too."""
  signature = inspect.signature(function)
  assert signature.parameters['learning_rate'].annotation is (
      optax.ScalarOrSchedule)
  assert signature.parameters['p'].annotation is optax.ScalarOrSchedule
  assert signature.return_annotation is optax.GradientTransformationExtraArgs
  assert isinstance(function(0.1), optax.GradientTransformationExtraArgs)


def test_scale_by_partial_adaptive_returns_extra_args_transformation():
  signature = inspect.signature(padax.scale_by_partial_adaptive)
  assert signature.return_annotation is optax.GradientTransformationExtraArgs
  assert signature.parameters['p'].annotation is optax.ScalarOrSchedule
  assert isinstance(padax.scale_by_partial_adaptive(),
                    optax.GradientTransformationExtraArgs)


# --------------------------------------------------- inject_hyperparams


@pytest.mark.parametrize('name', [i for i in IDS if i.endswith('constant')])
def test_wrapping_in_inject_hyperparams_changes_nothing(name):
  kind, formulation, _ = CASES[IDS.index(name)]
  plain = make(kind, formulation, 'constant')
  injected = make(kind, formulation, 'injected')
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]

  def both(params, grads):
    u1, s1 = plain.update(grads, plain.init(params), params)
    u2, s2 = injected.update(grads, injected.init(params), params)
    return u1, u2, s1, s2.inner_state
  u1, u2, s1, s2 = jax.jit(both)(params, grads)
  assert layout((u1, s1)) == layout((u2, s2))
  for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2))):
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize('dtype', ('float32', 'bfloat16'))
@pytest.mark.parametrize('name', IDS)
def test_state_layout_is_the_same_after_init_jit_init_and_updates(name, dtype):
  """Every state, injected hyperparameters included: the same structure,
  shapes and dtypes from init, a jitted init and two jitted updates."""
  optimizer = OPTIMIZERS[name]
  params = [-jnp.ones((2, 3), dtype), jnp.ones((2, 5, 2), dtype)]
  state = optimizer.init(params)
  step = lambda s: optimizer.update(params, s, params)[1]
  first = jax.eval_shape(step, state)
  assert layout(jax.eval_shape(optimizer.init, params)) == layout(state)
  assert layout(first) == layout(state)
  assert layout(jax.eval_shape(step, first)) == layout(state)


# The chain of each alias, by whether a weight decay is given: the states of
# its parts, as optax.chain lays them out (the learning rate's is empty).
_CHAIN = {
    ('padam', True): (optax.EmptyState, padax.ScaleByPartialAdaptiveState,
                      optax.EmptyState),
    ('padam', False): (padax.ScaleByPartialAdaptiveState, optax.EmptyState),
    ('padamw', True): (padax.ScaleByPartialAdaptiveState, optax.EmptyState,
                       optax.EmptyState),
    ('padamw', False): (padax.ScaleByPartialAdaptiveState, optax.EmptyState),
}
_DECAYS = {'omitted': {}, 'none': {'weight_decay': None},
           'zero': {'weight_decay': 0.0}, 'int_zero': {'weight_decay': 0},
           'nonzero': {'weight_decay': 5e-4}}


@pytest.mark.parametrize('dtype', ('float32', 'bfloat16'))
@pytest.mark.parametrize('decay', _DECAYS)
@pytest.mark.parametrize('kind', ('padam', 'padamw'))
def test_weight_decay_static_or_injected_gives_one_state_layout(
    kind, decay, dtype):
  """optax's contrib test compares inject_hyperparams(f)(**kw)'s inner
  state with f(**kw)'s tree for tree: whether the weight-decay term is in
  the chain depends on whether a value is given, never on the value or on
  its being injected (an array then)."""
  factory = {'padam': padax.padam, 'padamw': padax.padamw}[kind]
  kwargs = dict(learning_rate=0.01, p=0.25, **_DECAYS[decay])
  default = inspect.signature(factory).parameters['weight_decay'].default
  given = kwargs.get('weight_decay', default) is not None
  plain = factory(**kwargs)
  static = optax.inject_hyperparams(
      factory, static_args=('b1', 'b2', 'eps', 'weight_decay'))(**kwargs)
  # b1, b2, eps static: see test_injecting_b2_in_bfloat16_rounds_it_to_one.
  injected = optax.inject_hyperparams(
      factory, static_args=('b1', 'b2', 'eps'))(**kwargs)
  params = [-jnp.ones((2, 3), dtype), jnp.ones((2, 5, 2), dtype)]
  grads = [jnp.ones((2, 3), dtype), -jnp.ones((2, 5, 2), dtype)]

  def run(optimizer):
    state = jax.jit(optimizer.init)(params)
    updates, new_state = jax.jit(optimizer.update)(grads, state, params)
    return state, updates, new_state

  state, updates, new_state = run(plain)
  assert tuple(map(type, state)) == _CHAIN[kind, given]
  for wrapped in (static, injected):
    state_w, updates_w, new_state_w = run(wrapped)
    assert layout(state_w.inner_state) == layout(state)
    assert layout(new_state_w.inner_state) == layout(new_state)
    assert layout(updates_w) == layout(updates)
    assert layout(new_state_w) == layout(state_w)
    for a, b in zip(jax.tree.leaves((updates_w, new_state_w.inner_state)),
                    jax.tree.leaves((updates, new_state))):
      np.testing.assert_allclose(np.asarray(a, np.float32),
                                 np.asarray(b, np.float32), rtol=1e-6)
  assert layout(new_state) == layout(state)
  hyperparams = run(injected)[0].hyperparams
  # None is no number: inject_hyperparams keeps it static.
  assert ('weight_decay' in hyperparams) == given
  if isinstance(kwargs.get('weight_decay', default), float):
    # (A Python int stays a weak int32: inject_hyperparams casts floats.)
    assert hyperparams['weight_decay'].dtype == jnp.dtype(dtype)


@pytest.mark.parametrize('kind', ('padam', 'padamw'))
def test_a_state_without_the_decay_slot_is_refused_with_what_to_do(kind):
  """padax 0.1.0 left the term out of padam(weight_decay=0): that state
  has the layout of weight_decay=None, and the message says so."""
  factory = {'padam': padax.padam, 'padamw': padax.padamw}[kind]
  params = jnp.ones(3)
  old_state = factory(0.1, weight_decay=None).init(params)
  with pytest.raises(ValueError, match=(
      rf'^{kind}: weight_decay=0.0 but the state has 2 parts where 3 are '
      rf'expected.*build {kind} with weight_decay=None')):
    factory(0.1, weight_decay=0.0).update(params, old_state, params)
  with pytest.raises(ValueError, match=(
      rf'^{kind}: weight_decay=None but the state has 3 parts where 2 are '
      'expected')):
    factory(0.1, weight_decay=None).update(
        params, factory(0.1, weight_decay=0.0).init(params), params)
  # Built as the message says, it resumes the old state as padax 0.1.0's
  # literal-zero padam did: no decay term at all.
  updates, _ = factory(0.1, weight_decay=None).update(params, old_state,
                                                      params)
  assert np.all(np.isfinite(updates)) and np.all(np.asarray(updates) < 0)


def test_injecting_b2_in_bfloat16_rounds_it_to_one():
  """Why the injected variants keep b1, b2, eps static: inject_hyperparams
  casts floating hyperparameters to the parameters' dtype, and in bfloat16
  0.999 rounds to 1.0, a second moment that never decays. optax's choice,
  not padax's; padax's check of b2 catches it at init (the value is concrete
  there) instead of training with it, and the README says to keep b1, b2, eps
  static or to pass hyperparam_dtype=jnp.float32."""
  assert float(jnp.asarray(0.999, jnp.bfloat16)) == 1.0
  params = jnp.ones(2, jnp.bfloat16)
  with pytest.raises(ValueError, match=r'b2=1.0 is out of range'):
    optax.inject_hyperparams(padax.padam)(0.1).init(params)
  state = optax.inject_hyperparams(padax.padam, hyperparam_dtype=jnp.float32)(
      0.1).init(params)
  assert float(state.hyperparams['b2']) == pytest.approx(0.999)


# ------------------------------------------------------- abstract init


@pytest.mark.parametrize('name', IDS)
def test_init_from_shape_dtype_struct(name):
  optimizer = OPTIMIZERS[name]
  abstract = jax.ShapeDtypeStruct((2, 4, 8), jnp.float32)
  concrete = optimizer.init(jnp.zeros((2, 4, 8), jnp.float32))
  describe = lambda tree: jax.tree.map(
      lambda x: (jnp.shape(x), jnp.result_type(x)), tree)
  if not name.endswith('injected'):
    # optax.inject_hyperparams's own init calls jnp.asarray on the params (to
    # pick the hyperparameters' dtype), which a ShapeDtypeStruct is not:
    # optax's limitation, so for it only the eval_shape path below.
    assert describe(optimizer.init(abstract)) == describe(concrete)
  assert describe(jax.eval_shape(optimizer.init, abstract)) == describe(
      concrete)


def test_integer_parameters_are_refused():
  """Deliberately unlike optax: optax.amsgrad keeps integer moments and rounds
  the updates (params [1, 2] move to [0, 1]); padax refuses them at init."""
  params = {'w': jnp.ones(2), 'step': jnp.array([1, 2])}
  for name, optimizer in OPTIMIZERS.items():
    if name.endswith('injected'):
      # inject_hyperparams casts the hyperparameters to the params' 'highest'
      # dtype, which optax 0.2.5 takes to be int32 here: padax then refuses
      # the int32 learning rate first. Refused either way.
      with pytest.raises((TypeError, ValueError),
                         match=r"\['step'\] has dtype int32|=0 has dtype int32"):
        optimizer.init(params)
    else:
      with pytest.raises(TypeError, match=r"\['step'\] has dtype int32"):
        optimizer.init(params)
    optimizer.init({'w': jnp.ones(2)})  # floating params are fine


# ----------------------------------------------------------- sharding

_SHARDING_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, optax
    sys.path.insert(0, {root!r})
    from tests import padax_contract_cases as contract
    results = {{}}
    mesh = jax.make_mesh((8,), ('x',),
                         axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.P(None, 'x'))
    types = lambda tree: jax.tree.map(lambda a: str(jax.typeof(a)), tree)
    with jax.set_mesh(mesh):
      params = jnp.zeros((2, 8, 4), jnp.float16, out_sharding=sharding)
      states = {{n: o.init(params) for n, o in contract.OPTIMIZERS.items()}}
      jit_states = jax.jit(lambda p: {{
          n: o.init(p) for n, o in contract.OPTIMIZERS.items()}})(params)
      stepped = jax.jit(lambda p, s: {{
          n: o.update(p, s[n], p)[1]
          for n, o in contract.OPTIMIZERS.items()}})(params, states)
      for name, optimizer in contract.OPTIMIZERS.items():
        eager = optimizer.update(params, states[name], params)[1]
        mu = contract.padax_state(states[name]).mu
        results[name] = dict(
            init_vs_update=types(states[name]) == types(eager),
            init_vs_jit_init=types(states[name]) == types(jit_states[name]),
            update_vs_jit_update=types(eager) == types(stepped[name]),
            mu_type=str(jax.typeof(mu)),
            params_type=str(jax.typeof(params)))
    print(json.dumps(results))
''')


@functools.lru_cache(maxsize=None)
def _sharding_results():
  if not (hasattr(jax, 'set_mesh') and hasattr(jax.sharding, 'AxisType')):
    pytest.skip(f'jax {jax.__version__} has no explicit sharding in types '
                '(needs jax >= 0.7.2, as optax\'s test)')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = os.environ.get('XLA_FLAGS', '')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      flags + ' --xla_force_host_platform_device_count=8').strip())
  out = subprocess.run([sys.executable, '-c', _SHARDING_SCRIPT.format(
      root=root)], env=env, cwd=root, capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('name', IDS)
@pytest.mark.slow
def test_state_keeps_its_sharding_on_an_explicit_mesh(name):
  """On 8 simulated CPU devices (a subprocess: the test process has one),
  with params sharded along an explicit mesh axis: the state after an update
  (eager and jitted) and after a jitted init has the same types, shardings
  included, as after init, and the moments carry the params' sharding."""
  result = _sharding_results()[name]
  assert result['init_vs_update'], result
  assert result['init_vs_jit_init'], result
  assert result['update_vs_jit_update'], result
  assert result['mu_type'] == result['params_type'], result
  assert 'x' in result['mu_type'], result
