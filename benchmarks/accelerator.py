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

import train_step
from configs import default
from sweeps import grid
from training import input_pipeline, train_lib
# pylint: enable=g-import-not-at-top,wrong-import-position,g-bad-import-order

CIFAR10 = input_pipeline.SPECS['cifar10']
GRID_P = (0.25, 0.125, 0.0625)
GRID_LR = (0.1, 0.01, 0.001)
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


def _state(model, optimizer, sharding=None, **hyperparameters):
  """The initial TrainState on `sharding`, with `hyperparameters` injected."""
  state = train_lib.create_train_state(jax.random.key(0), model, optimizer)
  if hyperparameters:
    state = grid.set_hyperparameters(state, hyperparameters)
  return jax.device_put(state, sharding)


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


def grid_rows(device, sizes, rng):
  """The 9-member (p, lr) grid vmapped vs one member after another."""
  members = [(p, lr) for p in GRID_P for lr in GRID_LR]
  steps_each, batch_size = sizes['grid_steps'], sizes['batch']
  model, optimizer, steps = _mesh_steps(device, sizes['grid_model'],
                                        jnp.float32)
  host_batch = train_step.random_batch(rng, batch_size)
  batch = steps.shard(host_batch)
  states = [_state(model, optimizer, steps.replicated, p=p, learning_rate=lr)
            for p, lr in members]
  # Before the steps, which donate the states.
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  sequential, compile_one = _compiled(steps.train_step, states[0], batch)
  seconds = sum(_run_steps(sequential, state, batch, steps_each)[1]
                for state in states)
  grid_steps = grid.GridSteps(grid.make_grid_mesh([device]), model,
                              optimizer)
  stacked = jax.device_put(stacked, grid_steps.state_sharding)
  grid_batch = jax.device_put(host_batch, grid_steps.sharded)
  vmapped, compile_grid = _compiled(grid_steps.train_step, stacked,
                                    grid_batch)
  _, grid_s = _run_steps(vmapped, stacked, grid_batch, steps_each)
  images = len(members) * steps_each * batch_size
  common = dict(part='grid', model=sizes['grid_model'], dtype='float32',
                batch=batch_size, members=len(members), steps=steps_each)
  return [dict(common, form='one after another', seconds=seconds,
               images_per_s=images / seconds, compile_s=compile_one,
               program_bytes=_program_bytes(sequential)),
          dict(common, form='vmapped grid', seconds=grid_s,
               images_per_s=images / grid_s, compile_s=compile_grid,
               program_bytes=_program_bytes(vmapped),
               speedup=seconds / grid_s)]


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
      'grid', 'members x steps', 'batch', 'seconds', 'images/s', 'compile s',
      'vs one after another'), lambda r: (
          f'{r["model"]}, {r["form"]}', f'{r["members"]} x {r["steps"]}',
          r['batch'], f'{r["seconds"]:.2f}', f'{r["images_per_s"]:.0f}',
          f'{r["compile_s"]:.1f}', f'{r.get("speedup", 1.0):.2f}x'))
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
  rows += grid_rows(device, sizes, rng)
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
