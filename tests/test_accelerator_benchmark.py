"""benchmarks/accelerator.py runs end to end (--tiny, on this CPU), so that
the one-command accelerator benchmark cannot rot between GPU runs."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_accelerator_benchmark_tiny(tmp_path):
  out = tmp_path / 'results.md'
  # XLA's cheapest CPU compiles: this checks that every part runs, not speed.
  flags = ('--xla_backend_optimization_level=0 '
           '--xla_llvm_disable_expensive_passes=true')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{os.environ.get("XLA_FLAGS", "")} {flags}'.strip())
  proc = subprocess.run(
      [sys.executable, os.path.join('benchmarks', 'accelerator.py'),
       '--tiny', '--out', str(out)], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines()
          if line.startswith('{')]
  parts = [r['part'] for r in rows]
  steps = [r for r in rows if r['part'] == 'train_step']
  assert {r['dtype'] for r in steps} == {'float32', 'bfloat16'}
  assert all(r['images_per_s'] > 0 and r['compile_s'] > 0 for r in steps)
  (epoch,) = [r for r in rows if r['part'] == 'epoch']
  assert epoch['train_images'] == 64 and epoch['epoch_s'] > epoch['train_s']
  grid_rows = [r for r in rows if r['part'] == 'grid']
  assert [r['form'] for r in grid_rows] == ['one after another',
                                            'vmapped grid']
  assert all(r['members'] == 9 and r['seconds'] > 0 for r in grid_rows)
  assert parts.count('epoch') == 1
  table = out.read_text(encoding='utf-8')
  assert '| tiny_cnn | bfloat16 | 8 |' in table
  assert 'vmapped grid' in table
