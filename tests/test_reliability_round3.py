"""Reliability, round 3 (issue 25): what padax writes, and what it trusts.

One table per class of the issue: 1 nothing written through a symlink, 2 a
checkpoint's name, stored step and metadata agree or it is not used, 3 files
padax did not write are refused, never changed, 4 damaged checkpoint
metadata is never an empty state, 7 failures found before the first write.
Each refusal asserts the exit status (train.py/sweep.py, or the exception
of the Python API that they turn into it: ValueError 2, faults.WriteError
4), one message line with its fragments, no traceback, that no content
padax did not write shows up in the output, and a snapshot of every file in
the test's folder (the workdir and what lies around it) and of every
symlink's target, before and after. Cases a run survives (a checkpoint set
aside and the previous one used, a user's file left alone) end bit-identical
to an uninterrupted run.
"""

import dataclasses
import functools
import json
import logging
import os
import shutil
import subprocess
import time
from typing import Callable, Optional

import ml_collections
import pytest

from configs import quick
from sweeps import run as sweep_run
from tests import fault_harness as harness
from tests import sweep_helpers
from tests.conftest import ROOT
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import
from tests.helpers import without_timing
from tests.helpers import write_cifar10
from training import checkpoints
from training import faults
from training import trainer
from training import run_lock
from training import rundir

pytestmark = [pytest.mark.usefixtures('compilation_cache_dir'),
              pytest.mark.slow]

TRAIN_PY = os.path.join(ROOT, 'train.py')
QUICK = os.path.join(ROOT, 'configs', 'quick.py')
NUM_TRAIN, NUM_TEST, BATCH = 64, 32, 16  # 4 steps an epoch.
SMALL = {'model': 'tiny_cnn', 'batch_size': BATCH, 'eval_batch_size': NUM_TEST,
         'num_epochs': 3, 'checkpoint_every_epochs': 1, 'keep_checkpoints': 3,
         'data_source': 'local', 'optimizer.lr_milestones': (1,)}
# Content of files padax did not write: it must never show in its output.
SECRET = 'the-first-line-of-a-private-file'


def small_config(data_dir, **changes) -> ml_collections.ConfigDict:
  config = quick.get_config()
  for key, value in {**SMALL, 'data_dir': data_dir, **changes}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def small_flags(data_dir, **changes) -> list:
  return ['--config', QUICK, '--progress=false'] + [
      f'--config.{k}={v}' for k, v in {**SMALL, 'data_dir': data_dir,
                                       **changes}.items()]


def train(tmp, workdir='W', **changes):
  return trainer.train_and_evaluate(
      small_config(os.path.join(tmp, 'data'), **changes),
      os.path.join(tmp, workdir), progress=False)


def resume(**changes):
  return lambda tmp: train(tmp, **changes)


def train_py(workdir='W', **changes):
  return [TRAIN_PY, *small_flags('TMP/data', **changes),
          f'--workdir=TMP/{workdir}']


SWEEP_STEPS = sweep_helpers.STEPS_PER_EPOCH


def sweep_config(**changes):
  config = sweep_helpers.sweep_config(p=(0.25, 0.125))
  for key, value in {'num_epochs': 2, 'checkpoint_every_epochs': 1,
                     'keep_checkpoints': 1, **changes}.items():
    config[key] = value
  return config


def sweep(**changes):
  return lambda tmp: sweep_run.run_sweep(
      sweep_config(**changes), os.path.join(tmp, 'S'), data=sweep_data(),
      progress=False)


@functools.lru_cache(maxsize=None)
def sweep_data():
  return sweep_helpers.small_data()


# ---------------------------------------------------------------------------
# Set-up steps.


def then(*steps):
  def setup(tmp):
    for step in steps:
      step(tmp)
  return setup


def copy(root, *names):
  def step(tmp):
    for name in names:
      shutil.copytree(os.path.join(root, name), os.path.join(tmp, name),
                      symlinks=True)
  return step


def write(name, text):
  def step(tmp):
    path = os.path.join(tmp, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text)
  return step


def move(name, to):
  return lambda tmp: os.rename(os.path.join(tmp, name), os.path.join(tmp, to))


def link(name, target):
  """`name` replaced by a symlink to `target` (both under tmp)."""
  def step(tmp):
    path = os.path.join(tmp, name)
    if os.path.lexists(path):
      harness.remove(name)(tmp)
    os.symlink(os.path.join(tmp, target), path)
  return step


def moved_out(name, to):
  """`name` moved to `to`, outside the workdir, and linked from its place."""
  return then(move(name, to), link(name, to))


def make_dir(name):
  return lambda tmp: os.makedirs(os.path.join(tmp, name))


def edit_metadata(name, change: Callable[[str], str]):
  def step(tmp):
    path = os.path.join(tmp, name, rundir.METADATA_FILE)
    with open(path) as f:
      text = f.read()
    with open(path, 'w') as f:
      f.write(change(text))
  return step


def truncated(text):
  return text[:len(text) // 2]


def without_recorded_step(text):
  metadata = json.loads(text)
  del metadata['custom_metadata'][rundir.STEP_METADATA_KEY]
  return json.dumps(metadata)


def file_flag(name, flag):
  """chattr `flag` (+i, +a) on `name` (the test is skipped where chattr is
  refused: not root, or a file system without the flag)."""
  def step(tmp):
    path = os.path.join(tmp, name)
    if subprocess.run(['chattr', flag, path], capture_output=True,
                      check=False).returncode != 0:
      pytest.skip(f'chattr {flag} is refused here')
    _FLAGGED.append(path)
  return step


_FLAGGED = []


@pytest.fixture(autouse=True)
def _clear_file_flags():
  yield
  while _FLAGGED:
    subprocess.run(['chattr', '-i', '-a', _FLAGGED.pop()], check=False)


# ---------------------------------------------------------------------------
# Cases.


@dataclasses.dataclass
class Case:
  """`setup(tmp)`, then `command` (argv; 'TMP' replaced by tmp) exits
  `status`, or `call(tmp)` raises the exception of that status, with one
  message holding `fragments` ('TMP' replaced); nothing changes."""
  id: str
  fragments: tuple
  setup: Callable
  call: Optional[Callable] = None
  command: Optional[list] = None
  status: int = faults.EXIT_REFUSED


EXCEPTIONS = {faults.EXIT_REFUSED: ValueError,
              faults.EXIT_WRITE_FAILED: faults.WriteError}


def check_refused(case: Case, tmp: str, caplog) -> None:
  case.setup(tmp)
  before = harness.snapshot_around(tmp)
  time.sleep(0.01)  # A rewrite would show in the mtimes.
  fragments = [f.replace('TMP', tmp) for f in case.fragments]
  if case.command is not None:
    result = harness.run_script([a.replace('TMP', tmp) for a in case.command],
                                tmp)
    harness.assert_one_error(result, fragments, case.status)
    output = result.stdout + result.stderr
  else:
    with caplog.at_level(logging.INFO):
      with pytest.raises(EXCEPTIONS[case.status]) as info:
        case.call(tmp)
    message = str(info.value)
    assert '\n' not in message, message
    for fragment in fragments:
      assert fragment in message, (fragment, message)
    output = message + caplog.text
  assert SECRET not in output, output[-3000:]
  assert harness.snapshot_around(tmp) == before


# ---------------------------------------------------------------------------
# A trained run (3 epochs, a checkpoint each: steps 4, 8, 12) and a trained
# sweep (2 members at once, 2 epochs, the last checkpoint kept).


@pytest.fixture(scope='module')
def trained(tmp_path_factory, compilation_cache_dir):  # pylint: disable=redefined-outer-name
  del compilation_cache_dir  # Set up first: the run below fills it.
  root = str(tmp_path_factory.mktemp('trained'))
  write_cifar10(os.path.join(root, 'data'), NUM_TRAIN, NUM_TEST)
  train(root)
  return root


@pytest.fixture(scope='module')
def swept(tmp_path_factory, compilation_cache_dir):  # pylint: disable=redefined-outer-name
  del compilation_cache_dir
  root = str(tmp_path_factory.mktemp('swept'))
  sweep()(root)
  return root


# A case's set-up: (the fixture it copies from, what it copies, then steps).
def on_trained(*steps):
  return ('trained', ('W', 'data'), steps)


def on_data(*steps):
  return ('trained', ('data',), steps)


def on_swept(*steps):
  return ('swept', ('S',), steps)


def fresh(*steps):
  return (None, (), steps)


def member(tmp, index=0):
  return sorted(os.listdir(os.path.join(tmp, 'S', 'members')))[index]


def _member_moved_out(tmp):
  name = member(tmp)
  moved_out(f'S/members/{name}', 'elsewhere')(tmp)


NOT_THROUGH = 'padax does not write through one'

SYMLINK_CASES = [
    ('train.py: lock a symlink to a file outside (the issue)', on_trained(
        write('private.txt', SECRET + '\n'), link('W/lock', 'private.txt')),
     dict(command=train_py(num_epochs=4)), (
         "TMP/W/lock is a symlink (to 'TMP/private.txt'); " + NOT_THROUGH,
         'allowed: the file padax writes there')),
    ('train.py: lock a symlink, new workdir', on_data(
        write('private.txt', SECRET + '\n'), make_dir('W'),
        link('W/lock', 'private.txt')),
     dict(command=train_py()), ("TMP/W/lock is a symlink",)),
    ('sweep: lock a symlink (shares the code)', fresh(
        write('private.txt', SECRET + '\n'), make_dir('S'),
        link('S/lock', 'private.txt')),
     dict(call=sweep()), ("TMP/S/lock is a symlink (to 'TMP/private.txt')",)),
    ('metrics.jsonl a symlink to a file outside', on_trained(
        moved_out('W/metrics.jsonl', 'outside.jsonl')),
     dict(call=resume(num_epochs=4)), (
         "TMP/W/metrics.jsonl is a symlink (to 'TMP/outside.jsonl')",)),
    ('config.json a symlink', on_trained(
        moved_out('W/config.json', 'outside.json')),
     dict(call=resume()), ('TMP/W/config.json is a symlink',)),
    ('checkpoints a symlink to a folder outside', on_trained(
        moved_out('W/checkpoints', 'elsewhere')),
     dict(call=resume(num_epochs=4)), (
         "TMP/W/checkpoints is a symlink (to 'TMP/elsewhere'); " +
         NOT_THROUGH, 'allowed: the directory padax writes there')),
    ('a checkpoint a symlink (pruning would follow it)', on_trained(
        moved_out('W/checkpoints/12', 'elsewhere')),
     dict(call=resume(num_epochs=4)), (
         "TMP/W/checkpoints/12 is a symlink (to 'TMP/elsewhere')",)),
    ('sweep: summary.md a symlink', on_swept(
        write('notes.md', SECRET), link('S/summary.md', 'notes.md')),
     dict(call=sweep(num_epochs=3)), (
         "TMP/S/summary.md is a symlink (to 'TMP/notes.md')",)),
    ('sweep: a member folder a symlink', on_swept(_member_moved_out),
     dict(call=sweep(num_epochs=3)), ('is a symlink (to \'TMP/elsewhere\')',
                                      'allowed: the directory padax writes')),
]


CHECKPOINT_NAME_CASES = [
    ('the newest renamed to an older step, run extended (the issue)',
     on_trained(harness.remove('W/checkpoints/4', 'W/checkpoints/8'),
                move('W/checkpoints/12', 'W/checkpoints/8')),
     dict(command=train_py(num_epochs=4)), (
         'none of the checkpoints in TMP/W/checkpoints can be used '
         '(TMP/W/checkpoints/8: its name says step 8 but its metadata records '
         'step 12); allowed: checkpoints whose name, stored step and metadata '
         'agree',)),
    ('renamed to a later step', on_trained(
        harness.remove('W/checkpoints/4', 'W/checkpoints/8'),
        move('W/checkpoints/12', 'W/checkpoints/16')),
     dict(call=resume(num_epochs=5)), (
         'TMP/W/checkpoints/16: its name says step 16 but its metadata '
         'records step 12',)),
    ('sweep: the chunk\'s checkpoint renamed', on_swept(
        move(f'S/checkpoints/chunk-000/{2 * SWEEP_STEPS}',
             f'S/checkpoints/chunk-000/{SWEEP_STEPS}')),
     dict(call=sweep(num_epochs=3)), (
         'none of the checkpoints in TMP/S/checkpoints/chunk-000 can be used',
         f'its name says step {SWEEP_STEPS} but its metadata records step '
         f'{2 * SWEEP_STEPS}')),
]

FOREIGN_CASES = [
    ('train.py: a user\'s lock file (the issue)', on_data(
        write('W/lock', SECRET + '\n')),
     dict(command=train_py()), (
         'TMP/W/lock was not written by padax (it holds no padax lock '
         'record); allowed: the lock file padax writes there: move it away',)),
    ('sweep: a user\'s lock file', fresh(write('S/lock', SECRET + '\n')),
     dict(call=sweep()), ('TMP/S/lock was not written by padax',)),
    ('a user\'s empty lock file', on_data(write('W/lock', '')),
     dict(call=resume()), (
         'TMP/W/lock was not written by padax (an empty file in a directory '
         "without padax's config.json)",)),
    ('a user\'s lock file in a padax workdir', on_trained(
        write('W/lock', SECRET + '\n')),
     dict(call=resume(num_epochs=4)), ('TMP/W/lock was not written by padax',)),
    ('sweep: a user\'s summary.md (the issue)', fresh(
        write('S/summary.md', SECRET)),
     dict(call=sweep()), (
         "workdir='TMP/S' holds summary.md but no config.json: it is not a "
         'padax workdir',)),
    ('a user\'s profile folder', on_data(write('W/profile/trace', SECRET)),
     dict(call=resume()), ("workdir='TMP/W' holds profile but no "
                           'config.json',)),
]

METADATA_CASES = [
    ('sweep: the chunk\'s metadata truncated mid-JSON (the issue)', on_swept(
        edit_metadata(f'S/checkpoints/chunk-000/{2 * SWEEP_STEPS}',
                      truncated)),
     dict(call=sweep(num_epochs=3)), (
         'none of the checkpoints in TMP/S/checkpoints/chunk-000 can be used '
         f'(TMP/S/checkpoints/chunk-000/{2 * SWEEP_STEPS}: its '
         '_CHECKPOINT_METADATA is not valid JSON (',)),
    ('train.py: the only checkpoint\'s metadata truncated', on_trained(
        harness.remove('W/checkpoints/4', 'W/checkpoints/8'),
        edit_metadata('W/checkpoints/12', truncated)),
     dict(command=train_py(num_epochs=4)), (
         'TMP/W/checkpoints/12: its _CHECKPOINT_METADATA is not valid JSON',)),
    ('the metadata deleted', on_trained(
        harness.remove('W/checkpoints/4', 'W/checkpoints/8',
               'W/checkpoints/12/_CHECKPOINT_METADATA')),
     dict(call=resume(num_epochs=4)), (
         'TMP/W/checkpoints/12: its _CHECKPOINT_METADATA is missing',)),
    ('the metadata a JSON list', on_trained(
        harness.remove('W/checkpoints/4', 'W/checkpoints/8'),
        edit_metadata('W/checkpoints/12', lambda text: '[]')),
     dict(call=resume(num_epochs=4)), (
         'its _CHECKPOINT_METADATA is not the JSON object Orbax writes',)),
]


def _fill_disk(tmp):
  disk = os.path.join(tmp, 'disk')
  os.makedirs(disk)
  if os.geteuid() != 0 or subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', disk],
      capture_output=True, check=False).returncode != 0:
    pytest.skip('cannot mount a small tmpfs (needs root)')
  _MOUNTED.append(disk)
  fd = os.open(os.path.join(disk, 'filler'), os.O_WRONLY | os.O_CREAT)
  try:
    while os.write(fd, b'\0' * 4096):
      pass
  except OSError:
    pass  # Full.
  finally:
    os.close(fd)


_MOUNTED = []


@pytest.fixture(autouse=True)
def _unmount():
  yield
  while _MOUNTED:
    subprocess.run(['umount', _MOUNTED.pop()], check=False)


BEFORE_WRITE_CASES = [
    ('train.py: a full disk at the lock (the issue)', on_data(_fill_disk),
     dict(command=train_py('disk/W'), status=faults.EXIT_WRITE_FAILED), (
         'TMP/disk/W/lock could not be written (No space left on device); '
         'the run did not start and nothing was written',)),
    ('train.py --profile: profile a file (the issue)', on_trained(
        write('W/profile', SECRET)),
     dict(command=train_py(num_epochs=4) + ['--profile']), (
         'TMP/W/profile is not a directory; allowed with --profile: the '
         'directory padax writes the trace into',)),
    ('--profile: profile a symlink', on_trained(
        make_dir('traces'), link('W/profile', 'traces')),
     dict(call=lambda tmp: trainer.train_and_evaluate(
         small_config(os.path.join(tmp, 'data'), num_epochs=4),
         os.path.join(tmp, 'W'), progress=False, profile_steps=5)), (
             'TMP/W/profile is a symlink',)),
    ('an immutable metrics.jsonl, run extended (the issue)', on_trained(
        file_flag('W/metrics.jsonl', '+i')),
     dict(call=resume(num_epochs=4)), (
         'TMP/W/metrics.jsonl cannot be replaced: it is immutable (chattr '
         '+i); allowed: a file padax can replace: clear the flag (chattr -i)',
     )),
    ('an append-only config.json', on_trained(
        file_flag('W/config.json', '+a')),
     dict(call=resume(num_epochs=4)), (
         'TMP/W/config.json cannot be replaced: it is append-only',)),
    ('sweep: summary.json a directory', on_swept(
        harness.remove('S/summary.json'),
        write('S/summary.json/notes', SECRET)),
     dict(call=sweep(num_epochs=3)), (
         'TMP/S/summary.json is a directory; allowed: the file padax writes '
         'there',)),
    ('sweep: a chunk\'s checkpoint folder a file', on_swept(
        harness.remove('S/checkpoints/chunk-000'),
        write('S/checkpoints/chunk-000', SECRET)),
     dict(call=sweep(num_epochs=3)), (
         'TMP/S/checkpoints/chunk-000 is not a directory; allowed: the '
         'directory of a chunk\'s checkpoints',)),
    ('sweep: an immutable summary.json', on_swept(
        file_flag('S/summary.json', '+i')),
     dict(call=sweep(num_epochs=3)), (
         'TMP/S/summary.json cannot be replaced: it is immutable',)),
]

TABLES = {'1 symlinks': SYMLINK_CASES,
          '2 checkpoint names': CHECKPOINT_NAME_CASES,
          '3 files padax did not write': FOREIGN_CASES,
          '4 damaged checkpoint metadata': METADATA_CASES,
          '7 failures before the first write': BEFORE_WRITE_CASES}
ALL_CASES = [(table, c) for table, cases in TABLES.items() for c in cases]


@pytest.mark.parametrize('table,case', ALL_CASES,
                         ids=[f'{t[0]}: {c[0]}' for t, c in ALL_CASES])
def test_refused_with_one_message_and_nothing_written(
    tmp_path, request, caplog, table, case):
  del table
  name, (fixture, names, steps), action, fragments = case
  # Only the fixture the case copies from is made.
  root = request.getfixturevalue(fixture) if fixture else ''
  check_refused(Case(name, fragments, then(copy(root, *names), *steps),
                     **action), str(tmp_path), caplog)


# ---------------------------------------------------------------------------
# What a run survives: it ends as an uninterrupted run would.


def assert_same_as_trained(tmp, trained_root):
  """tmp/W ends as the fixture's run: its newest checkpoint bit for bit, the
  same metrics rows (timings aside)."""
  a, b = os.path.join(tmp, 'W'), os.path.join(trained_root, 'W')
  harness.assert_same_final_state(a, b, same_kept=False)
  rows = harness.metrics_files(a)['.']
  assert without_timing(rows) == without_timing(
      harness.metrics_files(b)['.'])


SURVIVED_CASES = [
    # 2. Names swapped: each is set aside, the run resumes from step 4.
    ('two checkpoints\' names swapped', then(
        move('W/checkpoints/8', 'W/swap'),
        move('W/checkpoints/12', 'W/checkpoints/8'),
        move('W/swap', 'W/checkpoints/12')),
     ['its name says step 12 but its metadata records step 8',
      'its name says step 8 but its metadata records step 12'],
     ['unreadable-12', 'unreadable-8']),
    # 2. A checkpoint of before padax recorded its step: its state tells.
    ('an unrecorded checkpoint renamed', then(
        harness.remove('W/checkpoints/8'),
        edit_metadata('W/checkpoints/12', without_recorded_step),
        move('W/checkpoints/12', 'W/checkpoints/8')),
     ['its name says step 8 but its state holds step 12'],
     ['unreadable-8']),
    # 4. The newest checkpoint's metadata damaged: set aside with the reason.
    ('the newest checkpoint\'s metadata truncated', edit_metadata(
        'W/checkpoints/12', truncated),
     ['Checkpoint TMP/W/checkpoints/12 is unreadable (ValueError: its '
      '_CHECKPOINT_METADATA is not valid JSON'], ['unreadable-12']),
]


@pytest.mark.parametrize('name,change,reasons,aside', SURVIVED_CASES,
                         ids=[c[0] for c in SURVIVED_CASES])
def test_a_checkpoint_not_used_is_set_aside_and_the_run_ends_identical(
    tmp_path, trained, caplog, name, change, reasons, aside):
  del name
  tmp = str(tmp_path)
  then(copy(trained, 'W', 'data'), change)(tmp)
  with caplog.at_level(logging.WARNING):
    resume()(tmp)
  for reason in reasons:
    assert reason.replace('TMP', tmp) in caplog.text, caplog.text
  names = sorted(os.listdir(os.path.join(tmp, 'W', 'checkpoints')))
  assert [n for n in names if n.startswith('unreadable-')] == aside, names
  assert_same_as_trained(tmp, trained)


def test_files_padax_did_not_write_are_left_alone(tmp_path, trained):
  """A user's .tmp-draft.txt (the issue) and a .tmp-x folder (the issue's
  IsADirectoryError): a run neither removes nor fails on them."""
  tmp = str(tmp_path)
  then(copy(trained, 'data'), write('W/.tmp-draft.txt', SECRET),
       make_dir('W/.tmp-x'))(tmp)
  train(tmp, num_epochs=1)
  then(write('W/.tmp-other', SECRET), make_dir('W/.tmp-padax-0123456789abcdef')
       )(tmp)
  train(tmp, num_epochs=3)  # A resume: its start clears padax's tmp files.
  for name in ('.tmp-draft.txt', '.tmp-other'):
    with open(os.path.join(tmp, 'W', name)) as f:
      assert f.read() == SECRET
  assert os.path.isdir(os.path.join(tmp, 'W', '.tmp-x'))
  assert os.path.isdir(os.path.join(tmp, 'W', '.tmp-padax-0123456789abcdef'))
  assert_same_as_trained(tmp, trained)


def test_at_least_three_cases_per_class():
  counts = {name: len(cases) for name, cases in TABLES.items()}
  counts['2 checkpoint names'] += 2   # Set aside, the run goes on.
  # Left alone; in use, not foreign; two records taken over.
  counts['3 files padax did not write'] += 4
  counts['4 damaged checkpoint metadata'] += 1
  assert all(n >= 3 for n in counts.values()), counts


def test_a_lock_held_while_empty_is_in_use_not_foreign(tmp_path):
  """The instant a run has created its lock and not yet written its record:
  another run is told the workdir is in use; the first, ending without
  having written anything else, leaves nothing behind."""
  workdir = str(tmp_path / 'W')
  lock = run_lock.RunLock(workdir)
  lock.acquire()
  try:
    os.truncate(lock.path, 0)
    assert rundir.lock_file_problem(lock.path, workdir) == ''
    with pytest.raises(ValueError, match=r'is in use by another run \(holder '
                       r'unknown\)'):
      run_lock.RunLock(workdir).acquire()
  finally:
    lock.release()
  assert os.listdir(str(tmp_path)) == []


def test_a_killed_runs_record_is_taken_over_and_quoted(tmp_path, trained,
                                                       caplog):
  """A record padax wrote, in today's format or round 2's, is recognised:
  taken over, and quoted (it is padax's)."""
  tmp = str(tmp_path)
  for record in ('pid 4242 on host-a since 2026-01-01T00:00:00: train.py',
                 'padax lock: pid 4343 on host-b since 2026-01-02T00:00:00: '
                 'sweep.py'):
    then(copy(trained, 'W', 'data') if not os.path.exists(
        os.path.join(tmp, 'W')) else (lambda t: None),
         write('W/lock', record + '\n'))(tmp)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      resume()(tmp)
    quoted = record.replace('padax lock: ', '')
    assert (f'Took over the lock of {tmp}/W from a run that ended without '
            f'releasing it (killed?): {quoted}') in caplog.text, caplog.text
    with open(os.path.join(tmp, 'W', 'lock')) as f:
      assert f.read() == ''  # Released.
