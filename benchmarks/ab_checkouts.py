"""train.py's train step in two checkouts, interleaved: is a change slower?

  python benchmarks/ab_checkouts.py --base d055b35 --models resnet18,vgg16

Checks `--base` out into a temporary git worktree and times the step of
train.py's set-up (`train_step.measure`: the paper config's Padam, MeshSteps
over the devices train.py would use for the model, XLA:CPU flags, mimalloc
where installed) on the base's code and on this checkout's, alternately
(which goes first alternates too), `--rounds` times each: a fresh process
per measurement. Prints images/s per round and the median ratio this/base
per model. `measure` uses only the API both trees share
(models.create_model, training.optimizers, training.train_lib), so any two
commits of the restructured history compare.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import run_info
import subprocess_case
import train_step


def _images_per_second(tree: str, model: str, batch: int, steps: int):
  r = subprocess_case.run(
      train_step.measure, dict(model_name=model, batch_size=batch,
                               steps=steps, warmup=2, config='paper'),
      env={'JAX_PLATFORMS': 'cpu'}, root=tree)
  return batch * steps / sum(r['times'])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--base', required=True, help='git revision to compare')
  parser.add_argument('--models', default='resnet18,vgg16')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  print('\n'.join(run_info.header_lines()))
  print(f'# {args.rounds} rounds of {args.steps} steps, batch '
        f'{args.batch_size}, base {args.base}')
  with tempfile.TemporaryDirectory() as tmp:
    base = os.path.join(tmp, 'base')
    subprocess.run(['git', 'worktree', 'add', '--detach', '-q', base,
                    args.base], cwd=run_info.ROOT, check=True)
    try:
      for model in args.models.split(','):
        ratios = []
        for r in range(args.rounds):
          # Alternate which tree goes first: a process started right after
          # another one's exit runs a little differently.
          trees = [run_info.ROOT, base][::1 if r % 2 == 0 else -1]
          measured = {t: _images_per_second(t, model, args.batch_size,
                                            args.steps) for t in trees}
          this, then = measured[run_info.ROOT], measured[base]
          ratios.append(this / then)
          print(f'{model} round {r + 1}: this {this:.1f} img/s, base '
                f'{then:.1f} img/s, ratio {this / then:.3f}', flush=True)
        print(f'{model}: median ratio this/base {statistics.median(ratios):.3f}')
    finally:
      subprocess.run(['git', 'worktree', 'remove', '--force', base],
                     cwd=run_info.ROOT, check=False)


if __name__ == '__main__':
  # train.py's allocator (mimalloc where installed); children inherit it.
  sys.path.insert(0, run_info.ROOT)
  from training import allocator  # pylint: disable=g-import-not-at-top
  allocator.use_mimalloc()
  main()
