"""Crash safety: train.py and sweep.py killed at random points, and stopped.

The fault-injection harness (tests/fault_harness.py) kills runs with SIGKILL
at random points (training steps, evaluation, inside Orbax's checkpoint
write and its final rename, the deletion of old checkpoints, the
replacement of metrics files, or a random time), sends SIGTERM at random
times, resumes each time, and checks that nothing was lost and that the
final state is bit-identical to an uninterrupted run's.

Quick by default (at least 5 SIGKILLs of train.py, 1 of sweep.py); set
PADAX_FAULTS_LONG=1 for the long mode (at least 50 SIGKILLs over two train
configs and the sweep). PADAX_FAULTS_SEED picks the random faults (default
0); PADAX_FAULTS_REPORT=DIR writes each test's tally there as JSON.
"""

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import ml_collections
import pytest

from tests import fault_harness as harness
from tests.conftest import ROOT
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import
from tests.helpers import snapshot
from training import checkpoints
from training import faults
from training import run_shape
from training import rundir

pytestmark = pytest.mark.slow

LONG = os.environ.get('PADAX_FAULTS_LONG', '') not in ('', '0')
SEED = int(os.environ.get('PADAX_FAULTS_SEED', '0'))
# The shape of the runs these checkpoints are of: 4 steps per epoch.
FOUR_STEP_EPOCHS = run_shape.RunShape(
    steps_per_epoch=4, batch_size=8, train_examples=32, test_examples=8,
    num_classes=10, image_shape=(32, 32, 3))


@pytest.fixture(scope='module')
def env(compilation_cache_dir):
  """Subprocess environment sharing one persistent compilation cache."""
  return harness.env_with_cache(compilation_cache_dir)


def _reference(tmp_path_factory, env, flags, name):
  """(workdir, event counts, seconds of training) of an uninterrupted run,
  made once per session."""
  path = harness.once(
      tmp_path_factory, f'padax_reference_{name}',
      lambda path: harness.run_to_end(flags, os.path.join(path, 'run'),
                                      os.path.join(path, 'events'), env))
  counts, train_seconds = harness.reference_profile(
      os.path.join(path, 'events'))
  return os.path.join(path, 'run'), counts, train_seconds


@pytest.fixture(scope='module')
def train_reference(tmp_path_factory, env):
  """An uninterrupted run: 3 epochs of 4 steps, a checkpoint every epoch and
  only the last kept (each save deletes the one before: the riskiest)."""
  return _reference(tmp_path_factory, env, harness.train_flags(), 'train')


@pytest.fixture(scope='module')
def sweep_reference(tmp_path_factory, env):
  """An uninterrupted sweep: 2 members, one chunk each, 3 epochs."""
  return _reference(tmp_path_factory, env, harness.sweep_flags(), 'sweep')


def _report(name, tally):
  summary = {k: v for k, v in tally.as_dict().items() if k != 'log'}
  print(f'\n{name}: {json.dumps(summary, sort_keys=True)}')
  directory = os.environ.get('PADAX_FAULTS_REPORT')
  if directory:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f'{name}.json'), 'w') as f:
      json.dump(tally.as_dict(), f, indent=1, sort_keys=True)


def _fault_rounds(tmp_path, env, flags, reference, min_kills, max_faults,
                  seed):
  workdir, counts, train_seconds = reference
  tmp_path.mkdir(parents=True, exist_ok=True)
  rng = random.Random(seed)
  tally = harness.Tally()
  while tally.kills < min_kills:
    harness.fault_round(flags, str(tmp_path / f'round{tally.rounds}'),
                        workdir, env, rng, tally, counts, train_seconds,
                        max_faults)
  return tally


def test_train_py_survives_random_sigkills(tmp_path, env, train_reference,
                                           tmp_path_factory):
  tally = _fault_rounds(tmp_path, env, harness.train_flags(), train_reference,
                        min_kills=30 if LONG else 5,
                        max_faults=12 if LONG else 5, seed=SEED)
  if LONG:
    # A second config: 4 epochs, a checkpoint every 2, two kept, the 'skip'
    # policy (its counters travel in the checkpoints too).
    flags = harness.train_flags(
        num_epochs=4, every=2, keep=2,
        extra=['--config.nonfinite_policy=skip'])
    reference = _reference(tmp_path_factory, env, flags, 'train_b')
    more = _fault_rounds(tmp_path / 'b', env, flags, reference,
                         min_kills=10, max_faults=12, seed=SEED + 1)
    for key in ('kills', 'terms', 'rounds', 'processes', 'missed'):
      setattr(tally, key, getattr(tally, key) + getattr(more, key))
    for key, n in more.by_last_event.items():
      tally.by_last_event[key] = tally.by_last_event.get(key, 0) + n
    tally.log += more.log
  _report('train_py_sigkills', tally)
  assert tally.kills >= (40 if LONG else 5)


def test_sweep_py_survives_random_sigkills(tmp_path, env, sweep_reference):
  tally = _fault_rounds(tmp_path, env, harness.sweep_flags(), sweep_reference,
                        min_kills=12 if LONG else 1,
                        max_faults=12 if LONG else 1, seed=SEED + 2)
  _report('sweep_py_sigkills', tally)
  assert tally.kills >= (12 if LONG else 1)


# ---------------------------------------------------------------------------
# Stop requests: a checkpoint mid-epoch, exit 0, then an exact resume.


@pytest.mark.parametrize('entry, sig', [('train', signal.SIGTERM),
                                        ('sweep', signal.SIGINT)])
def test_stop_signal_mid_epoch_saves_and_resumes_bit_identically(
    tmp_path, env, entry, sig, request):
  reference = request.getfixturevalue(f'{entry}_reference')[0]
  flags = (harness.train_flags() if entry == 'train'
           else harness.sweep_flags())
  workdir, events = str(tmp_path / 'run'), str(tmp_path / 'events')
  # Slow steps from the start, so the signal lands in epoch 2 (steps 5-8).
  proc = subprocess.Popen(
      [sys.executable, harness.FAULT_RUN, f'--workdir={workdir}',
       f'--events={events}', '--step_delay=0.3', *flags], cwd=ROOT, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + harness.TIMEOUT_S
    while not harness.has_event(events, 'step', 6):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=harness.TIMEOUT_S)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, stderr[-3000:]
  name = signal.Signals(sig).name
  match = re.search(
      rf'Stopped by {name} at step (\d+) \(epoch 2, (\d) of its 4 steps '
      rf'done\): checkpoint saved in (\S+)\. Run the same command again to '
      'resume.', stderr)
  assert match, stderr[-3000:]
  step, done, directory = int(match[1]), int(match[2]), match[3]
  assert step == 4 + done and 1 <= done <= 3
  assert 'Traceback' not in stderr
  assert harness.checkpoint_dirs(workdir)[
      'chunk-000' if entry == 'sweep' else ''][-1] == step
  # The checkpoint carries the epoch's partial sums (the row of epoch 2
  # comes out exact), and the metrics hold epoch 1 only.
  store = checkpoints.CheckpointStore(directory, keep=1)
  try:
    loop = checkpoints.LoopState.from_json(
        store.loop_metadata(step), 1, step, FOUR_STEP_EPOCHS)
  finally:
    store.close()
  assert loop.steps_done == done and loop.totals['count'].sum() > 0
  assert [len(rows) for rows in harness.metrics_files(workdir).values()] == (
      [1] * len(harness.metrics_files(workdir)))

  resumed = harness.run_to_end(flags, workdir, events, env)
  assert f'Resumed from step {step} (epoch 2, {done} of its 4 steps done)' in (
      resumed.stderr)
  assert not harness.leftovers(workdir)
  harness.assert_same_results(workdir, reference)


# ---------------------------------------------------------------------------
# A full disk: the save fails, the previous checkpoint survives.

_FULL_DISK = ('the checkpoint of step 8 could not be written to {}/checkpoints'
              ' ({}); the previous checkpoint (step 4) is intact. Free space '
              'or fix the file system, then run the same command again to '
              'resume.')


def _run(flags, workdir, env, extra=()):
  return subprocess.run(
      [sys.executable, harness.FAULT_RUN, f'--workdir={workdir}', *flags,
       *extra], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=harness.TIMEOUT_S, check=False)


def _mount_tmpfs(path, size_bytes):
  """True if a tmpfs of that size is mounted on `path` (needs root)."""
  if os.geteuid() != 0:
    return False
  return subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', f'size={size_bytes // 1024}k', 'tmpfs',
       str(path)], capture_output=True, check=False).returncode == 0


def _full_disk_ways():
  # The quick mode meets one full disk: a real one where a tmpfs can be
  # mounted, else a simulated one; the long mode meets both.
  return ['real', 'simulated'] if LONG else ['real or simulated']


@pytest.mark.parametrize('way', _full_disk_ways())
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(
    tmp_path, env, train_reference, way):
  """The second checkpoint meets a full disk: a tmpfs with room for one
  checkpoint, not two, or (simulated) ENOSPC from Orbax's writes."""
  reference = train_reference[0]
  disk = tmp_path / 'disk'
  disk.mkdir()
  size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in
             os.walk(os.path.join(reference, 'checkpoints')) for f in files)
  real = way != 'simulated' and _mount_tmpfs(disk, int(size * 1.6))
  if way == 'real' and not real:
    pytest.skip('cannot mount a small tmpfs (needs root)')
  try:
    workdir = str(disk / 'run')
    result = _run(harness.train_flags(), workdir, env,
                  [] if real else ['--full_disk_at_save=2'])
    assert result.returncode == faults.EXIT_WRITE_FAILED, (
        result.stderr[-3000:])
    errors = [l for l in result.stderr.splitlines()
              if l.startswith('error:')]
    assert len(errors) == 1, result.stderr[-3000:]
    cause = (r'.*No space left on device.*' if real else
             r"OSError: \[Errno 28\] No space left on device: "
             r"'\S+/checkpoints/8\.orbax-checkpoint-tmp/\S+'")
    before, after = ('error: ' + _FULL_DISK.format(workdir, '()')).split('()')
    assert re.fullmatch(re.escape(before) + cause + re.escape(after),
                        errors[0]), errors[0]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    # Checkpoint 4 kept, the epoch-2 row written before the failed save.
    assert harness.checkpoint_dirs(workdir) == {'': [4]}
    assert [r['epoch'] for r in harness.metrics_files(workdir)['.']] == [1, 2]
    moved = str(tmp_path / 'moved')
    shutil.copytree(workdir, moved)
  finally:
    if real:
      subprocess.run(['umount', str(disk)], check=True)
  # With space again, the same command resumes from step 4.
  harness.run_to_end(harness.train_flags(), moved, moved + '.ev', env)
  assert not harness.leftovers(moved), harness.leftovers(moved)
  harness.assert_same_results(moved, reference)


def test_metrics_write_failure_leaves_the_previous_file(tmp_path,
                                                        monkeypatch):
  run_dir = rundir.Workdir(str(tmp_path), ml_collections.ConfigDict())
  run_dir.write_metrics([{'epoch': 1, 'test_error': 0.5}])
  with open(run_dir.jsonl_path) as f:
    before = f.read()

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'fsync', full)
  with pytest.raises(faults.WriteError) as info:
    run_dir.write_metrics([{'epoch': 1}, {'epoch': 2}])
  assert str(info.value) == (
      f'{run_dir.jsonl_path} could not be written (No space left on device);'
      ' its previous version is intact. Free space or fix the file system, '
      'then run the same command again to resume.')
  with open(run_dir.jsonl_path) as f:
    assert f.read() == before
  assert sorted(os.listdir(tmp_path)) == ['metrics.csv', 'metrics.jsonl']


# ---------------------------------------------------------------------------
# Damaged checkpoints: reported and skipped, never deleted.


def _damage(checkpoint_dir):
  """Truncates the data files of an Orbax checkpoint."""
  for root, _, files in os.walk(os.path.join(checkpoint_dir, 'default')):
    if os.path.basename(root) == 'd':
      for name in files:
        open(os.path.join(root, name), 'w').close()


def _small_store(directory, steps):
  """A CheckpointStore holding a small state at each of `steps`."""
  store = checkpoints.CheckpointStore(directory, keep=3)
  for step in steps:
    state = {'w': jnp.full((64, 64), float(step)), 'step': jnp.int32(step)}
    store.save(step, state, checkpoints.LoopState().to_json())
  return store, state


def _check_loop(step, meta):
  return checkpoints.LoopState.from_json(meta, 1, step, FOUR_STEP_EPOCHS)


# Orbax's asyncio callbacks after a failed read end as "Event loop is closed".
_ORBAX_LEFTOVERS = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


@_ORBAX_LEFTOVERS
def test_unreadable_checkpoint_is_reported_and_the_previous_one_used(
    tmp_path, caplog):
  directory = str(tmp_path / 'checkpoints')
  store, template = _small_store(directory, [4, 8, 12])
  store.close()
  _damage(os.path.join(directory, '12'))
  store = checkpoints.CheckpointStore(directory, keep=3)
  try:
    step, state, loop = store.restore_latest(template, _check_loop)
  finally:
    store.close()
  assert step == 8 and int(state['step']) == 8 and loop.steps_done == 0
  assert float(state['w'][0, 0]) == 8.0
  assert re.search(rf'Checkpoint {re.escape(directory)}/12 is unreadable '
                   r'\(.+\); trying the previous one\.', caplog.text)
  assert (f'Moved unreadable checkpoint {directory}/12 to '
          f'{directory}/unreadable-12 (kept for inspection).' in caplog.text)
  assert sorted(os.listdir(directory)) == ['4', '8', 'unreadable-12']


def test_mid_epoch_checkpoint_without_its_totals_is_skipped(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  store, template = _small_store(directory, [4])
  # Step 6 is inside an epoch of 4 steps: its loop state must say so.
  store.save(6, template, checkpoints.LoopState().to_json())
  store.close()
  store = checkpoints.CheckpointStore(directory, keep=3)
  try:
    assert store.restore_latest(template, _check_loop)[0] == 4
  finally:
    store.close()
  assert sorted(os.listdir(directory)) == ['4', 'unreadable-6']


@_ORBAX_LEFTOVERS
def test_no_readable_checkpoint_is_refused_and_nothing_moved(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  store, template = _small_store(directory, [4, 8])
  store.close()
  for step in ('4', '8'):
    _damage(os.path.join(directory, step))
  before = snapshot(directory)
  store = checkpoints.CheckpointStore(directory, keep=3)
  try:
    with pytest.raises(rundir.CheckpointReadError) as info:
      store.restore_latest(template, _check_loop)
  finally:
    store.close()
  assert re.fullmatch(
      rf'none of the checkpoints in {re.escape(directory)} reads back \(step '
      r'8: .+; step 4: .+\); not starting the run over on top of them: move '
      r'the directory away to start afresh\.', str(info.value)), info.value
  assert snapshot(directory) == before


def test_old_checkpoints_go_only_after_the_new_one_is_complete(
    tmp_path, monkeypatch):
  directory = str(tmp_path / 'checkpoints')
  store, template = _small_store(directory, [4, 8])
  # A kill left a half-written save and a half-done deletion behind.
  os.makedirs(os.path.join(directory, '12.orbax-checkpoint-tmp', 'x'))
  os.rename(os.path.join(directory, '4'),
            os.path.join(directory, '.deleting-4'))
  store.close()
  store = checkpoints.CheckpointStore(directory, keep=1)
  try:
    assert sorted(os.listdir(directory)) == ['8']  # The leftovers went.
    deleted = []
    rmtree = shutil.rmtree

    def record(path, *args, **kwargs):
      name = os.path.basename(path)
      if name.startswith(checkpoints.DELETING_PREFIX):
        # The new checkpoint is complete when the old one goes.
        assert os.path.isdir(os.path.join(directory, '12'))
        deleted.append(int(name[len(checkpoints.DELETING_PREFIX):]))
      return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, 'rmtree', record)
    store.save(12, template, checkpoints.LoopState().to_json())
    assert deleted == [8] and store.steps() == [12]
  finally:
    store.close()
