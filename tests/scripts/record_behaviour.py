"""Records the metrics rows that pin padax's training behaviour.

  python tests/scripts/record_behaviour.py --data_dir DIR --out FILE

DIR: the genuine CIFAR-10 subset (canonical python layout) that CI places
beside the checkout. Runs, as a user would, `train.py` with configs/quick.py
for 3 epochs and `sweep.py` with sweeps/configs/cpu_subset.py for 2 epochs,
both on DIR, and writes their metrics rows, timing columns aside, as JSON.
Its output also names the environment (CPU, numeric packages) that decided
the float rounding. tests/fixtures/behaviour/metrics.json holds recordings of
the baseline commit's code, one per environment; tests/test_behaviour_unchanged.py
runs this script and compares bit for bit.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests import numerics_environment  # pylint: disable=wrong-import-position
from training import records  # pylint: disable=wrong-import-position


def _rows(path: str) -> list:
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items()
             if k not in records.TIMING_COLUMNS} for line in f if line.strip()]


def _user_environment() -> dict:
  # The device count train.py and sweep.py choose themselves: a count forced
  # through XLA_FLAGS (as some tests do) would change the float rounding.
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags)
  return env


def record(data_dir: str, workdir: str) -> dict:
  data = [f'--config.data_dir={os.path.abspath(data_dir)}']
  runs = {
      'train_quick': ['train.py', '--config=configs/quick.py',
                      '--config.num_epochs=3'],
      # The preset now trains on the first 5000 images of the download; the
      # fixture was recorded on all 5085 of the subset.
      'sweep_cpu_subset': ['sweep.py', '--config=sweeps/configs/cpu_subset.py',
                           '--config.num_epochs=2',
                           '--config.train_examples=0'],
  }
  out = {}
  for name, command in runs.items():
    run_dir = os.path.join(workdir, name)
    subprocess.run(
        [sys.executable, *command, f'--workdir={run_dir}',
         '--config.data_source=local', *data, '--noprogress'],
        cwd=ROOT, env=_user_environment(), check=True)
    if name.startswith('sweep'):
      members = sorted(os.listdir(os.path.join(run_dir, 'members')))
      out[name] = {m: _rows(os.path.join(run_dir, 'members', m,
                                         'metrics.jsonl')) for m in members}
    else:
      out[name] = _rows(os.path.join(run_dir, 'metrics.jsonl'))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as workdir:
    rows = record(args.data_dir, workdir)
  with open(args.out, 'w') as f:
    json.dump({'environment': numerics_environment.environment(), **rows}, f,
              indent=1, sort_keys=True)


if __name__ == '__main__':
  main()
