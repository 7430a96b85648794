"""models/kernels.py: the XLA:CPU kernels and the plain ones compute the same
models, and PER_PLATFORM gives XLA:CPU exactly the CPU kernels.

Whole models on this CPU, both kernel sets in one program, compiled at XLA's
lowest optimisation level: compiling a paper model's gradient twice took
10-40 s here at the default level, and the comparison needs no speed.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import kernels
from training import optimizers, train_lib
from configs import quick

pytestmark = pytest.mark.slow

FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}
BATCH = 4
# Per leaf, the relative error of the whole leaf, ||ours - plain|| / ||plain||
# (2-norms), with ||plain|| floored at FLOOR x the largest leaf norm of its
# tree. Norms, not elements: where two values of a max-pool window or a
# ReLU input are within rounding of each other, the paths may route one
# element's gradient differently; frequent in bfloat16, rare in float32. The
# floor is for leaves that are zero but for rounding: the gradient of a conv
# bias that a BatchNorm follows (VGG16) is zero mathematically.
FLOOR = 1e-2
# float32: the paths add the same terms in other orders (patch matmul vs
# convolution, per-example matmuls vs reductions, a written-out BatchNorm
# gradient vs autodiff): float32 rounding, ~1e-6 a layer, grown through the
# network. Measured worst over the three models (2026-12, this CPU): logits
# 4.1e-6, gradients 1.2e-5, statistics 2.9e-6; tolerances ~3-10x those. A
# wrong kernel (a missing term, a transposed patch) is an O(1) error.
FLOAT32_TOLERANCE = dict(logits=3e-5, grads=1e-4, stats=3e-5)
# bfloat16: each layer's output is rounded to 8 significant bits, and at
# batch 4 BatchNorm over VGG16's last maps (4 values a channel) amplifies
# that: the PLAIN path's own bfloat16 gradients differ from its float32 ones
# by 1.1 (VGG16; measured 2026-12). So in bfloat16 the two paths must differ
# by no more than bfloat16 rounding itself moves the PLAIN path (measured:
# CPU vs plain 0.54 against 1.14 for VGG16's gradients, 9.6e-3 against
# 3.4e-2 for its logits).


def _scaled_errors(ours, reference):
  """Per leaf: ||ours - reference|| / max(||leaf||, FLOOR * largest ||leaf||)."""
  ref = [np.asarray(r, np.float64) for r in jax.tree.leaves(reference)]
  got = [np.asarray(o, np.float64) for o in jax.tree.leaves(ours)]
  largest = max(float(np.linalg.norm(r)) for r in ref)
  return [float(np.linalg.norm(o - r) /
                max(float(np.linalg.norm(r)), FLOOR * largest))
          for o, r in zip(got, ref)]


def _forward_and_gradients(name, dtype, kernel_set, variables, x, labels):
  model = models.create_model(name, 10, dtype=dtype, kernels=kernel_set)

  def loss_fn(params):
    logits, new_state = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, x,
        train=True, mutable=['batch_stats'])
    loss = train_lib.cross_entropy(logits, labels).mean()
    return loss, (logits, new_state['batch_stats'])

  (_, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      variables['params'])
  eval_logits = model.apply({'params': variables['params'],
                             'batch_stats': stats}, x, train=False)
  return dict(logits=(logits, eval_logits), grads=grads, stats=stats)


@pytest.mark.parametrize('name', ['vgg16', 'resnet18', 'wrn16_4'])
def test_cpu_kernels_and_plain_kernels_agree(name):
  """Forward outputs (train and eval mode), parameter gradients and the
  updated BatchNorm statistics, XLA_CPU vs PLAIN on the same inputs, in
  float32 and in bfloat16 (one program: one compilation per model)."""
  # Shifted and scaled so batch statistics are far from the fresh 0 / 1.
  x = 2.0 * jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 3)) + 0.5
  labels = jnp.arange(BATCH) % 10
  variables = jax.jit(
      lambda k: models.create_model(name, 10).init(k, x[:1], train=False))(
          jax.random.key(0))
  cases = [(dtype, k) for dtype in (jnp.float32, jnp.bfloat16)
           for k in (kernels.XLA_CPU, kernels.PLAIN)]

  def every_case(variables, x, labels):
    return [_forward_and_gradients(name, dtype, k, variables, x, labels)
            for dtype, k in cases]

  compiled = jax.jit(every_case).lower(variables, x, labels).compile(
      compiler_options=FAST_COMPILE)
  cpu32, plain32, cpu16, plain16 = compiled(variables, x, labels)
  for part, tolerance in FLOAT32_TOLERANCE.items():
    error = max(_scaled_errors(cpu32[part], plain32[part]))
    print(name, 'float32', part, f'{error:.1e}')
    assert error <= tolerance, (part, error)
  for part in FLOAT32_TOLERANCE:
    error = max(_scaled_errors(cpu16[part], plain16[part]))
    rounding = max(_scaled_errors(plain16[part], plain32[part]))
    print(name, 'bfloat16', part, f'{error:.1e} (bfloat16 itself: '
          f'{rounding:.1e})')
    assert error <= rounding, (part, error, rounding)


def _without_metadata(hlo: str) -> str:
  """Compiled HLO text from its first computation on, without source
  locations (which name the Python functions that traced each op)."""
  lines = hlo.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('%'))
  return '\n'.join(
      re.sub(r',? ?stack_frame_id=\d+', '',
             re.sub(r', metadata=\{[^}]*\}', '', line))
      for line in lines[start:])


def test_per_platform_compiles_to_the_cpu_kernels_program_on_cpu():
  """platform_dependent leaves XLA:CPU only the CPU branch: the tiny CNN's
  train step compiles to the same program as with XLA_CPU forced."""
  if jax.default_backend() != 'cpu':
    pytest.skip('CPU only')
  optimizer = optimizers.create_optimizer(quick.get_config(), 10)
  batch = {'images': jnp.zeros((8, 32, 32, 3), jnp.uint8),
           'labels': jnp.zeros((8,), jnp.int32)}
  programs = []
  for kernel_set in (kernels.PER_PLATFORM, kernels.XLA_CPU, kernels.PLAIN):
    model = models.create_model('tiny_cnn', 10, kernels=kernel_set)
    state = jax.eval_shape(lambda m=model: train_lib.create_train_state(
        jax.random.key(0), m, optimizer))
    step = jax.jit(functools.partial(train_lib.train_step, model=model,
                                     optimizer=optimizer))
    # XLA's cheapest backend: the HLO passes that drop the other branch run
    # as at the default level, and all three compile the same way.
    programs.append(_without_metadata(
        step.lower(state, batch).compile(
            compiler_options=FAST_COMPILE).as_text()))
  per_platform, cpu, plain = programs
  assert per_platform == cpu
  assert per_platform != plain  # The comparison can tell them apart.
