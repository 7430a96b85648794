"""A train.py workdir written by padax 0.1.0 resumes bit-identically (issue 23).

Issue 23 changed when `padax.padam` puts its weight-decay term (and that
term's empty state) in the chain: for any weight_decay but None, where 0.1.0
left it out for a literal zero. train.py injects the configured weight decay
(`training/optimizers.create_optimizer`), always an array, so its checkpoints
always had the term's slot and keep fitting. tests/fixtures/old_workdir holds
a one-epoch workdir of the old code and what the old code did when resumed for
a second epoch (its README says how both were made); here a copy is resumed
with today's code and must do the same, bit for bit.

The same code rounds differently on another CPU or with other numeric
packages, so reference.json holds the old code's results per environment
(tests/numerics_environment.py) with the commit that made the workdir. Where
this machine's environment has no recording, that commit's code (from git)
resumes another copy of the workdir here and is the reference.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax

from tests import fault_harness
from tests import numerics_environment
from tests.conftest import ROOT
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import

import pytest


pytestmark = pytest.mark.slow

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'old_workdir')


def _flags(checkout: str) -> list:
  """The flags the fixture was made with (its README), but for num_epochs,
  with `checkout`'s quick config."""
  return ['--mock_num_train=128', '--mock_num_test=64', '--config',
          os.path.join(checkout, 'configs', 'quick.py'), '--progress=false',
          '--config.model=tiny_cnn', '--config.batch_size=32',
          '--config.eval_batch_size=64',
          '--config.optimizer.lr_milestones=(1,)',
          '--config.optimizer.p_decay_every_epochs=1',
          '--config.optimizer.p_decay_factor=0.5', '--config.data_source=tfds',
          '--config.checkpoint_every_epochs=1', '--config.num_epochs=2']


def _digests(checkpoints, step):
  tree = fault_harness.restore_raw(checkpoints, step)
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    x = fault_harness.host_array(x)
    out[jax.tree_util.keystr(path)] = [str(x.dtype), list(x.shape),
                                       hashlib.sha256(x.tobytes()).hexdigest()]
  return out


def _resume(checkout: str, workdir, cache_dir) -> dict:
  """Resumes a fresh copy of the fixture workdir at `workdir` for a second
  epoch with `checkout`'s code, as a user would from that checkout; returns
  its metrics rows (timing aside) and its step-8 checkpoint's digests."""
  shutil.copytree(os.path.join(FIXTURE, 'workdir'), workdir)
  result = subprocess.run(
      [sys.executable,
       os.path.join(checkout, 'tests', 'e2e_scripts', 'mocked_train.py'),
       f'--workdir={workdir}', *_flags(checkout)], cwd=checkout,
      env=fault_harness.env_with_cache(cache_dir), capture_output=True,
      text=True, timeout=fault_harness.TIMEOUT_S, check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  assert 'Resumed from step 4' in result.stderr, result.stderr[-3000:]
  rows = fault_harness.metrics_files(str(workdir))['.']
  return {'rows': fault_harness.without_timing(rows),
          'checkpoint_8': _digests(str(workdir / 'checkpoints'), 8)}


def test_old_workdir_resumes_bit_identically(tmp_path, compilation_cache_dir):  # pylint: disable=redefined-outer-name
  # The old checkpoint holds Padam's state after the decay term's slot.
  old = _digests(os.path.join(FIXTURE, 'workdir', 'checkpoints'), 4)
  assert "['opt_state']['inner_state'][1]['nu_max']['conv1']['kernel']" in old
  with open(os.path.join(FIXTURE, 'reference.json')) as f:
    fixture = json.load(f)
  got = _resume(ROOT, tmp_path / 'today', compilation_cache_dir)
  reference = numerics_environment.recording_for(fixture)
  if reference is None:
    baseline = numerics_environment.baseline_checkout(
        fixture['baseline_commit'], tmp_path / 'baseline')
    reference = _resume(baseline, tmp_path / 'old_code', compilation_cache_dir)
  # The reference is the resumed second epoch: one row per epoch.
  assert [r['step'] for r in reference['rows']] == [4, 8]
  assert got['rows'] == reference['rows']
  assert got['checkpoint_8'] == reference['checkpoint_8']
