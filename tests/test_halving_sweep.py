"""Successive halving in a sweep (sweeps/run.py with sweep.halving): the
stopped members' rows, the survivors' against the full grid, the decisions
and the compaction surviving kills at every moment, the refusals.

tests/sweep_helpers.py's small set-up: 4 members, 3 epochs, 32 of the 96
training images held out for validation; eta 2 from epoch 1 gives rungs at
epochs 1 and 2 (4 members, then 2, then 1).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from sweeps import halving
from sweeps import run as sweep_run
from sweeps import spec
from sweeps.configs import cpu_subset_tuning
from sweeps.configs import cpu_subset_halving
from sweeps.configs import resnet18_cifar10_halving
from tests import fault_harness
from tests.conftest import ROOT
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import
from tests.helpers import without_timing
from tests.sweep_helpers import small_data, sweep_config
from training import faults
from training import input_pipeline
from training import records
from training import rundir

VALIDATION = 32
RUNGS = (1, 2)
pytestmark = [pytest.mark.usefixtures('compilation_cache_dir'),
              pytest.mark.slow]


class Killed(Exception):
  pass


@pytest.fixture(scope='module')
def data():
  return input_pipeline.hold_out_validation(small_data(), VALIDATION)


def config(eta=2, **sweep):
  c = sweep_config(p=(0.25, 0.125, 0.0625, 0.5), learning_rate=(0.05,),
                   **sweep)
  c.validation_examples = VALIDATION
  if eta is not None:
    with c.sweep.unlocked():
      c.sweep.halving = {'eta': eta, 'first_rung_epochs': 1}
  return c


NAMES = [m.name for m in spec.grid_members(config())]


def rows_of(workdir):
  return {n: rundir.read_rows(os.path.join(workdir, 'members', n,
                                           'metrics.jsonl')) for n in NAMES}


def tree_of(root):
  """{path: bytes} of every file under `root`."""
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      with open(os.path.join(folder, name), 'rb') as f:
        out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
  return out


@pytest.fixture(scope='module')
def full(data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full') / 'w')
  sweep_run.run_sweep(config(eta=None), workdir, data=data, progress=False)
  return workdir


@pytest.fixture(scope='module')
def halved(data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('halved') / 'w')
  sweep_run.run_sweep(config(), workdir, data=data, progress=False)
  return workdir


def best(errors, count):
  """Names of the `count` lowest errors of {name: error}, grid order on a
  tie: the rule, computed here without sweeps.halving."""
  ranked = sorted(errors, key=lambda n: (errors[n], NAMES.index(n)))
  return sorted(ranked[:count], key=NAMES.index)


def test_halving_rows_against_the_full_grid(full, halved):
  grid_rows, rows = rows_of(full), rows_of(halved)
  # Rung 1 (4 members, best 2 go on) on the full grid's epoch-1 rows, which
  # the halving sweep's equal.
  after_1 = best({n: grid_rows[n][0]['val_error'] for n in NAMES}, 2)
  after_2 = best({n: rows[n][1]['val_error'] for n in after_1}, 1)
  ends = {n: 3 if n in after_2 else 2 if n in after_1 else 1 for n in NAMES}
  assert {n: [r['epoch'] for r in rows[n]] for n in NAMES} == {
      n: list(range(1, ends[n] + 1)) for n in NAMES}
  assert sum(len(r) for r in rows.values()) == 4 * 1 + 2 * 1 + 1 * 1 == (
      halving.member_epochs(4, 2, RUNGS, 3))
  for name in NAMES:
    # Up to rung 1 the same program: bit-identical.
    assert (without_timing(rows[name][:1]) ==
            without_timing(grid_rows[name][:1])), name
    for row, grid_row in zip(rows[name], grid_rows[name]):
      for key in ('test_error', 'test_top5_error', 'val_error',
                  'val_top5_error', 'train_error', 'lr', 'p', 'step'):
        assert row[key] == grid_row[key], (name, row['epoch'], key)
      for key in ('train_loss', 'test_loss', 'val_loss'):
        np.testing.assert_allclose(row[key], grid_row[key], rtol=1e-4)
  for epoch in RUNGS:
    with open(rundir.rung_path(halved, epoch)) as f:
      record = json.load(f)
    assert record['survivors'] == (after_1 if epoch == 1 else after_2)
    assert record['val_errors'] == [rows[n][epoch - 1]['val_error']
                                    for n in record['members']]
    # Those it stopped: no metrics file written after the decision.
    for name in set(record['members']) - set(record['survivors']):
      for file in ('metrics.jsonl', 'metrics.csv'):
        assert os.path.getmtime(os.path.join(halved, 'members', name, file)
                                ) <= os.path.getmtime(
                                    rundir.rung_path(halved, epoch))


def test_summary_says_where_and_why(halved):
  with open(os.path.join(halved, 'summary.json')) as f:
    summary = json.load(f)
  rows = rows_of(halved)
  winner = [n for n in NAMES if len(rows[n]) == 3]
  assert summary['winner'] == winner[0]
  assert summary['winner_val_error'] == rows[winner[0]][-1]['val_error']
  for s in summary['members']:
    stop = len(rows[s['name']])
    assert s['stopped_epoch'] == (None if stop == 3 else stop)
    if stop < 3:
      with open(rundir.rung_path(halved, stop)) as f:
        record = json.load(f)
      errors = dict(zip(record['members'], record['val_errors']))
      assert s['stopped_val_error'] == errors[s['name']]
      assert s['rung_cut'] == max(errors[n] for n in record['survivors'])
  with open(os.path.join(halved, 'summary.md')) as f:
    text = f.read()
  assert f'Winner (lowest final validation error): {winner[0]}' in text


def test_killed_at_every_moment_resumes_bit_identical(data, halved, tmp_path,
                                                      monkeypatch):
  """One workdir killed again and again: in a rung's epoch before its
  checkpoint, between a decision and its compaction, right after a
  compaction, and stopped (SIGTERM) inside the epoch after a rung; each
  rerun goes on from what the last left."""
  workdir = str(tmp_path / 'w')
  compact = halving.Rungs.compact
  kill = {}

  def compact_or_kill(self, steps, state, loop, keep):
    # loop None: the fresh state compacted before a restore.
    moment = loop is not None and kill.get('compact')
    if moment == 'before':
      raise Killed()
    out = compact(self, steps, state, loop, keep)
    if moment == 'after':
      raise Killed()
    return out

  push = faults.NonfiniteWatch.push

  def push_or_stop(self, step, finite):
    if step == kill.get('sigterm_at'):
      os.kill(os.getpid(), signal.SIGTERM)
    push(self, step, finite)

  monkeypatch.setattr(halving.Rungs, 'compact', compact_or_kill)
  monkeypatch.setattr(faults.NonfiniteWatch, 'push', push_or_stop)
  steps_per_epoch = (96 - VALIDATION) // config().batch_size

  def run(after_epoch=None, **moment):
    kill.clear()
    kill.update(moment)
    def hook(chunk_index, epoch):
      del chunk_index
      if epoch == after_epoch:
        raise Killed()
    return sweep_run.run_sweep(config(), workdir, data=data, progress=False,
                               after_epoch=hook)

  checkpoints = lambda: rundir.stored_steps(rundir.chunk_dir(workdir, 0))[0]
  rung_1, rung_2 = (rundir.rung_path(workdir, e) for e in RUNGS)
  with pytest.raises(Killed):
    run(after_epoch=1)
  assert not checkpoints() and not os.path.exists(rung_1)
  with pytest.raises(Killed):
    run(compact='before')
  assert checkpoints()[-1] == steps_per_epoch and os.path.isfile(rung_1)
  # What a kill inside a record's atomic write leaves: gone by the end.
  with open(os.path.join(os.path.dirname(rung_1),
                         '.tmp-padax-0123456789abcdef'), 'w') as f:
    f.write('{"epoch": 2, "et')
  with pytest.raises(Killed):
    run(compact='after')
  # Stopped 2 steps into epoch 2: a checkpoint of the 2 survivors there.
  with pytest.raises(faults.RunStopped):
    run(sigterm_at=steps_per_epoch + 2)
  assert checkpoints()[-1] == steps_per_epoch + 2
  with pytest.raises(Killed):
    run(after_epoch=2)
  assert not os.path.exists(rung_2)
  with pytest.raises(Killed):
    run(compact='before')
  assert checkpoints()[-1] == 2 * steps_per_epoch and os.path.isfile(rung_2)
  run()
  # Rows (but for their timing), newest checkpoint and summary.
  fault_harness.assert_same_results(workdir, halved, same_kept=False)
  assert tree_of(os.path.join(workdir, rundir.RUNGS_DIR)) == tree_of(
      os.path.join(halved, rundir.RUNGS_DIR))


def test_extended_sweep_takes_the_new_rung(data, halved, tmp_path):
  """2 epochs (a rung at 1; epoch 2 is the end), then num_epochs=3: epoch 2
  becomes a rung, decided from its rows on resume, as if never shorter."""
  workdir = str(tmp_path / 'w')
  short = config()
  short.num_epochs = 2
  sweep_run.run_sweep(short, workdir, data=data, progress=False)
  assert not os.path.exists(rundir.rung_path(workdir, 2))
  sweep_run.run_sweep(config(), workdir, data=data, progress=False)
  fault_harness.assert_same_results(workdir, halved, same_kept=False)


def test_damaged_newest_checkpoint_falls_back_across_a_rung(data, halved,
                                                           tmp_path):
  """The newest checkpoint (epoch 3: 1 member) damaged: the run goes back to
  rung 2's (2 members, before its decision), takes the decision again from
  its record and ends as the uninterrupted sweep."""
  workdir = str(tmp_path / 'w')
  for name, content in tree_of(halved).items():
    os.makedirs(os.path.dirname(os.path.join(workdir, name)), exist_ok=True)
    with open(os.path.join(workdir, name), 'wb') as f:
      f.write(content)
  directory = rundir.chunk_dir(workdir, 0)
  steps, _ = rundir.stored_steps(directory)
  with open(os.path.join(directory, str(steps[-1]), rundir.METADATA_FILE),
            'w') as f:
    f.write('{damaged')
  sweep_run.run_sweep(config(), workdir, data=data, progress=False)
  assert rundir.stored_steps(directory) == (steps, [steps[-1]])
  fault_harness.assert_same_results(workdir, halved)


def _refused(data, c, workdir, match):
  before = tree_of(workdir) if os.path.isdir(workdir) else None
  with pytest.raises(ValueError, match=match) as e:
    sweep_run.run_sweep(c, workdir, data=data, progress=False)
  assert '\n' not in str(e.value)
  assert (tree_of(workdir) if os.path.isdir(workdir) else None) == before


def test_halving_mismatch_refused_with_nothing_written(data, full, halved):
  _refused(data, config(), full,
           r"sweep\.halving\.eta: stored None, requested 2")
  _refused(data, config(eta=None), halved,
           r"sweep\.halving\.eta: stored 2, requested None")
  _refused(data, config(eta=3), halved,
           r"sweep\.halving\.eta: stored 2, requested 3")


def test_halving_off_resumes_a_sweep_without_the_key(data, full, tmp_path):
  workdir = str(tmp_path / 'copy')
  os.makedirs(workdir)
  for name, content in tree_of(full).items():
    os.makedirs(os.path.dirname(os.path.join(workdir, name)), exist_ok=True)
    with open(os.path.join(workdir, name), 'wb') as f:
      f.write(content)
  summary = sweep_run.run_sweep(config(eta=0), workdir, data=data,
                                progress=False)
  assert [s['epochs'] for s in summary] == [3, 3, 3, 3]
  assert 'stopped_epoch' not in summary[0]


@pytest.mark.parametrize('change, match', [
    (dict(validation_examples=0),
     r'^sweep\.halving\.eta=2 is not allowed with validation_examples=0; '
     r'allowed: validation_examples >= 1'),
    (dict(chunk=2),
     r'^sweep\.chunk=2 is not allowed with sweep\.halving\.eta=2 \(4 '
     r'members\); allowed: a chunk of all the members \(0\)'),
    (dict(eta=1),
     r'^sweep\.halving\.eta=1 is not allowed; allowed: 0 \(off\) or an '
     r'integer >= 2\.$'),
])
def test_halving_refusals(data, tmp_path, change, match):
  c = config(eta=change.pop('eta', 2))
  for key, value in change.items():
    (c.sweep if key == 'chunk' else c)[key] = value
  _refused(data, c, str(tmp_path / 'w'), match)
  assert not os.path.exists(tmp_path / 'w')


_TWO_DEVICES = r"""
import json, os, sys
sys.path.insert(0, os.environ['ROOT'])
import jax
import ml_collections
from tests import sweep_helpers
from training import input_pipeline
assert jax.device_count() == 2
config = ml_collections.ConfigDict(json.loads(sys.argv[2]))
sweep_helpers.print_sweep_meshes(
    config, sys.argv[1], input_pipeline.hold_out_validation(
        sweep_helpers.small_data(), config.validation_examples))
"""


@pytest.mark.skipif(
    not os.environ.get('PADAX_MESH_TESTS'),
    reason='~40 s (a fresh process compiling for 2 devices): set '
    'PADAX_MESH_TESTS=1 to run it.')
def test_survivors_respread_over_fewer_devices(halved, tmp_path):
  """4 members on 2 (simulated CPU) devices: 2 survivors go on on both, the
  last one on a 1-device mesh, not padded to 2; the rows equal the 1-device
  sweep's (`halved`), the losses within a float tolerance."""
  workdir = tmp_path / 'two'
  result = subprocess.run(
      [sys.executable, '-c', _TWO_DEVICES, str(workdir), config().to_json()],
      capture_output=True,
      text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, ROOT=ROOT, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=2'))
  assert result.returncode == 0, result.stderr[-3000:]
  meshes = json.loads(result.stdout.strip().splitlines()[-1])
  assert meshes == [{'grid': 2, 'data': 1}, {'grid': 1, 'data': 1}]
  rows, one_device = rows_of(str(workdir)), rows_of(halved)
  assert {n: len(r) for n, r in rows.items()} == {
      n: len(r) for n, r in one_device.items()}
  for name in NAMES:
    for row, row_one in zip(rows[name], one_device[name]):
      for key in ('test_error', 'val_error', 'train_error', 'step', 'lr'):
        assert row[key] == row_one[key], (name, row['epoch'], key)
      # Other vmap groupings per device round otherwise, and lr 0.05 drives
      # some losses to ~40, where that grows to ~3e-4 relative.
      for key in ('train_loss', 'test_loss', 'val_loss'):
        np.testing.assert_allclose(row[key], row_one[key], rtol=1e-3)


def test_halving_presets():
  cpu = cpu_subset_halving.get_config()
  full = cpu_subset_tuning.get_config()
  # cpu_subset_tuning but for the length and halving.
  differs = {k for k, v in records.flatten(cpu.to_dict()).items()
             if records.flatten(full.to_dict()).get(k, 'absent') != v}
  assert differs == {'num_epochs', 'sweep.halving.eta'}
  gpu = resnet18_cifar10_halving.get_config()
  assert (gpu.model, gpu.dataset, gpu.validation_examples) == (
      'resnet18', 'cifar10', 5000)
  for c, rungs in ((cpu, (1, 3)), (gpu, (3, 9, 27))):
    assert len(spec.grid_members(c)) == 9
    assert {(m.values['p'], m.values['learning_rate'])
            for m in spec.grid_members(c)} == {
                (p, lr) for p in (0.25, 0.125, 0.0625)
                for lr in (0.1, 0.01, 0.001)}
    eta, first = spec.sweep_options(c)['halving']
    assert eta == 3 and halving.rung_epochs(first, eta, c.num_epochs) == rungs
