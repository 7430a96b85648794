"""Reliability, round 2 (issue 17): a workdir knows its data, never loses
history, and every refusal writes nothing.

One table per class of the issue (items 1-9). Each refusal asserts the exit
status (or the ValueError of the Python API, which train.py and sweep.py turn
into exit 2), the one message naming the file / key / value and what is
allowed, no traceback, and a before/after snapshot of every file under the
test's folder (nothing created, changed or removed). The data are tiny CIFAR-10
copies in the canonical python layout written into tmp_path (no shared data),
so the data-identity cases are end to end. Subprocesses (about 5-10 s each)
only where the command line is under test.
"""

import bisect
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Optional

import ml_collections
import numpy as np
import pytest

from configs import quick
from sweeps import run as sweep_run
from sweeps.configs import cpu_subset
from tests.conftest import ROOT
from tests.fault_harness import assert_one_error
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import
from tests.fault_harness import remove
from tests.fault_harness import restore_raw
from tests.helpers import snapshot
from tests.helpers import without_timing
from tests.helpers import write_cifar10
from training import input_pipeline
from training import optimizers
from training import trainer
from training import rundir

TRAIN_PY = os.path.join(ROOT, 'train.py')
SWEEP_PY = os.path.join(ROOT, 'sweep.py')
REPORT_PY = os.path.join(ROOT, 'report.py')
MOCKED_TRAIN = os.path.join(ROOT, 'tests', 'e2e_scripts', 'mocked_train.py')
QUICK = os.path.join(ROOT, 'configs', 'quick.py')
CPU_SUBSET = os.path.join(ROOT, 'sweeps', 'configs', 'cpu_subset.py')

# Every in-process run of this module (the trained fixture, the resumes, the
# umask runs) compiles the same few programs: the session's persistent
# compilation cache compiles each once (a run then costs ~2 s, not ~10 s).
pytestmark = [pytest.mark.usefixtures('compilation_cache_dir'),
              pytest.mark.slow]

NUM_TRAIN, NUM_TEST, BATCH = 64, 32, 16
STEPS_PER_EPOCH = NUM_TRAIN // BATCH
# The small run every case trains or resumes (3 epochs in the fixture).
SMALL = {'model': 'tiny_cnn', 'batch_size': BATCH, 'eval_batch_size': NUM_TEST,
         'num_epochs': 3, 'checkpoint_every_epochs': 1, 'keep_checkpoints': 3,
         'data_source': 'local', 'optimizer.lr_milestones': (1,)}


def small_config(data_dir='', **changes) -> ml_collections.ConfigDict:
  """configs/quick.py with SMALL, `data_dir` and `changes`, as a plain
  ConfigDict (any value goes)."""
  d = quick.get_config().to_dict()
  for key, value in {**SMALL, 'data_dir': data_dir, **changes}.items():
    *parents, leaf = key.split('.')
    node = d
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return ml_collections.ConfigDict(d)


def small_flags(data_dir, **changes) -> list:
  """The same config as train.py flags."""
  values = {**SMALL, 'data_dir': data_dir, **changes}
  return ['--config', QUICK, '--progress=false'] + [
      f'--config.{k}={v}' for k, v in values.items()]


def train(workdir, data_dir, **changes):
  return trainer.train_and_evaluate(small_config(data_dir, **changes), workdir,
                                    progress=False)


def in_memory_data(num_train=NUM_TRAIN, num_test=NUM_TEST, seed=0):
  rng = np.random.default_rng(seed)

  def split(n):
    return input_pipeline.Split(
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, n).astype(np.int32))
  return input_pipeline.CifarData(split(num_train), split(num_test), 10,
                                  'cifar10', 'in-memory test data')


def run(argv, cwd, env=None):
  return subprocess.run(
      [sys.executable, *argv], cwd=str(cwd), capture_output=True, text=True,
      timeout=300, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})})


@dataclasses.dataclass
class Case:
  """A refusal: `setup(tmp)` prepares tmp (a copy of a trained workdir at
  tmp/W and its data at tmp/data where the table says so), then `command`
  (train.py etc. argv, run in tmp; 'TMP' is replaced by tmp) or
  `call(tmp)` (the Python API) is refused with `fragments` ('TMP' replaced)."""
  id: str
  fragments: tuple
  call: Optional[Callable] = None
  command: Optional[list] = None
  setup: Optional[Callable] = None
  # Whether tmp starts with a copy of the trained workdir and its data.
  on_trained: bool = False


def TCase(*args, **kwargs) -> Case:  # pylint: disable=invalid-name
  """A Case on a copy of the trained workdir and its data."""
  return Case(*args, **kwargs, on_trained=True)


def with_trained(case: Case, trained_root: str) -> Case:
  if not case.on_trained:
    return case
  steps = [copy_trained(trained_root)] + ([case.setup] if case.setup else [])
  return dataclasses.replace(case, setup=then(*steps))


def check_case(case: Case, tmp: str) -> None:
  assert isinstance(case.fragments, tuple) and case.fragments, case
  if case.setup is not None:
    case.setup(tmp)
  before = snapshot(tmp)
  time.sleep(0.01)  # A rewrite would show in the mtimes.
  fragments = [f.replace('TMP', tmp) for f in case.fragments]
  if case.command is not None:
    assert_one_error(run([a.replace('TMP', tmp) for a in case.command], tmp),
                     fragments)
  else:
    with pytest.raises(ValueError) as info:
      case.call(tmp)
    message = str(info.value)
    assert '\n' not in message, message
    for fragment in fragments:
      assert fragment in message, (fragment, message)
  assert snapshot(tmp) == before


# ---------------------------------------------------------------------------
# A trained workdir (3 epochs, a checkpoint each) on tiny local data.


@pytest.fixture(scope='module')
def trained(tmp_path_factory, compilation_cache_dir):  # pylint: disable=redefined-outer-name
  del compilation_cache_dir  # Set up first: the run below fills it.
  root = str(tmp_path_factory.mktemp('trained'))
  data = write_cifar10(os.path.join(root, 'data'), NUM_TRAIN, NUM_TEST)
  train(os.path.join(root, 'W'), data)
  return root


def copy_trained(trained_root):
  """set-up: tmp/W and tmp/data, copies of the trained ones."""
  def setup(tmp):
    for name in ('W', 'data'):
      shutil.copytree(os.path.join(trained_root, name),
                      os.path.join(tmp, name), symlinks=True)
  return setup


def then(*steps):
  def setup(tmp):
    for step in steps:
      step(tmp)
  return setup


def resume(**changes):
  return lambda tmp: train(os.path.join(tmp, 'W'), os.path.join(tmp, 'data'),
                           **changes)


def write(name, text):
  def step(tmp):
    path = os.path.join(tmp, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text)
  return step


def make_dir(name):
  def step(tmp):
    path = os.path.join(tmp, name)
    if os.path.exists(path):
      os.remove(path)
    os.makedirs(path)
  return step


def replace_data(num_train=NUM_TRAIN, num_test=NUM_TEST, seed=0, change=None):
  def step(tmp):
    shutil.rmtree(os.path.join(tmp, 'data'))
    write_cifar10(os.path.join(tmp, 'data'), num_train, num_test, seed,
                  change=change)
  return step


def stored_data_dir(name):
  """W/config.json's data_dir set to tmp/`name` (as a workdir without
  data.json compares data_dir)."""
  def step(tmp):
    path = os.path.join(tmp, 'W', 'config.json')
    with open(path) as f:
      config = json.load(f)
    config['data_dir'] = os.path.join(tmp, name)
    with open(path, 'w') as f:
      json.dump(config, f)
  return step


def keep_lines(name, keep):
  def step(tmp):
    path = os.path.join(tmp, name)
    with open(path) as f:
      lines = f.read().splitlines(keepends=True)
    with open(path, 'w') as f:
      f.writelines(keep(lines))
  return step


# ---------------------------------------------------------------------------
# 1. The workdir knows its data.


def _first_label_changed(batches):
  labels = batches['data_batch_1'][b'labels']
  labels[0] = (labels[0] + 1) % 10


DATA_CASES = [
    ('smaller set (the issue)', replace_data(num_train=48), (
        'workdir=\'TMP/W\' was trained on other data: TMP/W/data.json records '
        'cifar10: 64 train and 32 test examples',
        '; the data now (local CIFAR-10 python folder '
        'TMP/data/cifar-10-batches-py) has cifar10: 48 train and 32 test',
        'allowed: the data the run was trained on')),
    ('still smaller set (the issue: "Resumed from step 117")',
     replace_data(num_train=16), ('records cifar10: 64 train', 'has cifar10: '
                                  '16 train and 32 test examples')),
    ('same sizes, other images', replace_data(seed=1), (
        'was trained on other data', 'has cifar10: 64 train and 32 test '
        'examples, fingerprint sha256:')),
    ('one label changed', replace_data(change=_first_label_changed), (
        'was trained on other data',)),
    ('a test example more', replace_data(num_test=33), (
        'has cifar10: 64 train and 33 test examples',)),
    ('no data.json (a workdir of before), smaller set',
     then(remove('W/data.json'), stored_data_dir('data'),
          replace_data(num_train=48)), (
         'TMP/W/metrics.jsonl: the row of epoch 1 ends at step 4, but this '
         'data (48 training examples, batch_size 16: 3 steps per epoch) puts '
         'it at step 3: the run was trained on other data',)),
]


@pytest.mark.parametrize('name,change,fragments', DATA_CASES,
                         ids=[c[0] for c in DATA_CASES])
def test_other_data_is_refused_naming_both(tmp_path, trained, name, change,
                                           fragments):
  del name
  check_case(Case('', fragments, call=resume(),
                  setup=then(copy_trained(trained), change)), str(tmp_path))


def test_train_py_refuses_other_data(tmp_path, trained):
  check_case(Case('', (
      'was trained on other data: TMP/W/data.json records cifar10: 64 train',
      'has cifar10: 48 train'),
      command=[TRAIN_PY, *small_flags('TMP/data'), '--workdir=TMP/W'],
      setup=then(copy_trained(trained), replace_data(num_train=48))),
      str(tmp_path))


def test_data_json_records_the_data(trained):
  with open(os.path.join(trained, 'W', 'data.json')) as f:
    recorded = json.load(f)
  data = input_pipeline.load_cifar('cifar10', source='local',
                                   data_dir=os.path.join(trained, 'data'))
  assert recorded == input_pipeline.fingerprint(data)
  assert recorded['train_examples'] == NUM_TRAIN
  assert recorded['test_examples'] == NUM_TEST
  # The same arrays from anywhere give the same identity; one pixel of one
  # sampled byte changes it.
  copy = dataclasses.replace(data, source='elsewhere')
  assert input_pipeline.fingerprint(copy) == recorded
  images = data.train.images.copy()
  images[5, 0, 0, 0] ^= 1
  changed = dataclasses.replace(data, train=input_pipeline.Split(
      images, data.train.labels))
  assert input_pipeline.fingerprint(changed) != recorded


def test_same_data_spelled_differently_resumes_bit_identically(
    tmp_path, monkeypatch):
  data = write_cifar10(str(tmp_path / 'data'), NUM_TRAIN, NUM_TEST)
  os.symlink(data, str(tmp_path / 'link'))
  whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
  train(whole, data, num_epochs=2)
  monkeypatch.chdir(tmp_path)
  train(parts, data + '/', num_epochs=1)          # a trailing /
  train(parts, 'data', num_epochs=2)              # relative
  before = snapshot(parts)
  time.sleep(0.01)
  train(parts, str(tmp_path / 'link'), num_epochs=2)   # a symlink: done
  after = snapshot(parts)
  changed = {k for k in set(before) | set(after)
             if before.get(k) != after.get(k)}
  # Nothing trained; only the lock (holder) and config.json (the spelling).
  assert changed <= {'lock', 'config.json', '.'}, changed
  for name in ('data.json',):
    assert (tmp_path / 'whole' / name).read_text() == (
        tmp_path / 'parts' / name).read_text()
  rows = [rundir.read_rows(os.path.join(d, 'metrics.jsonl'))
          for d in (whole, parts)]
  assert without_timing(rows[0]) == without_timing(rows[1])
  step = 2 * STEPS_PER_EPOCH
  a = restore_raw(os.path.join(whole, 'checkpoints'), step)
  b = restore_raw(os.path.join(parts, 'checkpoints'), step)
  import jax  # pylint: disable=g-import-not-at-top
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------
# 2. History is never rewritten silently.


def _drop_line_2(lines):
  return lines[:1] + lines[2:]


HISTORY_CASES = [
    ('metrics.jsonl deleted, checkpoints kept (the issue)',
     remove('W/metrics.jsonl'), resume(), (
         'TMP/W/metrics.csv has the rows of 3 epochs but '
         'TMP/W/metrics.jsonl only 0: resuming would overwrite the rows of '
         'epochs 1-3; allowed: restore metrics.jsonl',)),
    ('both metrics files deleted, checkpoints kept',
     remove('W/metrics.jsonl', 'W/metrics.csv'), resume(), (
         'TMP/W/metrics.jsonl has no rows but TMP/W/checkpoints holds step 12 '
         '(epoch 3): the rows of epochs 1-3 are missing',
         'allowed: restore metrics.jsonl, or move TMP/W/checkpoints away')),
    ('checkpoints/ deleted, metrics kept (the issue)',
     remove('W/checkpoints'), resume(), (
         'TMP/W/checkpoints holds no checkpoint but TMP/W/metrics.jsonl has '
         'rows up to epoch 3, and the checkpoint of epoch 2 is gone: '
         'resuming would start over from epoch 1 and rewrite the rows of '
         'epochs 1-3; allowed: restore the checkpoints',)),
    ('the two newest checkpoints deleted',
     remove('W/checkpoints/8', 'W/checkpoints/12'), resume(), (
         'TMP/W/checkpoints holds step 4 (epoch 1) but', 'the checkpoint of '
         'epoch 2 is gone', 'rewrite the rows of epochs 2-3')),
    ('metrics truncated to epoch 1',
     then(keep_lines('W/metrics.jsonl', lambda l: l[:1]),
          keep_lines('W/metrics.csv', lambda l: l[:2])), resume(), (
              'TMP/W/metrics.jsonl has rows up to epoch 1 but '
              'TMP/W/checkpoints holds step 12 (epoch 3): the rows of epochs '
              '2-3 are missing',)),
    ('a row missing in the middle',
     keep_lines('W/metrics.jsonl', _drop_line_2), resume(), (
         'TMP/W/metrics.jsonl: line 2 is the row of epoch 3, where epoch 2 '
         'was due; allowed: the rows of epochs 1, 2, ... in order',)),
    ('num_epochs shortened below the epochs done (the issue)', None,
     resume(num_epochs=2), (
         'num_epochs=2 is below the 3 epochs done in TMP/W (TMP/W/checkpoints '
         'holds step 12 (epoch 3); metrics up to epoch 3); allowed: '
         'num_epochs >= 3, or a new workdir for a shorter run.',)),
]


@pytest.mark.parametrize('name,change,call,fragments', HISTORY_CASES,
                         ids=[c[0] for c in HISTORY_CASES])
def test_inconsistent_history_is_refused(tmp_path, trained, name, change,
                                         call, fragments):
  del name
  check_case(Case('', fragments, call=call,
                  setup=then(copy_trained(trained), *(
                      [change] if change else []))), str(tmp_path))


def test_train_py_refuses_a_shorter_run(tmp_path, trained):
  check_case(Case('', ('num_epochs=2 is below the 3 epochs done',
                       'allowed: num_epochs >= 3'),
                  command=[TRAIN_PY, *small_flags('TMP/data', num_epochs=2),
                           '--workdir=TMP/W'],
                  setup=copy_trained(trained)), str(tmp_path))


def test_rerunning_a_finished_run_changes_no_file(tmp_path, trained):
  then(copy_trained(trained), stored_data_dir('data'))(str(tmp_path))
  before = snapshot(str(tmp_path))
  time.sleep(0.01)
  resume()(str(tmp_path))
  after = snapshot(str(tmp_path))
  changed = {k for k in set(before) | set(after)
             if before.get(k) != after.get(k)}
  assert changed <= {os.path.join('W', 'lock')}, changed


# ---------------------------------------------------------------------------
# 3. An empty --workdir (an unset shell variable).

EMPTY = ("workdir='' is empty (an unset shell variable?); allowed: the path "
         'of a directory, existing or not, that this user can write to.')

EMPTY_CASES = [
    Case('train.py --workdir= (the issue)', (EMPTY,),
         command=[TRAIN_PY, '--config', QUICK, '--workdir=']),
    Case('sweep.py --workdir=', (EMPTY,),
         command=[SWEEP_PY, '--config', CPU_SUBSET, '--workdir=']),
    Case('train.py --workdir of blanks', (
        "workdir='  ' is empty (an unset shell variable?)",),
         command=[TRAIN_PY, '--config', QUICK, '--workdir=  ']),
    Case('report.py --out=', (
        "--out='' is empty (an unset shell variable?)",),
         command=[REPORT_PY, 'TMP/W', '--out='], on_trained=True),
    Case('api: train_and_evaluate(config, "")', (EMPTY,),
         call=lambda tmp: trainer.train_and_evaluate(
             small_config(), '', data=in_memory_data(), progress=False)),
    Case('api: run_sweep(config, "")', (EMPTY,),
         call=lambda tmp: sweep_run.run_sweep(cpu_subset.get_config(), '')),
    Case('api: workdir None', ('workdir=None is empty',),
         call=lambda tmp: trainer.train_and_evaluate(
             small_config(), None, data=in_memory_data(), progress=False)),
]


@pytest.mark.parametrize('case', EMPTY_CASES, ids=[c.id for c in EMPTY_CASES])
def test_empty_workdir_is_refused(tmp_path, trained, case):
  check_case(with_trained(case, trained), str(tmp_path))


# ---------------------------------------------------------------------------
# 4. Every numeric key has a finite range, checked before anything is written.


def api(**changes):
  return lambda tmp: trainer.train_and_evaluate(
      small_config(**changes), os.path.join(tmp, 'W'), data=in_memory_data(),
      progress=False)


RANGE_CASES = [
    Case('eps=inf', ('optimizer (padam): eps=inf is out of range; allowed: '
                     'eps >= 0, finite.',), call=api(**{'optimizer.eps': np.inf})),
    Case('learning_rate=inf', (
        'learning_rate=inf is out of range; allowed: learning_rate >= 0, '
        'finite',), call=api(**{'optimizer.learning_rate': np.inf})),
    Case('weight_decay=inf', (
        'weight_decay=inf is out of range; allowed: weight_decay >= 0, '
        'finite.',), call=api(**{'optimizer.weight_decay': np.inf})),
    # The harness's own range for momentum (issue 24), no longer b1's.
    Case('sgdm momentum=nan', (
        'optimizer (sgdm): momentum=nan is out of range; allowed: 0 <= '
        'momentum < 1, finite.',),
         call=api(**{'optimizer.name': 'sgdm', 'optimizer.momentum': np.nan})),
    Case('lr_factor=inf', (
        'optimizer.lr_factor=inf is out of range; allowed: 0 <= '
        'optimizer.lr_factor <= 1.',), call=api(**{'optimizer.lr_factor': np.inf})),
    Case('lr_factor=nan', ('optimizer.lr_factor=nan is out of range',),
         call=api(**{'optimizer.lr_factor': np.nan})),
    Case('lr_factor=10', ('optimizer.lr_factor=10 is out of range',),
         call=api(**{'optimizer.lr_factor': 10})),
    Case('p_decay_factor=inf', (
        'optimizer.p_decay_factor=inf is out of range; allowed: 0 <= '
        'optimizer.p_decay_factor <= 1.',),
         call=api(**{'optimizer.p_decay_factor': np.inf})),
    Case('seed=2**63 (the issue)', (
        'seed=9223372036854775808 is not allowed; allowed: an integer, 0 <= '
        'seed <= 4294967295.',), call=api(seed=2**63)),
    Case('seed=2**32', ('seed=4294967296 is not allowed',), call=api(seed=2**32)),
    Case('eval_batch_size=10**12 (the issue)', (
        'eval_batch_size=1000000000000 is not allowed; allowed: an integer, '
        '1 <= eval_batch_size <= 65536.',), call=api(eval_batch_size=10**12)),
    Case('batch_size=10**9', ('batch_size=1000000000 is not allowed',),
         call=api(batch_size=10**9)),
    Case('batch_size above the training examples', (
        'batch_size=128 is larger than the 64 training examples of in-memory '
        'test data; allowed: 1 <= batch_size <= 64.',), call=api(batch_size=128)),
    Case('eval_batch_size above the test examples', (
        'eval_batch_size=64 is larger than the 32 test examples of in-memory '
        'test data (a batch beyond them is only padding); allowed: 1 <= '
        'eval_batch_size <= 32.',), call=api(eval_batch_size=64)),
    Case('num_epochs=10**9', (
        'num_epochs=1000000000 is not allowed; allowed: an integer, 1 <= '
        'num_epochs <= 10000.',), call=api(num_epochs=10**9)),
    Case('checkpoint_every_epochs=10**9', (
        'checkpoint_every_epochs=1000000000 is not allowed',),
         call=api(checkpoint_every_epochs=10**9)),
    Case('keep_checkpoints=10**6', (
        'keep_checkpoints=1000000 is not allowed; allowed: an integer, 1 <= '
        'keep_checkpoints <= 1000.',), call=api(keep_checkpoints=10**6)),
    Case('max_consecutive_skips=10**9', (
        'max_consecutive_skips=1000000000 is not allowed',),
         call=api(max_consecutive_skips=10**9)),
    Case('p_decay_every_epochs=10**6', (
        'optimizer.p_decay_every_epochs=1000000 is not allowed',),
         call=api(**{'optimizer.p_decay_every_epochs': 10**6})),
    Case('milestone 10**6', (
        'optimizer.lr_milestones=(1000000,) is not allowed (1000000); '
        'allowed: epochs, integers >= 1 and <= 10000',),
         call=api(**{'optimizer.lr_milestones': (10**6,)})),
    Case('sweep seed 2**63', (
        'sweep.seed=(0, 9223372036854775808) is not allowed '
        '(9223372036854775808 is above 4294967295)',),
         call=lambda tmp: sweep_run.run_sweep(
             _sweep(seed=(0, 2**63)), os.path.join(tmp, 'W'))),
    Case('sweep: eval_batch_size above the test examples', (
        'eval_batch_size=64 is larger than the 32 test examples',),
         call=lambda tmp: sweep_run.run_sweep(
             _sweep(eval_batch_size=64), os.path.join(tmp, 'W'),
             data=in_memory_data(), progress=False)),
    Case('train.py eval_batch_size=10**12 (the issue)', (
        'eval_batch_size=1000000000000 is not allowed; allowed: an integer, '
        '1 <= eval_batch_size <= 65536.',),
         command=[TRAIN_PY, '--config', QUICK, '--workdir=TMP/W',
                  '--config.eval_batch_size=1000000000000']),
    Case('train.py seed=2**63 (the issue)', (
        'seed=9223372036854775808 is not allowed',),
         command=[TRAIN_PY, '--config', QUICK, '--workdir=TMP/W',
                  '--config.seed=9223372036854775808']),
]


def _sweep(eval_batch_size=None, **sweep):
  config = cpu_subset.get_config()
  for key, value in sweep.items():
    config.sweep[key] = value
  if eval_batch_size is not None:
    config.eval_batch_size = eval_batch_size
    config.batch_size = 16
    config.model = 'tiny_cnn'
  return config


@pytest.mark.parametrize('case', RANGE_CASES, ids=[c.id for c in RANGE_CASES])
def test_out_of_range_values_are_refused(tmp_path, case):
  check_case(case, str(tmp_path))


def multistep_lr(base, milestones, gamma, epoch):
  """torch.optim.lr_scheduler.MultiStepLR's closed form (its
  _get_closed_form_lr): base * gamma ** (milestones passed, with repeats)."""
  return base * gamma ** bisect.bisect_right(sorted(milestones), epoch)


@pytest.mark.parametrize('milestones', [(2, 2), (1, 3, 3, 3), (3, 1), (2,)])
def test_lr_milestones_compound_as_multisteplr(milestones):
  schedule = optimizers.step_schedule(0.1, milestones, 0.1, steps_per_epoch=5)
  for epoch in range(6):
    for step in (epoch * 5, epoch * 5 + 4):
      np.testing.assert_allclose(
          float(schedule(step)), multistep_lr(0.1, milestones, 0.1, epoch),
          rtol=1e-6)
  if milestones == (2, 2):  # The case: x0.01, not x0.1.
    np.testing.assert_allclose(float(schedule(10)), 0.001, rtol=1e-6)


# ---------------------------------------------------------------------------
# 5. No write before a refusal; 6. no traceback on a workdir file padax did
# not write; 7. checkpoints that cannot be written are found up front.


def _sweep_call(tmp):
  return sweep_run.run_sweep(cpu_subset.get_config(), os.path.join(tmp, 'W'))


LONG_NAME = 'n' * 300
LONG_PATH = '/'.join(['d' * 240] * 21)  # ~5,000 characters (the issue)

FILE_CASES = [
    # 5. Refusals that came after config.json (and the lock) were written.
    TCase('malformed metrics line, num_epochs extended (the issue)', (
        'TMP/W/metrics.jsonl: line 2 is not valid JSON (Expecting value at '
        "column 1: 'garbage')", 'allowed: one JSON object per epoch'),
         call=resume(num_epochs=4),
         setup=lambda tmp: keep_lines('W/metrics.jsonl', lambda l: (
             l[:1] + ['garbage\n'] + l[1:]))(tmp)),
    Case('another tool\'s metrics.jsonl (the issue)', (
        "workdir='TMP/W' holds metrics.jsonl but no config.json: it is not a "
        'padax workdir',), call=resume(),
         setup=write('W/metrics.jsonl', '{"loss": 1.0}\n')),
    Case('another tool\'s checkpoints/1000 (the issue)', (
        "workdir='TMP/W' holds checkpoints but no config.json",),
         call=resume(), setup=make_dir('W/checkpoints/1000')),
    Case('another tool\'s metrics.csv', ('holds metrics.csv but no '
                                          'config.json',),
         call=resume(), setup=write('W/metrics.csv', 'a,b\n1,2\n')),
    Case('sweep: another tool\'s members/', (
        "workdir='TMP/W' holds members but no config.json",),
         call=_sweep_call, setup=make_dir('W/members/x')),
    # 6. Files padax did not write.
    TCase('config.json holding a list (the issue)', (
        'TMP/W/config.json holds a JSON list ([1, 2]), not an object; '
        'allowed: the JSON object padax writes',),
         call=resume(), setup=write('W/config.json', '[1, 2]')),
    TCase('a {} row in metrics.jsonl (the issue)', (
        'TMP/W/metrics.jsonl: line 1 ({}) is not a metrics row; allowed: a '
        'JSON object with an integer "epoch" and "step"',),
         call=resume(), setup=write('W/metrics.jsonl', '{}\n')),
    TCase('config.json a directory (the issue)', (
        'TMP/W/config.json is a directory; allowed: the file padax writes',),
         call=resume(), setup=make_dir('W/config.json')),
    TCase('lock a directory (the issue)', ('TMP/W/lock is a directory',),
         call=resume(), setup=make_dir('W/lock')),
    TCase('metrics.jsonl a directory (the issue)', (
        'TMP/W/metrics.jsonl is a directory',), call=resume(),
         setup=make_dir('W/metrics.jsonl')),
    TCase('metrics.csv a directory', ('TMP/W/metrics.csv is a directory',),
         call=resume(), setup=make_dir('W/metrics.csv')),
    TCase('data.json holding a number', (
        'TMP/W/data.json holds a JSON int (7), not an object',),
         call=resume(), setup=write('W/data.json', '7')),
    Case('a workdir name longer than the file system allows (the issue)', (
        f"workdir='TMP/{LONG_NAME}' is not allowed: its component "
        f"'{LONG_NAME[:40]}'... is 300 bytes long; allowed: names of at most "
        '255 bytes',), call=lambda tmp: trainer.train_and_evaluate(
            small_config(), os.path.join(tmp, LONG_NAME),
            data=in_memory_data(), progress=False)),
    Case('a 5,000-character workdir (the issue)', (
        'bytes as an absolute path; allowed: at most 3896 bytes',),
         command=[TRAIN_PY, '--config', QUICK, f'--workdir={LONG_PATH}']),
    Case('a dangling symlink as workdir (the issue)', (
        "workdir='TMP/W' is a dangling symlink (to 'TMP/gone', which does "
        'not exist)',), call=resume(),
         setup=lambda tmp: os.symlink(os.path.join(tmp, 'gone'),
                                      os.path.join(tmp, 'W'))),
    Case('below a dangling symlink', (
        'cannot be created: TMP/link is a broken symlink',),
         call=lambda tmp: trainer.train_and_evaluate(
             small_config(), os.path.join(tmp, 'link', 'W'),
             data=in_memory_data(), progress=False),
         setup=lambda tmp: os.symlink(os.path.join(tmp, 'gone'),
                                      os.path.join(tmp, 'link'))),
    Case('train.py: config.json holding a list (the issue)', (
        'TMP/W/config.json holds a JSON list',),
         command=[TRAIN_PY, '--config', QUICK, '--workdir=TMP/W'],
         setup=write('W/config.json', '[]')),
    # 7. Checkpoints that cannot be written: before training.
    TCase('checkpoints a plain file (the issue)', (
        'TMP/W/checkpoints is not a directory; allowed: the directory of the '
        "run's checkpoints",), call=resume(),
         setup=then(remove('W/checkpoints'), write('W/checkpoints', 'x'))),
    TCase('checkpoints a dangling symlink', (
        'TMP/W/checkpoints is not a directory',), call=resume(),
         setup=then(remove('W/checkpoints'), lambda tmp: os.symlink(
             os.path.join(tmp, 'gone'), os.path.join(tmp, 'W/checkpoints')))),
    Case('sweep: checkpoints a plain file', (
        'TMP/W/checkpoints is not a directory',),
         call=lambda tmp: sweep_run.run_sweep(_sweep(seed=(0, 1)), os.path.join(
             tmp, 'W'), chunk=2),
         setup=lambda tmp: (_stored_sweep(tmp), write('W/checkpoints', 'x')(
             tmp))),
]


def _stored_sweep(tmp):
  config = _sweep(seed=(0, 1))
  config.sweep.chunk = 2
  rundir.Workdir(os.path.join(tmp, 'W'), config).prepare()


@pytest.mark.parametrize('case', FILE_CASES, ids=[c.id for c in FILE_CASES])
def test_workdir_files_are_checked_before_any_write(tmp_path, trained, case):
  check_case(with_trained(case, trained), str(tmp_path))


def test_a_failing_save_exits_4_promptly(tmp_path):
  start = time.monotonic()
  result = run([MOCKED_TRAIN, '--mock_num_train=64', '--mock_num_test=32',
                '--config', QUICK, '--config.model=tiny_cnn',
                '--config.batch_size=16', '--config.eval_batch_size=32',
                '--config.num_epochs=1', '--config.data_source=tfds',
                '--progress=false', '--break_checkpoints',
                f'--workdir={tmp_path / "W"}'],
               tmp_path)
  seconds = time.monotonic() - start
  assert_one_error(result, (
      f'the checkpoint of step 4 could not be written to {tmp_path}/W/'
      'checkpoints (NotADirectoryError', 'there was no earlier checkpoint'),
                   status=4)
  assert seconds < 120, seconds  # Was 300 s more, waiting on Orbax threads.


# ---------------------------------------------------------------------------
# 8. Every message names its file.


def _ragged(key):
  def change(batches):
    rows = list(batches['data_batch_2'][key])
    batches['data_batch_2'][key] = rows[:-1] + [[1, 2]]
  return change


MESSAGE_CASES = [
    TCase('JSON error in config.json (the issue)', (
        'TMP/W/config.json is not valid JSON (Expecting \',\' delimiter at '
        'line 2 column 1)',), call=resume(),
         setup=write('W/config.json', '{"a": 1\n"b": 2}')),
    TCase('JSON error in data.json', (
        'TMP/W/data.json is not valid JSON (Expecting value at line 1 column '
        '1)',), call=resume(), setup=write('W/data.json', 'nope')),
    TCase('metrics.jsonl not UTF-8', ('TMP/W/metrics.jsonl cannot be read as '
                                     'text',),
         call=resume(), setup=lambda tmp: open(
             os.path.join(tmp, 'W', 'metrics.jsonl'), 'wb').write(b'\xff\n')),
    TCase('ragged data array (the issue)', (
        "TMP/data/cifar-10-batches-py/data_batch_2: not a CIFAR python batch "
        "file: b'data' or b'labels' is not an array",), call=resume(),
         setup=replace_data(change=_ragged(b'data'))),
    TCase('ragged labels', ('data_batch_2: not a CIFAR python batch file',),
         call=resume(), setup=replace_data(change=_ragged(b'labels'))),
    Case('data_dir a symlink loop (the issue)', (
        'data_dir TMP/loop is a symlink that cannot be followed (Too many '
        "levels of symbolic links: to 'TMP/loop')",),
         call=lambda tmp: train(os.path.join(tmp, 'W'),
                                os.path.join(tmp, 'loop')),
         setup=lambda tmp: os.symlink(os.path.join(tmp, 'loop'),
                                      os.path.join(tmp, 'loop'))),
    Case('workdir a symlink loop', (
        "workdir='TMP/W' is a symlink loop",),
         call=lambda tmp: trainer.train_and_evaluate(
             small_config(), os.path.join(tmp, 'W'), data=in_memory_data(),
             progress=False),
         setup=lambda tmp: os.symlink(os.path.join(tmp, 'W'),
                                      os.path.join(tmp, 'W'))),
    Case('a config file calling sys.exit(0) (the issue)', (
        '--config=TMP/exits.py does not load: the config file called '
        'sys.exit(0); allowed: a config file whose get_config() returns a '
        'ConfigDict.',),
         command=[TRAIN_PY, '--config', 'TMP/exits.py', '--workdir=TMP/W'],
         setup=write('exits.py', 'import sys\nsys.exit(0)\n')),
    Case('sweep.py: get_config calling sys.exit(3)', (
        '--config=TMP/exits.py does not load: the config file called '
        'sys.exit(3)',),
         command=[SWEEP_PY, '--config', 'TMP/exits.py', '--workdir=TMP/W'],
         setup=write('exits.py', 'import sys\ndef get_config():\n'
                     '  sys.exit(3)\n')),
]


@pytest.mark.parametrize('case', MESSAGE_CASES,
                         ids=[c.id for c in MESSAGE_CASES])
def test_messages_name_the_file(tmp_path, trained, case):
  check_case(with_trained(case, trained), str(tmp_path))


# ---------------------------------------------------------------------------
# 9. Files respect the umask.


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_files_respect_the_umask(tmp_path, umask):
  previous = os.umask(umask)
  try:
    data = write_cifar10(str(tmp_path / 'data'), NUM_TRAIN, NUM_TEST)
    workdir = str(tmp_path / 'W')
    train(workdir, data, num_epochs=1)
    rundir.atomic_write(str(tmp_path / 'summary.json'), '{}')
  finally:
    os.umask(previous)
  for path in ['W/config.json', 'W/data.json', 'W/metrics.jsonl',
               'W/metrics.csv', 'W/lock', 'summary.json']:
    mode = os.stat(tmp_path / path).st_mode & 0o777
    assert mode == 0o666 & ~umask, (path, oct(mode))


def test_at_least_three_cases_per_class():
  counts = {'1 data': len(DATA_CASES) + 1, '2 history': len(HISTORY_CASES) + 1,
            '3 empty workdir': len(EMPTY_CASES),
            '4 ranges': len(RANGE_CASES),
            '5-7 workdir files': len(FILE_CASES) + 1,
            '8 messages': len(MESSAGE_CASES)}
  assert all(n >= 3 for n in counts.values()), counts
