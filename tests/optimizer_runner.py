"""Runs Optax optimizers over a fixed gradient sequence, jitted once."""

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import optax

# A context manager turning float64 on: public as jax.enable_x64 in recent
# JAX, only jax.experimental.enable_x64 in the oldest padax supports.
enable_x64 = (jax.enable_x64 if hasattr(jax, 'enable_x64')
              else jax.experimental.enable_x64)


def run_many(optimizers, params, grads, dtype=jnp.float32):
  """Applies each optimizer to `grads` (a list over steps of lists of arrays).

  All trajectories are `lax.scan`s inside ONE `jax.jit` (compiling several
  small programs together is much cheaper than one by one). Returns, per
  optimizer, a list over steps of lists of float64 numpy updates.
  """
  params = [jnp.asarray(x, dtype) for x in params]
  stacked = [jnp.asarray(np.stack([g[i] for g in grads]), dtype)
             for i in range(len(params))]

  def trajectory(optimizer, params, stacked):
    def step(carry, g):
      params, state = carry
      updates, state = optimizer.update(g, state, params)
      return (optax.apply_updates(params, updates), state), updates
    _, updates = jax.lax.scan(step, (params, optimizer.init(params)), stacked)
    return updates

  outs = jax.jit(lambda params, stacked: [
      trajectory(o, params, stacked) for o in optimizers])(params, stacked)
  return [[[np.asarray(u[s], np.float64) for u in out]
           for s in range(len(grads))] for out in outs]


def run(optimizer, params, grads, dtype=jnp.float32):
  return run_many([optimizer], params, grads, dtype)[0]
