"""Tests for models/: sizes against the authors' PyTorch models, the
train/eval interface, BatchNorm semantics and initialisers.

The big models are only traced (``jax.eval_shape``); real computation uses
tiny_cnn and single blocks so the file stays fast on CPU.
"""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import MODEL_NAMES, create_model
from models import xla_cpu
from models.layers import BatchNorm, torch_bias_init, torch_kernel_init
from models.resnet import BasicBlock
from models.wide_resnet import WideResNet, he_normal_fan_out

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = jax.random.PRNGKey(0)
INPUT = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)

# Trainable parameters of the authors' PyTorch models (sum of p.numel()).
PARAM_COUNTS = {
    ('vgg16', 10): 14_728_266, ('vgg16', 100): 14_774_436,
    ('resnet18', 10): 11_173_962, ('resnet18', 100): 11_220_132,
    ('wrn16_4', 10): 2_777_674, ('wrn16_4', 100): 2_800_804,
}
# BatchNorm running_mean + running_var entries.
BN_STAT_COUNTS = {'vgg16': 8_448, 'resnet18': 9_600, 'wrn16_4': 4_480}


def _size(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _abstract_init(model):
  return jax.eval_shape(lambda rng, x: model.init(rng, x, train=False),
                        RNG, INPUT)


def _batch(n=8, seed=1):
  # Shifted and scaled so batch statistics are far from the fresh 0 / 1.
  x = jax.random.normal(jax.random.PRNGKey(seed), (n, 32, 32, 3))
  return 2.0 * x + 0.5


@pytest.fixture(scope='module')
def tiny():
  model = create_model('tiny_cnn', num_classes=10)
  variables = jax.jit(lambda rng: model.init(rng, _batch(2), train=False))(RNG)
  return model, variables


# ---------------------------------------------------------------- sizes

@pytest.mark.parametrize('name,num_classes', sorted(PARAM_COUNTS))
def test_param_and_bn_stat_counts(name, num_classes):
  variables = _abstract_init(create_model(name, num_classes))
  assert set(variables) == {'params', 'batch_stats'}
  assert _size(variables['params']) == PARAM_COUNTS[name, num_classes]
  assert _size(variables['batch_stats']) == BN_STAT_COUNTS[name]


def test_tiny_cnn_is_small():
  for num_classes in (10, 100):
    variables = _abstract_init(create_model('tiny_cnn', num_classes))
    assert 1_000 < _size(variables['params']) < 100_000


# ------------------------------------------------------------ interface

@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_shapes_and_modes(name, dtype):
  model = create_model(name, num_classes=100, dtype=dtype)
  variables = _abstract_init(model)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32  # params / stats stay float32

  logits, new_state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']),
      variables, INPUT)
  assert (logits.shape, logits.dtype) == ((2, 100), jnp.float32)
  assert set(new_state) == {'batch_stats'}
  assert (jax.tree_util.tree_structure(new_state['batch_stats'])
          == jax.tree_util.tree_structure(variables['batch_stats']))

  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                          variables, INPUT)
  assert (logits.shape, logits.dtype) == ((2, 100), jnp.float32)


def test_unknown_model_name():
  with pytest.raises(ValueError) as info:
    create_model('resnet19', num_classes=10)
  message = str(info.value)
  assert "model='resnet19'" in message
  for name in MODEL_NAMES:
    assert name in message


def test_wide_resnet_depth_not_6n_plus_4_refused():
  with pytest.raises(ValueError,
                     match=r'^depth=15 is not allowed; allowed: 6n\+4\.'):
    _abstract_init(WideResNet(15, 1, 10))


# ------------------------------------------------------ tiny, for real

def test_tiny_train_updates_stats_eval_does_not_need_mutable(tiny):
  model, variables = tiny
  x = _batch()
  logits, new_state = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
          variables, x)
  assert logits.shape == (8, 10) and bool(jnp.all(jnp.isfinite(logits)))
  old, new = variables['batch_stats'], new_state['batch_stats']
  for layer in old:
    assert not np.allclose(old[layer]['mean'], new[layer]['mean'])
    assert not np.allclose(old[layer]['var'], new[layer]['var'])

  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  full = evaluate(variables, x)
  assert full.shape == (8, 10)
  # Eval uses running statistics: a sample's logits ignore the rest of the
  # batch.
  np.testing.assert_allclose(evaluate(variables, x[:1]), full[:1],
                             rtol=1e-5, atol=1e-5)


def test_tiny_backward(tiny):
  model, variables = tiny
  x = _batch()
  labels = jnp.arange(8) % 10

  def loss_fn(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            mutable=['batch_stats'])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  assert np.isfinite(loss)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(jnp.all(jnp.isfinite(g))), path
    assert float(jnp.abs(g).sum()) > 0, path


def test_tiny_bn_running_stats_match_pytorch(tiny):
  """First BN of tiny_cnn after one train step from fresh statistics."""
  model, variables = tiny
  x = _batch()
  _, new_state = model.apply(variables, x, train=True,
                             mutable=['batch_stats'])
  stats = new_state['batch_stats']['bn1']

  # The BN input, computed independently: conv1 (no bias) as a plain conv.
  kernel = variables['params']['conv1']['kernel']
  assert set(variables['params']['conv1']) == {'kernel'}
  bn_input = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)
  bn_input = np.asarray(bn_input, np.float64).reshape(-1, kernel.shape[-1])
  n = bn_input.shape[0]
  batch_mean = bn_input.mean(axis=0)
  unbiased_var = bn_input.var(axis=0, ddof=1)

  # torch: running = (1 - 0.1) * running + 0.1 * batch, from mean 0, var 1.
  np.testing.assert_allclose(stats['mean'], 0.1 * batch_mean,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * unbiased_var,
                             rtol=1e-4, atol=1e-6)
  assert n == 8 * 32 * 32


def test_batch_norm_gradient_matches_autodiff_of_the_formula():
  """xla_cpu.batch_norm_train's hand-written gradient (channel sums as
  matmuls) against JAX's autodiff of the plain formula, through all three
  outputs: y, and the batch mean and variance that feed the running
  statistics."""
  rng = np.random.default_rng(3)
  # A mean far from 0 (3 +- 2): the centred sums must not cancel.
  x = jnp.asarray(3 + 2 * rng.standard_normal((6, 5, 5, 4)), jnp.float32)
  scale = jnp.asarray(rng.standard_normal(4), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(4), jnp.float32)

  def formula(x, scale, bias, epsilon):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return ((x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias,
            mean, var)

  weights = [jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in (x.shape, (4,), (4,))]

  def loss(fn):
    return lambda *args: sum(jnp.sum(out * w) for out, w in
                             zip(fn(*args, 1e-5), weights))

  for ours, ref in zip(xla_cpu.batch_norm_train(x, scale, bias, 1e-5),
                       formula(x, scale, bias, 1e-5)):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  grads = jax.grad(loss(xla_cpu.batch_norm_train), argnums=(0, 1, 2))(
      x, scale, bias)
  expected = jax.grad(loss(formula), argnums=(0, 1, 2))(x, scale, bias)
  for ours, ref in zip(grads, expected):
    assert float(jnp.max(jnp.abs(ref))) > 0.1  # Not vacuous.
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_batchnorm_against_flax_and_torch_formulas():
  x = _batch(4)[:, :6, :6, :]  # n = 4*6*6 = 144 values per channel
  ours = BatchNorm()
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = ours.init(RNG, x, train=False)
  ref_variables = ref.init(RNG, x)

  y, state = ours.apply(variables, x, train=True, mutable=['batch_stats'])
  y_ref, ref_state = ref.apply(ref_variables, x, mutable=['batch_stats'])
  stats, ref_stats = state['batch_stats'], ref_state['batch_stats']

  # Same normalisation (biased batch variance) and running mean as flax.
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats['mean'], ref_stats['mean'], rtol=1e-5)
  # Running var: flax stores 0.9 + 0.1 * biased; torch the unbiased one.
  n = 4 * 6 * 6
  biased = (ref_stats['var'] - 0.9) / 0.1
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * biased * n / (n - 1),
                             rtol=1e-5)

  # Explicit formula, and eval mode normalises with the running statistics.
  xs = np.asarray(x, np.float64).reshape(-1, 3)
  expected = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 3), expected,
                             rtol=1e-4, atol=1e-4)
  y_eval = ours.apply({**variables, **state}, x, train=False)
  expected = ((xs - stats['mean']) / np.sqrt(stats['var'] + 1e-5))
  np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 3), expected,
                             rtol=1e-4, atol=1e-4)
  # Init leaves the statistics fresh even in train mode.
  fresh = ours.init(RNG, x, train=True)['batch_stats']
  np.testing.assert_array_equal(fresh['mean'], 0.0)
  np.testing.assert_array_equal(fresh['var'], 1.0)


# --------------------------------------------------------- initialisers

def test_torch_default_initialisers():
  fan_in = 3 * 3 * 64
  kernel = torch_kernel_init(RNG, (3, 3, 64, 128))
  bound = 1.0 / np.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5))
  assert float(jnp.abs(kernel).max()) <= bound
  np.testing.assert_allclose(float(kernel.std()), bound / np.sqrt(3),
                             rtol=0.02)
  bias = torch_bias_init(fan_in)(RNG, (100_000,))
  assert float(jnp.abs(bias).max()) <= bound
  np.testing.assert_allclose(float(jnp.abs(bias).max()), bound, rtol=1e-3)


def test_tiny_uses_torch_defaults(tiny):
  _, variables = tiny
  params = variables['params']
  kernel = params['conv2']['kernel']
  bound = 1.0 / np.sqrt(3 * 3 * 16)
  assert float(jnp.abs(kernel).max()) <= bound
  assert float(jnp.abs(kernel).max()) > 0.9 * bound
  dense_bound = 1.0 / np.sqrt(64)
  for leaf in params['classifier'].values():
    assert float(jnp.abs(leaf).max()) <= dense_bound
  np.testing.assert_array_equal(params['bn1']['scale'], 1.0)
  np.testing.assert_array_equal(params['bn1']['bias'], 0.0)


def test_wrn_block_uses_authors_he_normal():
  # The authors' init_model: N(0, 2 / (k * k * out_channels)) for every conv.
  block = BasicBlock(64, strides=2, kernel_init=he_normal_fan_out)
  params = block.init(RNG, jnp.zeros((1, 4, 4, 32)), train=False)['params']
  for name, fan_out in (('conv1', 9 * 64), ('conv2', 9 * 64),
                        ('shortcut_conv', 64)):
    kernel = params[name]['kernel']
    np.testing.assert_allclose(float(kernel.std()), np.sqrt(2.0 / fan_out),
                               rtol=0.1)
    # Not truncated: tails beyond 2 std exist as for a true normal.
    assert float(jnp.abs(kernel).max()) > 2.5 * np.sqrt(2.0 / fan_out)


# ------------------------------------- models/xla_cpu.py's layer formulations

@pytest.mark.parametrize('spatial, kernel, stride', [
    (2, 3, 1),  # VGG16's stage 5: 2x2 map, padding 1.
    (1, 3, 1),  # A 1x1 map.
    (4, 3, 2),  # Stride 2 down to 2x2.
    (2, 1, 1),  # 1x1 kernel.
    (8, 3, 1),  # Larger maps keep lax.conv (checked below).
])
def test_small_map_conv_matches_lax_conv(spatial, kernel, stride):
  """The patches-matmul form of tiny-map convolutions (models.xla_cpu) gives
  lax.conv's values and gradients up to float32 rounding (the same sums in
  another order)."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(keys[0], (3, spatial, spatial, 5))
  w = jax.random.normal(keys[1], (kernel, kernel, 5, 7))
  pad = kernel // 2
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape,
                                      ('NHWC', 'HWIO', 'NHWC'))
  args = ((stride, stride), ((pad, pad), (pad, pad)))

  def ours(x, w):
    return xla_cpu.conv_general_dilated(x, w, *args, dimension_numbers=dn)

  def reference(x, w):
    return jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dn)

  out_shape = jax.eval_shape(ours, x, w).shape
  g = jax.random.normal(keys[2], out_shape)

  # Both forms' values and gradients in one program (one compilation
  # instead of an op-by-op dispatch of each).
  @jax.jit
  def both(x, w, g):
    (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x, w), jax.vjp(reference, x, w)
    return y, y_ref, vjp(g), vjp_ref(g)

  y, y_ref, grads, grads_ref = both(x, w, g)
  assert y.shape == y_ref.shape == out_shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Which form ran: a matmul for maps of <= 4 positions, else lax.conv.
  jaxpr = str(jax.make_jaxpr(ours)(x, w))
  small = y.shape[1] * y.shape[2] <= xla_cpu.PATCHES_MATMUL_MAX_POSITIONS
  assert ('dot_general' in jaxpr) == small
  assert ('conv_general_dilated' in jaxpr) == (not small)


def test_conv_inputs_stay_materialized_for_the_weight_gradient():
  """On the CPU each lax.conv input of xla_cpu's convolution passes through
  a conditional that XLA keeps in the compiled gradient (so the weight
  gradient's transpose reads a buffer instead of recomputing
  BatchNorm-ReLU-residual chains), without changing values or gradients,
  also under vmap over members (sweeps)."""
  if jax.default_backend() != 'cpu':
    pytest.skip('CPU only')
  keys = jax.random.split(jax.random.PRNGKey(4), 4)
  x = jax.random.normal(keys[0], (2, 8, 8, 3))
  w1 = jax.random.normal(keys[1], (3, 3, 3, 4))
  w2 = jax.random.normal(keys[2], (3, 3, 4, 4))
  dn = jax.lax.conv_dimension_numbers(x.shape, w1.shape,
                                      ('NHWC', 'HWIO', 'NHWC'))
  args = ((1, 1), ((1, 1), (1, 1)))

  def net(conv, x, w1, w2):
    h = conv(x, w1, *args, dimension_numbers=dn)
    h = jax.nn.relu(h * 0.5 + 1.0) + h  # An element-wise chain, as in a block.
    return jnp.sum(conv(h, w2, *args, dimension_numbers=dn) ** 2)

  ours = jax.grad(lambda *a: net(xla_cpu.conv_general_dilated, *a),
                  argnums=(0, 1, 2))
  plain = jax.grad(lambda *a: net(jax.lax.conv_general_dilated, *a),
                   argnums=(0, 1, 2))
  # Compiled once each (not op by op): the conditionals are checked in the
  # very program that gives the values.
  plain = jax.jit(plain)
  compiled = jax.jit(ours).lower(x, w1, w2).compile()
  for a, b in zip(compiled(x, w1, w2), plain(x, w1, w2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  text = compiled.as_text()
  assert text.count(' conditional(') == 2, text  # One per conv input.

  # Three members (a sweep's vmap over weights, shared batch): the same
  # conditionals, and each member's gradients as if it were alone.
  w1s = jnp.stack([w1, -2.0 * w1, 0.5 * w1])
  w2s = jnp.stack([w2, 0.5 * w2, -w2])
  batched = jax.jit(jax.vmap(ours, in_axes=(None, 0, 0))).lower(
      x, w1s, w2s).compile()
  assert batched.as_text().count(' conditional(') == 2
  member_grads = batched(x, w1s, w2s)
  for k in range(3):
    for a, b in zip(member_grads, plain(x, w1s[k], w2s[k])):
      np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-4)


def test_max_pool_2x2_matches_flax_max_pool_exactly():
  """Same values and the same gradient as nn.max_pool's select-and-scatter,
  bit for bit, including ties (all of a window's gradient to its first
  maximum in row-major order)."""
  max_pool_2x2 = xla_cpu.max_pool_2x2
  rng = np.random.default_rng(0)
  # Small integers: most windows have tied maxima.
  x = jnp.asarray(rng.integers(-2, 3, (3, 8, 6, 5)).astype(np.float32))
  g = jnp.asarray(rng.standard_normal((3, 4, 3, 5)).astype(np.float32))

  def reference(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))

  np.testing.assert_array_equal(max_pool_2x2(x), reference(x))
  ours = jax.vjp(max_pool_2x2, x)[1](g)[0]
  np.testing.assert_array_equal(ours, jax.vjp(reference, x)[1](g)[0])
  # Ties did occur, and a tied window sent its gradient to one element only.
  windows = np.asarray(x).reshape(3, 4, 2, 3, 2, 5)
  tied = (windows == windows.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4))
  assert (tied > 1).sum() > 20
  nonzero = (np.asarray(ours).reshape(3, 4, 2, 3, 2, 5) != 0).sum(axis=(2, 4))
  assert nonzero.max() == 1


def test_the_model_names_and_their_sizes_load_without_jax():
  # The config check reads them before train.py imports JAX.
  code = ('import sys, models, training.configuration; '
          'sys.exit(3 if {"jax", "flax"} & set(sys.modules) else 0)')
  assert subprocess.run([sys.executable, '-c', code], cwd=ROOT).returncode == 0
