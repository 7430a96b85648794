"""One command for an accelerator (one H100/H200, or a TPU chip): train-step
throughput of the paper models, a CIFAR-10-sized VGG16 epoch, and the
9-member ResNet18 (p, lr) grid against the same members one after another.

  python benchmarks/accelerator.py [--out results.md]   # ~8 min on one GPU
  python benchmarks/accelerator.py --tiny               # CPU, seconds (tests)

On jax.devices()[0] (the numbers are per chip). Train-step batches double
from 128 up to 1024 while each is >3% faster, fits and --budget allows. The
epoch holds the synthetic training images on the device and gathers shuffled
batches there, augmentation inside the step, as train.py. Results: a
markdown table per part (stdout, and --out), then JSON lines. Each timing
follows a compiling call and ends on block_until_ready.
"""

import argparse
import json
import time

import harness
# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
import jax
import jax.numpy as jnp
import numpy as np

import sweep_throughput
import train_step
from configs import default
from training import input_pipeline, train_lib
# pylint: enable=g-import-not-at-top,wrong-import-position,g-bad-import-order

CIFAR10 = input_pipeline.SPECS['cifar10']
FULL = dict(models=('vgg16', 'resnet18', 'wrn16_4'), batch=128,
            max_batch=1024, steps=20, epoch_model='vgg16',
            train_images=CIFAR10.train_examples,
            eval_images=CIFAR10.test_examples, eval_batch=1000,
            grid_model='resnet18', grid_steps=10)
TINY = dict(models=('tiny_cnn',), batch=8, max_batch=8, steps=2,
            epoch_model='tiny_cnn', train_images=64, eval_images=32,
            eval_batch=16, grid_model='tiny_cnn', grid_steps=2)


def _peak_bytes(device):
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  return (stats or {}).get('peak_bytes_in_use')


def _program_bytes(compiled):
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None  # Not every backend reports it.
  if m is None:
    return None
  return int(m.temp_size_in_bytes + m.argument_size_in_bytes +
             m.output_size_in_bytes)


def _compiled(jitted, *args):
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _run_steps(compiled, state, batch, steps):
  """state after `steps` steps, and the seconds they took (after one)."""
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  return state, time.perf_counter() - start


def _state(model, optimizer, sharding):
  """The initial TrainState on `sharding`."""
  return jax.device_put(train_lib.create_train_state(
      jax.random.key(0), model, optimizer), sharding)


def _mesh_steps(device, name, dtype, steps_per_epoch=100):
  # default.get_config(): Padam, the paper's setting.
  return train_step.make_steps(name, default.get_config(), [device], dtype,
                               steps_per_epoch)


def train_step_rows(device, sizes, deadline, rng):
  """Batches double while faster, until it fails to fit or `deadline`."""
  rows = []
  for name in sizes['models']:
    for dtype in (jnp.float32, jnp.bfloat16):
      model, optimizer, steps = _mesh_steps(device, name, dtype)
      best, batch_size = None, sizes['batch']
      while batch_size <= sizes['max_batch']:
        try:
          state = _state(model, optimizer, steps.replicated)
          batch = steps.shard(train_step.random_batch(rng, batch_size))
          compiled, compile_s = _compiled(steps.train_step, state, batch)
          _, seconds = _run_steps(compiled, state, batch, sizes['steps'])
        except Exception as e:  # pylint: disable=broad-except
          if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in (
              str(e).lower()):
            raise
          break  # The largest batch that fits was the one before.
        row = dict(part='train_step', model=name,
                   dtype=jnp.dtype(dtype).name, batch=batch_size,
                   images_per_s=batch_size * sizes['steps'] / seconds,
                   compile_s=compile_s,
                   program_bytes=_program_bytes(compiled),
                   peak_bytes=_peak_bytes(device))
        rows.append(row)
        faster = best is None or row['images_per_s'] > 1.03 * best
        best = max(best or 0.0, row['images_per_s'])
        # The next, doubled, batch costs a compile and twice the steps.
        if not faster or (deadline - time.perf_counter() <
                           4 * (compile_s + seconds)):
          break
        batch_size *= 2
  return rows


def epoch_row(device, sizes, rng):
  """One epoch of `epoch_model` in bfloat16 from images on the device."""
  n, batch_size = sizes['train_images'], sizes['batch']
  steps_per_epoch = n // batch_size
  model, optimizer, steps = _mesh_steps(device, sizes['epoch_model'],
                                        jnp.bfloat16, steps_per_epoch)
  train = train_step.random_batch(rng, n)
  images = steps.replicate(train['images'])
  labels = steps.replicate(train['labels'])
  test = train_step.random_batch(rng, sizes['eval_images'])
  eval_batches = [
      steps.shard(dict(images=test['images'][i:i + sizes['eval_batch']],
                       labels=test['labels'][i:i + sizes['eval_batch']],
                       mask=np.ones(sizes['eval_batch'], np.float32)))
      for i in range(0, sizes['eval_images'], sizes['eval_batch'])]
  state = _state(model, optimizer, steps.replicated)
  order = rng.permutation(n)[:steps_per_epoch * batch_size].reshape(
      steps_per_epoch, batch_size)
  # Compile (gather, step, eval, add) outside the timed epoch.
  batch = steps.gather(images, labels, order[0])
  jax.block_until_ready(steps.train_step(
      _state(model, optimizer, steps.replicated), batch))
  jax.block_until_ready(steps.add(*[steps.eval_step(state, eval_batches[0])]
                                  * 2))
  start = time.perf_counter()
  totals = None
  for idx in order:
    state, metrics = steps.train_step(
        state, steps.gather(images, labels, idx))
    totals = metrics if totals is None else steps.add(totals, metrics)
  jax.block_until_ready(totals)
  train_s = time.perf_counter() - start
  sums = None
  for eval_batch in eval_batches:
    out = steps.eval_step(state, eval_batch)
    sums = out if sums is None else steps.add(sums, out)
  jax.block_until_ready(sums)
  total_s = time.perf_counter() - start
  return dict(part='epoch', model=sizes['epoch_model'], dtype='bfloat16',
              batch=batch_size, train_images=n,
              eval_images=sizes['eval_images'], train_s=train_s,
              eval_s=total_s - train_s, epoch_s=total_s,
              peak_bytes=_peak_bytes(device))


def grid_rows(sizes):
  """The 9-member (p, lr) grid vmapped vs one member after another, on one
  device: sweep_throughput's two 1-device variants."""
  r = sweep_throughput.measure(sizes['grid_model'], sizes['batch'],
                               members=9, steps=sizes['grid_steps'],
                               repeats=1, skip=('devices',))
  common = dict(part='grid', model=sizes['grid_model'], dtype='float32',
                batch=sizes['batch'], members=9, steps=sizes['grid_steps'])
  images = 9 * sizes['grid_steps'] * sizes['batch']
  rows = []
  for form, variant in (('one after another', 'sequential, 1 device'),
                        ('vmapped grid', 'vmapped, 1 device')):
    ips = r['images_per_second'][variant]
    rows.append(dict(common, form=form, seconds=images / ips,
                     images_per_s=ips, first_run_s=r['first_run_s'][variant],
                     speedup=ips / r['images_per_second'][
                         'sequential, 1 device']))
  return rows


def _mb(x):
  return '-' if x is None else f'{x / 2**20:.0f}'


def markdown(rows):
  def part(name, header, cells):
    return harness.table(header, [cells(r) for r in rows
                                  if r['part'] == name])

  steps = part('train_step', (
      'model', 'dtype', 'batch', 'images/s', 'compile s', 'program MiB',
      'peak device MiB'), lambda r: (
          r['model'], r['dtype'], r['batch'], f'{r["images_per_s"]:.0f}',
          f'{r["compile_s"]:.1f}', _mb(r['program_bytes']),
          _mb(r['peak_bytes'])))
  epoch = part('epoch', (
      'epoch', 'dtype', 'batch', 'train images', 'train s', 'eval images',
      'eval s', 'epoch s'), lambda r: (
          r['model'], r['dtype'], r['batch'], r['train_images'],
          f'{r["train_s"]:.2f}', r['eval_images'], f'{r["eval_s"]:.2f}',
          f'{r["epoch_s"]:.2f}'))
  grid_table = part('grid', (
      'grid', 'members x steps', 'batch', 'seconds', 'images/s',
      'compile + first run s', 'vs one after another'), lambda r: (
          f'{r["model"]}, {r["form"]}', f'{r["members"]} x {r["steps"]}',
          r['batch'], f'{r["seconds"]:.2f}', f'{r["images_per_s"]:.0f}',
          f'{r["first_run_s"]:.1f}', f'{r["speedup"]:.2f}x'))
  return '\n'.join(steps + [''] + epoch + [''] + grid_table)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tiny', action='store_true',
                      help='tiny CNN, small batches: a CPU check, seconds')
  parser.add_argument('--out', help='also write the markdown here')
  parser.add_argument('--budget', type=float, default=420.0,
                      help='seconds after which no larger batch is tried')
  args = parser.parse_args(argv)
  sizes = TINY if args.tiny else FULL
  device = jax.devices()[0]
  rng = np.random.default_rng(0)
  header = harness.header_lines(('jax', 'jaxlib', 'flax', 'optax'))
  header.append(f'# device: {device.platform}, {device.device_kind}'
                f'{" (--tiny)" if args.tiny else ""}')
  rows = train_step_rows(device, sizes,
                         time.perf_counter() + args.budget, rng)
  rows.append(epoch_row(device, sizes, rng))
  rows += grid_rows(sizes)
  text = '\n'.join(header) + '\n\n' + markdown(rows) + '\n'
  print(text)
  for r in rows:
    print(json.dumps(r))
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(text)
  return rows


if __name__ == '__main__':
  main()
