"""The README's migration table: each row's padax call against our own float64
NumPy transcription of the other implementation's rule (issue 15, point 5).

The transcriptions below are written from reading each implementation's step
(not copied), one function each, sharing nothing with padax or with
tests/padam_reference.py:

* the authors' `Padam` (github.com/uclaml/Padam, Padam.py): PyTorch; L2 decay
  added to the gradient; running max of exp_avg_sq when amsgrad;
  step_size = lr sqrt(1 - b2^t) / (1 - b1^t);
  p -= step_size * exp_avg / (sqrt(max_sq) + eps)^(2 partial).
* keras-contrib's `Padam` (keras_contrib/optimizers/padam.py): the same rule
  without weight decay, amsgrad off by default, and Keras's time decay of the
  learning rate lr / (1 + decay * iterations), iterations counted before the
  step.
* pytorch_optimizer's `PAdam` (pytorch_optimizer/optimizer/padam.py, as of
  commit 0283cf5): no running max; weight decay either L2 on the gradient or,
  with weight_decouple, p *= 1 - wd * lr (1 - wd with fixed_decay) before the
  step.

Rows must agree to 1e-6 (normwise relative, per step and leaf) in float32 over
100 steps on random pytrees.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import padax

STEPS = 100
TOLERANCE = 1e-6


def authors_padam(params, grads, lr, betas=(0.9, 0.999), eps=1e-8,
                  weight_decay=0.0, amsgrad=True, partial=0.25):
  """uclaml/Padam's step, per parameter tensor. Returns the param changes."""
  b1, b2 = betas
  params = [np.array(x, np.float64) for x in params]
  state = [dict(m=np.zeros_like(x), v=np.zeros_like(x), vmax=np.zeros_like(x))
           for x in params]
  history = []
  for t, step_grads in enumerate(grads, start=1):
    changes = []
    for x, g, s in zip(params, step_grads, state):
      g = np.array(g, np.float64)
      if weight_decay != 0:
        g = g + weight_decay * x
      s['m'] = s['m'] * b1 + (1 - b1) * g
      s['v'] = s['v'] * b2 + (1 - b2) * g * g
      if amsgrad:
        s['vmax'] = np.maximum(s['vmax'], s['v'])
        denom = np.sqrt(s['vmax']) + eps
      else:
        denom = np.sqrt(s['v']) + eps
      step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
      change = -step_size * s['m'] / denom**(partial * 2)
      x += change
      changes.append(change)
    history.append(changes)
  return history


def keras_contrib_padam(params, grads, lr=0.1, beta_1=0.9, beta_2=0.999,
                        epsilon=1e-8, decay=0.0, amsgrad=False, partial=1 / 8):
  """keras-contrib's get_updates, per parameter. Returns the param changes."""
  ms = [np.zeros_like(np.asarray(x, np.float64)) for x in params]
  vs = [np.zeros_like(m) for m in ms]
  vhats = [np.zeros_like(m) for m in ms]
  history = []
  for iterations, step_grads in enumerate(grads):
    lr_now = lr / (1 + decay * iterations) if decay > 0 else lr
    t = iterations + 1
    lr_t = lr_now * (math.sqrt(1 - beta_2**t) / (1 - beta_1**t))
    changes = []
    for i, g in enumerate(step_grads):
      g = np.asarray(g, np.float64)
      ms[i] = beta_1 * ms[i] + (1 - beta_1) * g
      vs[i] = beta_2 * vs[i] + (1 - beta_2) * np.square(g)
      if amsgrad:
        vhats[i] = np.maximum(vhats[i], vs[i])
        denom = np.sqrt(vhats[i]) + epsilon
      else:
        denom = np.sqrt(vs[i]) + epsilon
      changes.append(-lr_t * (ms[i] / denom**(partial * 2)))
    history.append(changes)
  return history


def pytorch_optimizer_padam(params, grads, lr=0.1, betas=(0.9, 0.999),
                            partial=0.25, weight_decay=0.0,
                            weight_decouple=False, fixed_decay=False,
                            eps=1e-8):
  """pytorch_optimizer's PAdam.step. Returns the param changes."""
  b1, b2 = betas
  params = [np.array(x, np.float64) for x in params]
  avg = [np.zeros_like(x) for x in params]
  avg_sq = [np.zeros_like(x) for x in params]
  history = []
  for step, step_grads in enumerate(grads, start=1):
    step_size = lr * math.sqrt(1.0 - b2**step) / (1.0 - b1**step)
    changes = []
    for i, g in enumerate(step_grads):
      g = np.array(g, np.float64)
      before = params[i].copy()
      if weight_decouple:
        params[i] *= 1.0 - weight_decay * (1.0 if fixed_decay else lr)
      elif weight_decay > 0.0:
        g = g + weight_decay * params[i]
      avg[i] = avg[i] * b1 + g * (1.0 - b1)
      avg_sq[i] = avg_sq[i] * b2 + g * g * (1.0 - b2)
      de_nom = np.sqrt(avg_sq[i]) + eps
      params[i] -= step_size * avg[i] / de_nom**(partial * 2)
      changes.append(params[i] - before)
    history.append(changes)
  return history


def _random_pytree(seed):
  """A dict pytree of float32-representable leaves and 100 steps of grads.

  Leaves differ in shape and gradient scale (1e-2 to 1e2); within a leaf,
  gradients vary by a log-normal factor and change sign at random.
  """
  rng = np.random.default_rng(seed)
  f32 = lambda x: np.asarray(x, np.float32).astype(np.float64)
  shapes = {'dense': (8, 4), 'bias': (16,), 'conv': (3, 3, 2, 2)}
  scales = {'dense': 1.0, 'bias': 1e-2, 'conv': 1e2}
  params = {k: f32(rng.normal(size=s)) for k, s in shapes.items()}
  grads = [{k: f32(scales[k] * np.exp(rng.normal(scale=0.5, size=s))
                   * rng.choice([-1.0, 1.0], size=s))
            for k, s in shapes.items()} for _ in range(STEPS)]
  return params, grads


def _padax_changes(optimizer, params, grads):
  """padax's updates (the param changes) per step in float32, one jitted scan.

  The updates themselves: a difference of float32 parameters would lose the
  digits of a small change to a large parameter."""
  tree = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  stacked = {k: jnp.asarray(np.stack([g[k] for g in grads]), jnp.float32)
             for k in params}

  def step(carry, g):
    x, state = carry
    updates, state = optimizer.update(g, state, x)
    return (optax.apply_updates(x, updates), state), updates
  _, changes = jax.jit(lambda: jax.lax.scan(
      step, (tree, optimizer.init(tree)), stacked))()
  return changes


def _worst_error(changes, expected, keys):
  worst = 0.0
  for s, step in enumerate(expected):
    for k, e in zip(keys, step):
      a = np.asarray(changes[k][s], np.float64)
      worst = max(worst, float(np.max(np.abs(a - e)) / np.max(np.abs(e))))
  return worst


LR = 0.05
WD = 5e-4
# (row id, padax call, transcription of the other implementation)
ROWS = [
    # b2 = 0.9 in the amsgrad rows: with 0.999 the second moment rarely
    # falls within 100 steps and the running max would hardly matter.
    ('authors Padam amsgrad partial=1/8 wd',
     lambda: padax.padam(LR, p=1 / 8, b2=0.9, weight_decay=WD, amsgrad=True),
     lambda x, g: authors_padam(x, g, LR, betas=(0.9, 0.9), weight_decay=WD,
                                amsgrad=True, partial=1 / 8)),
    ('authors Padam default partial=1/4, b2=0.99, no amsgrad',
     lambda: padax.padam(LR, p=1 / 4, b2=0.99, eps=1e-6, amsgrad=False),
     lambda x, g: authors_padam(x, g, LR, betas=(0.9, 0.99), eps=1e-6,
                                amsgrad=False)),
    ('keras-contrib Padam defaults',
     lambda: padax.padam(LR, p=1 / 8, amsgrad=False),
     lambda x, g: keras_contrib_padam(x, g, lr=LR)),
    ('keras-contrib Padam amsgrad partial=1/4',
     lambda: padax.padam(LR, p=1 / 4, b1=0.8, b2=0.9, amsgrad=True),
     lambda x, g: keras_contrib_padam(x, g, lr=LR, beta_1=0.8, beta_2=0.9,
                                      amsgrad=True, partial=1 / 4)),
    ('keras-contrib Padam with decay',
     lambda: padax.padam(lambda count: LR / (1 + 0.01 * count), p=1 / 8,
                         amsgrad=False),
     lambda x, g: keras_contrib_padam(x, g, lr=LR, decay=0.01)),
    ('pytorch_optimizer PAdam L2',
     lambda: padax.padam(LR, p=1 / 4, weight_decay=WD, amsgrad=False),
     lambda x, g: pytorch_optimizer_padam(x, g, lr=LR, weight_decay=WD)),
    ('pytorch_optimizer PAdam weight_decouple',
     lambda: padax.padamw(LR, p=1 / 4, weight_decay=1e-2, amsgrad=False),
     lambda x, g: pytorch_optimizer_padam(x, g, lr=LR, weight_decay=1e-2,
                                          weight_decouple=True)),
    ('pytorch_optimizer PAdam fixed_decay',
     lambda: padax.padamw(LR, p=1 / 4, weight_decay=1e-3 / LR, amsgrad=False),
     lambda x, g: pytorch_optimizer_padam(x, g, lr=LR, weight_decay=1e-3,
                                          weight_decouple=True,
                                          fixed_decay=True)),
]


@pytest.mark.parametrize('make_padax, transcription',
                         [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
@pytest.mark.parametrize('seed', (0, 1))
def test_row_matches_its_transcription(make_padax, transcription, seed):
  params, grads = _random_pytree(seed)
  keys = list(params)
  expected = transcription([params[k] for k in keys],
                           [[g[k] for k in keys] for g in grads])
  changes = _padax_changes(make_padax(), params, grads)
  assert _worst_error(changes, expected, keys) <= TOLERANCE


def test_transcriptions_really_differ():
  """Guards the rows: the knobs they map change the numbers."""
  params, grads = _random_pytree(0)
  x = list(params.values())
  g = [list(s.values()) for s in grads]
  base = authors_padam(x, g, LR, amsgrad=False, partial=1 / 8)
  others = [
      keras_contrib_padam(x, g, lr=LR, decay=0.01),
      pytorch_optimizer_padam(x, g, lr=LR, partial=1 / 8, weight_decay=1e-2,
                              weight_decouple=True),
  ]
  fast_decay = authors_padam(x, g, LR, betas=(0.9, 0.9), amsgrad=False,
                             partial=1 / 8)
  with_max = authors_padam(x, g, LR, betas=(0.9, 0.9), amsgrad=True,
                           partial=1 / 8)
  for other, reference in [(o, base) for o in others] + [(with_max,
                                                          fast_decay)]:
    diff = max(np.max(np.abs(a - b)) / np.max(np.abs(b))
               for sa, sb in zip(other, reference) for a, b in zip(sa, sb))
    assert diff > 1e-3
  # keras-contrib's default rule is the authors' without weight decay.
  same = keras_contrib_padam(x, g, lr=LR)
  assert max(np.max(np.abs(a - b)) for sa, sb in zip(same, base)
             for a, b in zip(sa, sb)) < 1e-15
