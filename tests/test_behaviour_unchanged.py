"""train.py and sweep.py train exactly as the baseline commit's code does.

tests/scripts/record_behaviour.py runs train.py's quick config (3 epochs) and
the CPU sweep preset (2 epochs, 9 members) on the genuine CIFAR-10 subset and
writes their metrics rows (timing columns aside) with the environment that
decided the float rounding: the CPU (XLA:CPU and the numeric libraries
dispatch on its features) and the numeric packages. The same code gives other
last bits on another CPU, so tests/fixtures/behaviour/metrics.json holds the
baseline commit's rows per environment. Where this machine's environment has
no recording, the baseline commit's own code (from git) is run here and is the
reference. Any change to the step, the loop, the data order or the kernels
that moves one bit of one row fails.

The baseline commit's rows equal those the first fixture pinned (recorded at
d055b35, before the loop was restructured): its CI compared them bit for bit.
"""

import json
import os
import subprocess
import sys

from tests import numerics_environment

import pytest


pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE = os.path.join(HERE, 'fixtures', 'behaviour', 'metrics.json')


def _record(checkout: str, data_dir: str, out) -> dict:
  subprocess.run(
      [sys.executable,
       os.path.join(checkout, 'tests', 'scripts', 'record_behaviour.py'),
       f'--data_dir={data_dir}', f'--out={out}'],
      check=True, capture_output=True)
  with open(out) as f:
    return json.load(f)


def test_metrics_rows_bit_identical_to_baseline(tmp_path, cifar10_subset):
  got = _record(ROOT, cifar10_subset, tmp_path / 'head.json')
  with open(FIXTURE) as f:
    fixture = json.load(f)
  recording = numerics_environment.recording_for(fixture)
  expected = recording and recording['runs']
  if expected is None:
    baseline = numerics_environment.baseline_checkout(
        fixture['baseline_commit'], tmp_path / 'baseline')
    expected = _record(baseline, cifar10_subset, tmp_path / 'baseline.json')
  assert got['train_quick'] == expected['train_quick']
  assert sorted(got['sweep_cpu_subset']) == sorted(expected['sweep_cpu_subset'])
  for member, rows in expected['sweep_cpu_subset'].items():
    assert got['sweep_cpu_subset'][member] == rows, member
  # The run learns: the reference is no frozen failure.
  errors = [r['test_error'] for r in expected['train_quick']]
  assert errors[-1] < errors[0] < 0.9
