"""An independent float64 NumPy transcription of the three Padam formulations.

Written from the formulas (issue 2 / the README), element by element, without
reusing anything from `padax`. t = 1, 2, ...; g = gradient after coupled weight
decay; m, v are EMAs of g and g**2; bc1 = 1 - b1**t, bc2 = 1 - b2**t.

  authors: vmax = max(vmax, v);        u = -lr sqrt(bc2)/bc1 m / (sqrt(vmax) + eps)**(2p)
  paper:   vmax = max(vmax, v / bc2);  u = -lr (m / bc1) / (vmax**p + eps)
  report:  vmax = max(vmax, v);        u = -lr sqrt(bc2)/bc1 m / (vmax**p + eps)

amsgrad=False uses v (bias-corrected for 'paper') in place of vmax.
"""

import numpy as np


def padam_updates(params, grads, *, lr, p, b1=0.9, b2=0.999, eps=1e-8,
                  weight_decay=0.0, amsgrad=True, formulation='authors',
                  decoupled=False):
  """Runs Padam over `grads` (a list of per-step lists of arrays).

  Args:
    params: list of initial parameter arrays.
    grads: list over steps of lists of gradient arrays (same shapes).
    lr, p: numbers, or sequences indexed by step (0 for the first update).
    decoupled: False: L2 decay added to the gradient (padam); True: decay
      added after the scaling (padamw).

  Returns:
    list over steps of lists of float64 updates (the change to the params).
  """
  params = [np.asarray(x, np.float64) for x in params]
  m = [np.zeros_like(x) for x in params]
  v = [np.zeros_like(x) for x in params]
  vmax = [np.zeros_like(x) for x in params]
  history = []
  for step, step_grads in enumerate(grads):
    t = step + 1
    lr_t = lr[step] if np.ndim(lr) else lr
    p_t = p[step] if np.ndim(p) else p
    bc1 = 1.0 - b1**t
    bc2 = 1.0 - b2**t
    step_updates = []
    for i, g in enumerate(step_grads):
      g = np.asarray(g, np.float64)
      if not decoupled:
        g = g + weight_decay * params[i]
      m[i] = b1 * m[i] + (1.0 - b1) * g
      v[i] = b2 * v[i] + (1.0 - b2) * g * g
      if formulation == 'paper':
        v_used = v[i] / bc2
      else:
        v_used = v[i]
      if amsgrad:
        vmax[i] = np.maximum(vmax[i], v_used)
        v_used = vmax[i]
      if formulation == 'authors':
        u = np.sqrt(bc2) / bc1 * m[i] / (np.sqrt(v_used) + eps)**(2 * p_t)
      elif formulation == 'paper':
        u = (m[i] / bc1) / (v_used**p_t + eps)
      elif formulation == 'report':
        u = np.sqrt(bc2) / bc1 * m[i] / (v_used**p_t + eps)
      else:
        raise ValueError(formulation)
      if decoupled:
        u = u + weight_decay * params[i]
      u = -lr_t * u
      params[i] = params[i] + u
      step_updates.append(u)
    history.append(step_updates)
  return history


def random_problem(seed, num_steps, shapes=((7, 5), (16,), (3, 4, 2), (64,)),
                   scales=(1e-6, 1e-2, 1.0, 1e3)):
  """Parameters and gradients whose scale spans orders of magnitude.

  Each leaf has its own base scale; within a leaf and across steps the
  magnitudes vary by a log-normal factor (about e**+-4), and signs are random.
  Returned as float32-representable float64 arrays so JAX and NumPy see the
  same inputs. Every leaf has >= 16 elements: in a single element the first
  moment can cancel to near zero, where no float32 computation has a small
  relative error.
  """
  rng = np.random.default_rng(seed)
  f32 = lambda x: np.asarray(x, np.float32).astype(np.float64)
  params = [f32(rng.normal(size=s)) for s in shapes]
  grads = []
  for _ in range(num_steps):
    step_scale = np.exp(rng.normal(scale=1.0))
    grads.append([
        f32(scale * step_scale * np.exp(rng.normal(scale=1.5, size=s))
            * rng.choice([-1.0, 1.0], size=s))
        for s, scale in zip(shapes, scales)])
  return params, grads


def max_relative_error(actual, expected):
  """Normwise relative error max|a - e| / max|e|, worst over steps and leaves."""
  worst = 0.0
  for step_a, step_e in zip(actual, expected):
    for a, e in zip(step_a, step_e):
      a = np.asarray(a, np.float64)
      scale = np.max(np.abs(e))
      if scale == 0.0:
        err = np.max(np.abs(a))
      else:
        err = np.max(np.abs(a - e)) / scale
      worst = max(worst, float(err))
  return worst
