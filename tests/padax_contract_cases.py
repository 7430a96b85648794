"""The parameterizations of tests/test_padax_contract.py, shared with the
scripts it runs in fresh processes (tests import helpers, not test files)."""

import jax
import optax

import padax

LR = 0.01
P = 0.125
KINDS = ('padam', 'padamw', 'scale_by_partial_adaptive')
P_KINDS = ('constant', 'scheduled', 'injected')
CASES = [(k, f, pk) for k in KINDS for f in padax.FORMULATIONS for pk in P_KINDS]
IDS = ['-'.join(c) for c in CASES]


def make(kind, formulation, p_kind, learning_rate=LR):
  """The optimizer of one parameterization."""
  if p_kind == 'scheduled':
    # Starts at 1/4 and halves to 1/8: a p that really changes.
    p = optax.piecewise_constant_schedule(0.25, {5: 0.5})
  else:
    p = P
  if kind == 'scale_by_partial_adaptive':
    factory = lambda p: optax.chain(
        padax.scale_by_partial_adaptive(p=p, formulation=formulation),
        optax.scale(-LR))
    if p_kind == 'injected':
      return optax.inject_hyperparams(factory)(p=p)
    return factory(p)
  factory = padax.padam if kind == 'padam' else padax.padamw
  if p_kind == 'injected':
    # Only lr and p injected: see test_injecting_b2_in_bfloat16_rounds_it_to_one.
    return optax.inject_hyperparams(
        factory, static_args=('b1', 'b2', 'eps', 'weight_decay'))(
            learning_rate=learning_rate, p=p, formulation=formulation)
  return factory(learning_rate, p=p, formulation=formulation)


OPTIMIZERS = {name: make(*case) for name, case in zip(IDS, CASES)}


def padax_state(state):
  """The ScaleByPartialAdaptiveState inside any of the optimizers' states."""
  found = [s for s in jax.tree.leaves(
      state, is_leaf=lambda s: isinstance(s, padax.ScaleByPartialAdaptiveState))
           if isinstance(s, padax.ScaleByPartialAdaptiveState)]
  assert len(found) == 1, state
  return found[0]


def layout(tree):
  """A state's structure and each leaf's path, shape and dtype: two states
  with equal layouts fit the same checkpoint."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return jax.tree.structure(tree), [
      (jax.tree_util.keystr(path), jax.numpy.shape(leaf),
       jax.numpy.result_type(leaf)) for path, leaf in leaves]
