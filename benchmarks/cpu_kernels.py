"""Per-layer CPU times behind train.py's XLA:CPU set-up and layer choices.

  python benchmarks/cpu_kernels.py [--batch-size 128] [--repeats 5]
      [--parts conv,small,pool,bn,torch]

One fresh process per part and XLA flag set; jitted functions on random
float32 NHWC inputs, median of --repeats after one compiling call. conv:
ResNet18's 3x3 convolutions under each of FLAG_SETS; small, pool, bn: XLA's
operations against models.xla_cpu's under CPU_XLA_FLAGS; torch: PyTorch's
conv2d at the conv shapes.
"""

import argparse
import json
import statistics
import time

import harness
import subprocess_case

STAGES = ((32, 64), (16, 128), (8, 256), (4, 512))  # (H = W, channels)
FLAG_SETS = {
    "XLA's defaults (YNNPACK)": '',
    'CPU_XLA_FLAGS (YNNPACK off)': None,  # training.host_devices' own.
    'YNNPACK off + oneDNN on': ('--xla_cpu_experimental_ynn_fusion_type= '
                                '--xla_cpu_use_onednn=true'),
}


def _timed(fn, *args, repeats):
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(part, batch, repeats):
  """Rows of `part`; in a fresh process whose XLA_FLAGS are set."""
  if part == 'torch':
    return _torch_rows(batch, repeats)
  # pylint: disable=g-import-not-at-top
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from models import xla_cpu
  # pylint: enable=g-import-not-at-top
  rng = np.random.default_rng(0)
  dn = ('NHWC', 'HWIO', 'NHWC')

  def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=dn)

  def patches_conv(x, w):
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, dn)
    return xla_cpu.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=numbers)

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32))

  def conv_parts(conv, x, w):
    y = conv(x, w)
    g = normal(*y.shape)
    return dict(
        forward=_timed(jax.jit(conv), x, w, repeats=repeats),
        dx=_timed(jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[0]),
                  x, w, g, repeats=repeats),
        dw=_timed(jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[1]),
                  x, w, g, repeats=repeats))

  def forward_and_grads(fn, *args):
    return _timed(jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** 2),
                                   argnums=tuple(range(len(args))))),
                  *args, repeats=repeats)

  def batch_norm_formula(x, scale, bias):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias

  rows = []
  if part == 'conv':
    for size, channels in STAGES:
      x, w = normal(batch, size, size, channels), normal(3, 3, channels,
                                                         channels)
      rows.append(dict(layer=f'{size}x{size}x{channels}',
                       **conv_parts(lax_conv, x, w)))
  elif part == 'small':
    x, w = normal(batch, 2, 2, 512), normal(3, 3, 512, 512)
    for name, conv in (('lax.conv', lax_conv),
                       ('patches matmul (models.xla_cpu)', patches_conv)):
      rows.append(dict(layer='2x2x512', form=name,
                       forward_and_grads=forward_and_grads(conv, x, w)))
  elif part == 'bn':
    for size, channels in STAGES:
      x = normal(batch, size, size, channels)
      scale, bias = normal(channels), normal(channels)
      per_example = x.reshape(batch, -1, channels)
      reduction = jax.jit(lambda x: jnp.sum(x, axis=(0, 1)))
      matmul = jax.jit(xla_cpu.channel_sums)
      exact = np.asarray(per_example, np.float64).sum(axis=(0, 1))
      magnitude = np.abs(np.asarray(per_example, np.float64)).sum(axis=(0, 1))

      def rounding(fn):  # Worst channel's error, relative to its sum of |x|.
        out = np.asarray(fn(per_example), np.float64)
        return float(np.max(np.abs(out - exact) / magnitude))

      rows.append(dict(
          layer=f'{size}x{size}x{channels}', form='channel sums',
          reduction=_timed(reduction, per_example, repeats=repeats),
          matmul=_timed(matmul, per_example, repeats=repeats),
          reduction_rounding=rounding(reduction),
          matmul_rounding=rounding(matmul)))
      rows.append(dict(
          layer=f'{size}x{size}x{channels}',
          form='normalisation, forward + gradients',
          reduction=forward_and_grads(batch_norm_formula, x, scale, bias),
          matmul=forward_and_grads(
              lambda *a: xla_cpu.batch_norm_train(*a, 1e-5)[0], x, scale,
              bias)))
  elif part == 'pool':
    for size, channels in STAGES[:3]:
      x = normal(batch, size, size, channels)
      for name, pool in (
          ('nn.max_pool', lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))),
          ('max_pool_2x2 (models.xla_cpu)', xla_cpu.max_pool_2x2)):
        rows.append(dict(layer=f'{size}x{size}x{channels}', form=name,
                         forward=_timed(jax.jit(pool), x, repeats=repeats),
                         forward_and_grads=forward_and_grads(pool, x)))
  return rows


def _torch_rows(batch, repeats):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  rows = []
  for size, channels in STAGES:
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    w = torch.randn(channels, channels, 3, 3, requires_grad=True)
    times = []
    for i in range(repeats + 1):
      start = time.perf_counter()
      (F.conv2d(x, w, padding=1) ** 2).sum().backward()
      if i:
        times.append(time.perf_counter() - start)
      x.grad = w.grad = None
    rows.append(dict(layer=f'{size}x{size}x{channels}',
                     forward_and_grads=statistics.median(times)))
  return rows


def _run(part, flags, args):
  """Rows of `part` under `flags` (None: CPU_XLA_FLAGS), and the flags."""
  if flags is None:
    from training import host_devices  # pylint: disable=g-import-not-at-top
    env = subprocess_case.environment({'XLA_FLAGS': None})
    host_devices.set_cpu_xla_flags(env)
    flags = env.get('XLA_FLAGS', '')
  kwargs = dict(part=part, batch=args.batch_size, repeats=args.repeats)
  return subprocess_case.run(measure, kwargs, env={
      'XLA_FLAGS': flags or None, 'JAX_PLATFORMS': 'cpu'}), flags


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--parts', default='conv,small,pool,bn,torch')
  args = parser.parse_args()
  harness.print_header(
      f'# batch {args.batch_size}, float32, median of {args.repeats} after '
      'one compiling call; milliseconds',
      packages=('jax', 'jaxlib', 'flax', 'torch'))
  results = []
  parts = args.parts.split(',')

  def ms(seconds, spec='.0f'):
    return harness.fmt(None if seconds is None else 1e3 * seconds, spec)

  def rows(part, flags, cells):
    found, used = _run(part, flags, args)
    for r in found:
      results.append(dict(part=part, flags=used, **r))
      yield cells(r)

  if 'conv' in parts:
    print()
    harness.print_table(
        ('XLA flags', 'layer', 'forward', 'dx', 'dw', 'all three'),
        (row for label, flags in FLAG_SETS.items() for row in rows(
            'conv', flags, lambda r, label=label: (
                label, r['layer'], ms(r['forward']), ms(r['dx']),
                ms(r['dw']), ms(r['forward'] + r['dx'] + r['dw'])))))
  for part in ('small', 'pool'):
    if part in parts:
      print()
      harness.print_table(
          (f'{part}: form', 'layer', 'forward', 'forward + gradients'),
          rows(part, None, lambda r: (r['form'], r['layer'],
                                      ms(r.get('forward'), '.1f'),
                                      ms(r['forward_and_grads'], '.1f'))))
  if 'bn' in parts:
    print()
    harness.print_table(
        ('bn', 'layer', 'as a reduction (autodiff)',
         'as a matmul (models.xla_cpu)', 'ratio',
         'rounding: reduction, matmul'),
        rows('bn', None, lambda r: (
            r['form'], r['layer'], ms(r['reduction'], '.2f'),
            ms(r['matmul'], '.2f'), f'{r["reduction"] / r["matmul"]:.1f}x',
            '-' if 'matmul_rounding' not in r else
            f'{r["reduction_rounding"]:.1e}, {r["matmul_rounding"]:.1e}')))
  if 'torch' in parts:
    print()
    harness.print_table(
        ('PyTorch conv2d (NCHW)', 'layer', 'forward + gradients'),
        rows('torch', '', lambda r: ('torch', r['layer'],
                                     ms(r['forward_and_grads']))))
  print()
  for r in results:
    print(json.dumps(r))


if __name__ == '__main__':
  main()
