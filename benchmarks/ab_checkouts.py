"""train.py's train step in two checkouts, interleaved: is a change slower?

  python benchmarks/ab_checkouts.py --base d055b35 --models resnet18,vgg16

`--base` is checked out into a temporary git worktree; a fresh process per
measurement. `train_step.measure` uses only the API both trees share
(models.create_model, training.optimizers, training.train_lib), so any two
commits of the restructured history compare.
"""

import argparse
import os
import statistics
import subprocess
import tempfile

import harness
import subprocess_case
import train_step


def _images_per_second(tree: str, model: str, batch: int, steps: int):
  r = subprocess_case.run(
      train_step.measure, dict(model_name=model, batch_size=batch,
                               steps=steps, warmup=2, config='paper',
                               dataset=train_step.cifar10(batch)),
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
  harness.print_header(f'# {args.rounds} rounds of {args.steps} steps, '
                       f'batch {args.batch_size}, base {args.base}')
  with tempfile.TemporaryDirectory() as tmp:
    base = os.path.join(tmp, 'base')
    subprocess.run(['git', 'worktree', 'add', '--detach', '-q', base,
                    args.base], cwd=harness.ROOT, check=True)
    try:
      for model in args.models.split(','):
        ratios = []
        for r in range(args.rounds):
          # Alternate which tree goes first: a process started right after
          # another one's exit runs a little differently.
          trees = [harness.ROOT, base][::1 if r % 2 == 0 else -1]
          measured = {t: _images_per_second(t, model, args.batch_size,
                                            args.steps) for t in trees}
          this, then = measured[harness.ROOT], measured[base]
          ratios.append(this / then)
          print(f'{model} round {r + 1}: this {this:.1f} img/s, base '
                f'{then:.1f} img/s, ratio {this / then:.3f}', flush=True)
        print(f'{model}: median ratio this/base '
              f'{statistics.median(ratios):.3f}')
    finally:
      subprocess.run(['git', 'worktree', 'remove', '--force', base],
                     cwd=harness.ROOT, check=False)


if __name__ == '__main__':
  harness.use_train_py_setup(xla_flags=False)  # measure sets the flags.
  main()
