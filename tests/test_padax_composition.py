"""Identities and composition with Optax's wrappers (issue 2, points 2 and 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import padax
from tests import optimizer_runner
from tests import padam_reference

B1, B2, EPS = 0.9, 0.999, 1e-8


def _problem(seed=0, steps=40):
  return padam_reference.random_problem(seed, steps)


def _as_tree(arrays):
  return {f'w{i}': jnp.asarray(a, jnp.float32) for i, a in enumerate(arrays)}


def _close(actual, expected, rtol):
  err = padam_reference.max_relative_error(actual, expected)
  assert err <= rtol, err


# ---------------------------------------------------------------- identities


@pytest.mark.parametrize('x64', (False, True))
def test_paper_formulation_at_half_is_amsgrad(x64):
  """'paper' at p = 1/2 is optax.amsgrad. In float32 they differ only by the
  rounding of 1 - b2**t (optax: from float32 b2, off by 1.3e-5 at t = 1;
  padax: from b2's double-precision log), so float32 allows 2e-5; in float64
  they agree to 1e-12."""
  params, grads = _problem()
  dtype = jnp.float64 if x64 else jnp.float32
  with optimizer_runner.enable_x64(x64):
    ours, theirs = optimizer_runner.run_many(
        [padax.padam(0.1, p=0.5, formulation='paper'),
         optax.amsgrad(0.1, b1=B1, b2=B2, eps=EPS)], params, grads, dtype)
  _close(ours, theirs, 1e-12 if x64 else 2e-5)


@pytest.mark.parametrize('formulation', padax.FORMULATIONS)
def test_p_zero_is_sgd_momentum_times_bias_factor(formulation):
  """At p = 0 the update is SGD-momentum's times an exact factor.

  optax.sgd keeps the trace tr_t = g_t + b1 tr_{t-1}; Padam's m_t = (1 - b1)
  tr_t. With bc1 = 1 - b1^t, bc2 = 1 - b2^t the factor is
    authors: (1 - b1) sqrt(bc2) / bc1          ((sqrt(vmax) + eps)^0 = 1)
    paper:   (1 - b1) / (bc1 (1 + eps))        (vmax^0 + eps = 1 + eps)
    report:  (1 - b1) sqrt(bc2) / (bc1 (1 + eps))
  """
  params, grads = _problem(steps=30)
  ours, sgd = optimizer_runner.run_many(
      [padax.padam(0.1, p=0.0, formulation=formulation),
       optax.sgd(0.1, momentum=B1)], params, grads)
  t = np.arange(1, len(grads) + 1, dtype=np.float64)
  bc1, bc2 = 1 - B1**t, 1 - B2**t
  factor = {
      'authors': (1 - B1) * np.sqrt(bc2) / bc1,
      'paper': (1 - B1) / (bc1 * (1 + EPS)),
      'report': (1 - B1) * np.sqrt(bc2) / (bc1 * (1 + EPS)),
  }[formulation]
  expected = [[u * f for u in step] for step, f in zip(sgd, factor)]
  _close(ours, expected, 1e-5)
  # The factor matters: without it the two are far apart.
  assert padam_reference.max_relative_error(ours, sgd) > 0.5


# --------------------------------------------------------------- composition


def test_chain_with_clip_by_global_norm():
  params, grads = _problem()
  max_norm = 1.0
  clipped = []
  for step in grads:
    norm = np.sqrt(sum(np.sum(g**2) for g in step))
    clipped.append([g * min(1.0, max_norm / norm) for g in step])
  actual = optimizer_runner.run(
      optax.chain(optax.clip_by_global_norm(max_norm),
                  padax.padam(0.1, p=0.125, weight_decay=5e-4)),
      params, grads)
  # Weight decay is added after clipping, as in the chain's order.
  expected = padam_reference.padam_updates(params, clipped, lr=0.1, p=0.125,
                                           weight_decay=5e-4)
  _close(actual, expected, 1e-5)


def test_masked_and_none_leaves():
  params, grads = _problem(steps=20)
  tree = lambda xs: {'a': jnp.asarray(xs[0]), 'b': jnp.asarray(xs[1]),
                     'frozen': jnp.asarray(xs[2]), 'empty': None}
  optimizer = optax.masked(
      padax.padam(0.1, p=0.125),
      {'a': True, 'b': True, 'frozen': False, 'empty': True})
  p_tree = tree(params)
  state = optimizer.init(p_tree)
  step = jax.jit(optimizer.update)
  expected = padam_reference.padam_updates(params[:2], [g[:2] for g in grads],
                                           lr=0.1, p=0.125)
  for g, exp in zip(grads, expected):
    updates, state = step(tree(g), state, p_tree)
    assert updates['empty'] is None
    # Masked-out leaves pass through untouched.
    np.testing.assert_array_equal(updates['frozen'], np.float32(g[2]))
    _close([[updates['a'], updates['b']]], [exp], 1e-5)
    p_tree = optax.apply_updates(p_tree, updates)


def test_none_leaves_in_params():
  params = {'w': jnp.ones((3,)), 'none': None}
  optimizer = padax.padam(0.1, weight_decay=1e-3)
  state = optimizer.init(params)
  assert state[-2].mu['none'] is None and state[-2].nu_max['none'] is None
  updates, _ = jax.jit(optimizer.update)(
      {'w': jnp.full((3,), 2.0), 'none': None}, state, params)
  assert updates['none'] is None
  assert np.all(np.isfinite(updates['w']))


def test_multi_steps_averages_microbatches():
  params, grads = _problem(steps=40)
  k = 4
  actual = optimizer_runner.run(
      optax.MultiSteps(padax.padam(0.1, p=0.125), every_k_schedule=k),
      params, grads)
  averaged = [[np.mean([grads[s + j][i] for j in range(k)], axis=0)
               for i in range(len(params))]
              for s in range(0, len(grads), k)]
  expected = padam_reference.padam_updates(params, averaged, lr=0.1, p=0.125)
  for s, step in enumerate(actual):
    if (s + 1) % k:
      assert all(np.all(u == 0) for u in step)
  _close(actual[k - 1::k], expected, 1e-5)


def test_apply_if_finite_skips_bad_steps():
  params, grads = _problem(steps=20)
  bad_steps = {5, 11}
  poisoned = [[np.where(np.arange(g.size).reshape(g.shape) == 0, np.nan, g)
               if s in bad_steps else g for g in step]
              for s, step in enumerate(grads)]
  actual = optimizer_runner.run(
      optax.apply_if_finite(padax.padam(0.1, p=0.125), max_consecutive_errors=3),
      params, poisoned)
  kept = [g for s, g in enumerate(grads) if s not in bad_steps]
  expected = padam_reference.padam_updates(params, kept, lr=0.1, p=0.125)
  for s in bad_steps:
    assert all(np.all(u == 0) for u in actual[s])
  _close([u for s, u in enumerate(actual) if s not in bad_steps], expected,
         1e-5)


def test_inject_hyperparams_matches_plain():
  params, grads = _problem()
  schedule = optax.cosine_decay_schedule(0.1, len(grads))
  plain, injected_lr_p, injected_all = optimizer_runner.run_many([
      padax.padam(schedule, p=0.125, weight_decay=5e-4),
      optax.inject_hyperparams(
          padax.padam, static_args=('b1', 'b2', 'eps', 'weight_decay'))(
              learning_rate=schedule, p=0.125, weight_decay=5e-4),
      optax.inject_hyperparams(padax.padam)(
          learning_rate=schedule, p=0.125, weight_decay=5e-4),
  ], params, grads)
  # lr and p injected: the same program up to where lr is multiplied in.
  _close(injected_lr_p, plain, 1e-6)
  # b1, b2, eps, weight decay injected too: they become float32 arrays, and
  # float32(0.999) differs from 0.999 by 1.3e-5 relative in 1 - b2.
  _close(injected_all, plain, 1e-5)


def test_p_schedule_changes_update_exactly_at_the_boundary():
  params, grads = _problem(steps=12)
  boundary = 5
  schedule = optax.piecewise_constant_schedule(0.25, {boundary: 0.5})
  # The constant is a schedule too (its boundary never reached, so XLA cannot
  # fold it): both take the same code path and agree bit for bit until then.
  scheduled, constant = optimizer_runner.run_many(
      [padax.padam(0.1, p=schedule),
       padax.padam(0.1, p=optax.piecewise_constant_schedule(0.25, {10**9: 0.5}))],
      params, grads)
  p_per_step = [schedule(s) for s in range(len(grads))]
  expected = padam_reference.padam_updates(params, grads, lr=0.1,
                                           p=np.array(p_per_step, np.float64))
  _close(scheduled, expected, 1e-5)
  for s in range(len(grads)):
    same = all(np.array_equal(a, b) for a, b in zip(scheduled[s], constant[s]))
    assert same == (s < boundary), s


def test_report_decaying_p_is_optax_exponential_decay():
  steps_per_epoch = 3
  p = optax.exponential_decay(0.25, transition_steps=50 * steps_per_epoch,
                              decay_rate=0.5, staircase=True)
  assert [float(p(e * steps_per_epoch)) for e in (0, 49, 50, 99, 100, 150)] == [
      0.25, 0.25, 0.125, 0.125, 0.0625, 0.03125]
  padax.padam(0.1, p=p)  # a schedule is accepted as p


def test_vmap_over_injected_p_and_lr_equals_separate_runs():
  params, grads = _problem(steps=20)
  settings = [(0.125, 0.1), (0.25, 0.01), (0.0625, 0.05)]
  separate = optimizer_runner.run_many(
      [padax.padam(lr, p=p) for p, lr in settings], params, grads)

  optimizer = optax.inject_hyperparams(padax.padam)(learning_rate=0.1, p=0.125)
  p_tree = _as_tree(params)

  def init(p, lr):
    state = optimizer.init(p_tree)
    state.hyperparams['p'] = p
    state.hyperparams['learning_rate'] = lr
    return p_tree, state

  def step(carry, g):
    prm, state = carry
    updates, state = optimizer.update(g, state, prm)
    return (optax.apply_updates(prm, updates), state), updates

  ps = jnp.array([s[0] for s in settings], jnp.float32)
  lrs = jnp.array([s[1] for s in settings], jnp.float32)
  stacked = {f'w{i}': jnp.asarray(np.stack([g[i] for g in grads]), jnp.float32)
             for i in range(len(params))}

  @jax.jit
  def grid(ps, lrs):
    carries = jax.vmap(init)(ps, lrs)
    return jax.vmap(lambda c: jax.lax.scan(step, c, stacked)[1])(carries)

  updates = grid(ps, lrs)
  for member, expected in enumerate(separate):
    actual = [[np.asarray(updates[f'w{i}'][member, s], np.float64)
               for i in range(len(params))] for s in range(len(grads))]
    _close(actual, expected, 1e-5)


def test_second_jitted_call_does_not_recompile():
  traces = []
  optimizer = optax.inject_hyperparams(padax.padam)(learning_rate=0.1, p=0.125)

  @jax.jit
  def step(params, state, grads):
    traces.append(1)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = {'w': jnp.ones((4, 3)), 'b': jnp.zeros((3,))}
  state = optimizer.init(params)
  grads = jax.tree.map(lambda x: x + 0.5, params)
  for _ in range(3):
    params, state = step(params, state, grads)
  assert len(traces) == 1


def test_bf16_mu_dtype_keeps_state_dtypes():
  traces = []
  optimizer = padax.padam(0.1, p=0.125, mu_dtype=jnp.bfloat16)

  @jax.jit
  def step(params, state, grads):
    traces.append(1)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, grads = _problem(steps=10)
  p_tree = _as_tree(params)
  state = optimizer.init(p_tree)
  for g in grads:
    p_tree, state = step(p_tree, state, _as_tree(g))
  inner = state[0]
  assert inner.count.dtype == jnp.int32 and int(inner.count) == len(grads)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(inner.mu))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(inner.nu))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(inner.nu_max))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p_tree))
  assert len(traces) == 1
  # bf16 first moment: close to the float64 trajectory at bf16 precision.
  expected = padam_reference.padam_updates(params, grads, lr=0.1, p=0.125)
  final = [np.asarray(params[i], np.float64) + sum(s[i] for s in expected)
           for i in range(len(params))]
  for i, f in enumerate(final):
    np.testing.assert_allclose(np.asarray(p_tree[f'w{i}'], np.float64), f,
                               rtol=0, atol=2e-2 * np.max(np.abs(f)))
