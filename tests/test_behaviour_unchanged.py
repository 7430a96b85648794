"""train.py and sweep.py train exactly as they did when the fixture was recorded.

tests/fixtures/behaviour/metrics.json holds the metrics rows (timing columns
aside) of train.py's quick config (3 epochs) and of the CPU sweep preset (2
epochs, 9 members) on the genuine CIFAR-10 subset, written by
tests/scripts/record_behaviour.py before the loop was restructured. Any change
to the step, the loop, the data order or the kernels that moves one bit of
one row fails here.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, 'fixtures', 'behaviour', 'metrics.json')


def test_metrics_rows_bit_identical_to_fixture(tmp_path, cifar10_subset):
  out = tmp_path / 'metrics.json'
  subprocess.run(
      [sys.executable, os.path.join(HERE, 'scripts', 'record_behaviour.py'),
       f'--data_dir={cifar10_subset}', f'--out={out}'],
      check=True, capture_output=True)
  with open(FIXTURE) as f:
    expected = json.load(f)
  got = json.loads(out.read_text())
  assert got['train_quick'] == expected['train_quick']
  assert sorted(got['sweep_cpu_subset']) == sorted(expected['sweep_cpu_subset'])
  for member, rows in expected['sweep_cpu_subset'].items():
    assert got['sweep_cpu_subset'][member] == rows, member
  # The run learns: the fixture is no frozen failure.
  errors = [r['test_error'] for r in expected['train_quick']]
  assert errors[-1] < errors[0] < 0.9
