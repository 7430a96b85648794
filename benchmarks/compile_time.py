"""Compile time of train.py's programs, cold and from the persistent cache.

  python benchmarks/compile_time.py [--models tiny_cnn,resnet18,vgg16,wrn16_4]
      [--batch-size 128]
  python benchmarks/compile_time.py --train-py [--data-dir DIR]

Per model, two fresh processes share one new, empty persistent compilation
cache: the first compiles the train step into it, the second loads it.
`--train-py`: per config, two train.py runs share one new cache, the second
with another learning rate, p and seed. DIR: a local copy of CIFAR-10
(`--config.data_source=local`); without it, the download.
"""

import argparse
import collections
import os
import sys
import tempfile
import time

import harness
import subprocess_case
import train_step

TRAIN_PY = os.path.join(harness.ROOT, 'train.py')
TRAIN_PY_CASES = {
    'quick, 1 epoch': ['--config', os.path.join(
        harness.ROOT, 'configs', 'quick.py'), '--config.num_epochs=1'],
    # One step: the first batch of 128 images is the whole training set.
    'paper resnet18 padam, 1 step': [
        '--config', os.path.join(harness.ROOT, 'configs',
                                 'paper.py') + ':resnet18,cifar10,padam',
        '--config.num_epochs=1', '--config.train_examples=128'],
}
# The second run of each: other values of what a grid varies.
OTHER_VALUES = ['--config.optimizer.learning_rate=0.05',
                '--config.optimizer.p=0.0625', '--config.seed=1']


def count_programs() -> dict:
  """From now on, the (name, seconds) of every program JAX compiles, under
  'compiled', or loads from the persistent cache, under 'loaded'."""
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  hits = []
  programs = {'compiled': [], 'loaded': []}

  def on_event(event, **kwargs):
    del kwargs
    if event == '/jax/compilation_cache/cache_hits':
      hits.append(True)

  def on_duration(event, seconds, **kwargs):
    # JAX's compile_or_get_cached, timed around; a cache hit is recorded
    # inside it, before this.
    if event == '/jax/core/compile/backend_compile_duration':
      kind = 'loaded' if hits else 'compiled'
      programs[kind].append((kwargs.get('fun_name', '?'), seconds))
      hits.clear()

  monitoring.register_event_listener(on_event)
  monitoring.register_event_duration_secs_listener(on_duration)
  return programs


def compile_step(model_name: str, batch_size: int) -> dict:
  """In a fresh process: lower and compile the train step."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from training import train_lib
  # pylint: enable=g-import-not-at-top
  programs = count_programs()
  model, optimizer, steps = train_step.make_steps(model_name,
                                                  devices=jax.devices()[:1])
  state = jax.eval_shape(
      lambda: train_lib.create_train_state(jax.random.key(0), model,
                                           optimizer))
  batch = train_step.random_batch(np.random.default_rng(0), batch_size)
  t0 = time.perf_counter()
  lowered = steps.train_step.lower(state, batch)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return dict(model=model_name, lower_s=t1 - t0, compile_s=t2 - t1,
              cache_hit=any('train_step' in name
                            for name, _ in programs['loaded']))


def train_py_programs(argv: list) -> dict:
  """In a fresh process: train.py with `argv`; the programs JAX compiled and
  those it loaded from the persistent cache, with their seconds."""
  import runpy  # pylint: disable=g-import-not-at-top
  programs = count_programs()
  sys.argv = [TRAIN_PY, *argv]
  t0 = time.perf_counter()
  try:
    runpy.run_path(TRAIN_PY, run_name='__main__')
  except SystemExit as e:
    if e.code:
      raise RuntimeError(f'train.py {" ".join(argv)} exited {e.code}') from e
  return dict(wall_s=time.perf_counter() - t0, **{
      kind: dict(count=len(p), seconds=sum(s for _, s in p),
                 names=sorted(collections.Counter(n for n, _ in p).items()))
      for kind, p in programs.items()})


def _names(names) -> str:
  return ', '.join(f'{n} x{c}' if c > 1 else n for n, c in names) or '-'


def train_py_main(data_dir) -> None:
  data = ([] if data_dir is None else
          ['--config.data_source=local',
           f'--config.data_dir={os.path.abspath(data_dir)}'])
  harness.print_header(
      '# train.py, two runs per config sharing one new cache: the first, '
      f'then one with {" ".join(OTHER_VALUES)} into a new workdir')
  compiled_again = {}

  def rows():
    for name, argv in TRAIN_PY_CASES.items():
      with tempfile.TemporaryDirectory() as tmp:
        env = dict(JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, 'cache'),
                   JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
        for run, extra in (('first', []), ('other lr, p, seed',
                                           OTHER_VALUES)):
          r = subprocess_case.run(train_py_programs, dict(argv=[
              *argv, *data, *extra, '--progress=false',
              f'--workdir={os.path.join(tmp, run.split()[0])}']), env=env)
          c, l = r['compiled'], r['loaded']
          compiled_again[name] = c['names']
          yield (name, run, c['count'], f'{c["seconds"]:.1f}', l['count'],
                 f'{l["seconds"]:.1f}', f'{r["wall_s"]:.1f}')

  harness.print_table(('config', 'run', 'programs compiled', 'compile s',
                       'programs loaded from cache', 'load s', 'wall s'),
                      rows())
  for name, names in compiled_again.items():
    print(f'# {name}, second run compiled: {_names(names)}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='tiny_cnn,resnet18,vgg16,wrn16_4')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--train-py', action='store_true',
                      help='Time train.py runs (see the docstring).')
  parser.add_argument('--data-dir', default=None,
                      help='--train-py: a local copy of CIFAR-10.')
  args = parser.parse_args()
  if args.train_py:
    # train.py restarts under mimalloc (os.execve), which a subprocess_case
    # child cannot survive: its children inherit mimalloc from here instead.
    harness.use_train_py_setup(xla_flags=False)
    train_py_main(args.data_dir)
    return
  harness.use_train_py_setup(mimalloc=False)
  harness.print_header(f'# train step at batch {args.batch_size} on one CPU '
                       'device; each model: a fresh cache, then two '
                       'processes in turn')

  def row(name):
    with tempfile.TemporaryDirectory() as cache:
      env = dict(JAX_COMPILATION_CACHE_DIR=cache,
                 JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
      cold, warm = (subprocess_case.run(
          compile_step, dict(model_name=name, batch_size=args.batch_size),
          env=env) for _ in range(2))
    hit = warm['cache_hit'] and not cold['cache_hit']
    return (name, f'{cold["lower_s"]:.1f} + {cold["compile_s"]:.1f}',
            f'{warm["lower_s"]:.1f} + {warm["compile_s"]:.1f}',
            'yes' if hit else 'no',
            f'{cold["compile_s"] - warm["compile_s"]:.1f} s')

  harness.print_table(('model', 'cold: lower + compile (s)',
                       'second process: lower + load (s)', 'cache hit',
                       'compile saved'), map(row, args.models.split(',')))


if __name__ == '__main__':
  main()
