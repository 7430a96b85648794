"""End-to-end tests of `train.py` and `training.trainer.train_and_evaluate`.

Small CPU runs of tiny_cnn: a whole `train.py` run on mocked TFDS CIFAR
(tests/e2e_scripts/mocked_train.py); a `train.py` run killed with SIGKILL and
run again, and runs interrupted or extended through the Python API, each
bit-identical to an uninterrupted run; a short run on the genuine CIFAR-10
subset; the refusals (conflicting workdir, unknown names, bad command-line
overrides).

The runs share one persistent compilation cache in a temporary folder (this
process and the subprocesses alike), and the same model, batch sizes and
schedules: the train step is compiled once per session.
"""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import quick
import models
from tests.conftest import ROOT
from tests.data_fixtures import mock_cifar
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import
from tests.fault_harness import env_with_cache
from tests.fault_harness import restore_raw
from tests.helpers import snapshot
from tests.helpers import without_timing
from training import augment
from training import input_pipeline
from training import trainer

pytestmark = pytest.mark.slow

TRAIN_PY = os.path.join(ROOT, 'train.py')
MOCKED_TRAIN = os.path.join(ROOT, 'tests', 'e2e_scripts', 'mocked_train.py')
QUICK = os.path.join(ROOT, 'configs', 'quick.py')

COLUMNS = ('epoch', 'step', 'lr', 'p', 'train_loss', 'train_error',
           'test_loss', 'test_error', 'test_top5_error', 'epoch_seconds',
           'images_per_second', 'skipped_steps')

# Shared by every run of this file. The lr and p schedules are constants of
# the compiled train step, so with the same schedule and the same number of
# steps per epoch (NUM_TRAIN // 32) all mocked runs share one compilation.
# lr x0.1 after epoch 1 and p halved every epoch: the logged lr and p change.
# Data from TFDS, which the tests mock (tests/data_fixtures.py: mock_cifar).
SMALL = {'model': 'tiny_cnn', 'batch_size': 32, 'eval_batch_size': 64,
         'optimizer.lr_milestones': (1,), 'optimizer.p_decay_every_epochs': 1,
         'optimizer.p_decay_factor': 0.5, 'data_source': 'tfds'}
NUM_TRAIN = 128
STEPS_PER_EPOCH = NUM_TRAIN // 32

SUBPROCESS_TIMEOUT = 300


# ---------------------------------------------------------------------------
# Fixtures and helpers.


@pytest.fixture(scope='module', autouse=True)
def jax_cache_dir(compilation_cache_dir):
  """The session's persistent compilation cache, for this module's runs."""
  return compilation_cache_dir


def make_config(**overrides):
  """configs/quick.py with SMALL and `overrides` ('optimizer.lr' style keys)."""
  config = quick.get_config()
  for key, value in {**SMALL, **overrides}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def config_flags(**overrides):
  """The train.py flags giving make_config(**overrides)."""
  args = ['--config', QUICK, '--progress=false']
  for key, value in {**SMALL, **overrides}.items():
    text = repr(value) if isinstance(value, tuple) else str(value)
    args.append(f'--config.{key}={text}')
  return args


def mocked_train_command(workdir, *, num_train, num_test, extra=(),
                         **overrides):
  return [sys.executable, MOCKED_TRAIN, f'--mock_num_train={num_train}',
          f'--mock_num_test={num_test}', f'--workdir={workdir}',
          *config_flags(**overrides), *extra]


def run_command(command, cache_dir, *, expect_rc=0):
  result = subprocess.run(command, cwd=ROOT, env=env_with_cache(cache_dir),
                          capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)
  assert result.returncode == expect_rc, (
      f'{command} exited with {result.returncode}, not {expect_rc}:\n'
      f'{result.stderr[-5000:]}')
  return result


def read_jsonl(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_csv(workdir):
  with open(os.path.join(workdir, 'metrics.csv'), newline='') as f:
    reader = csv.reader(f)
    header = next(reader)
    return header, list(reader)


def csv_cells(row):
  """The cells of metrics.csv for a metrics.jsonl row: lr and p, float32
  values, as numpy's shortest float32 text (0.1, not 0.10000000149011612);
  the rest as Python writes them."""
  return [str(np.float32(row[k])) if k in ('lr', 'p') else str(row[k])
          for k in COLUMNS]


def finished_steps(workdir):
  """Steps of the finished checkpoints (orbax renames tmp dirs when done)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit())


def checkpoint_entries(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def restore(workdir, step):
  return restore_raw(os.path.join(workdir, 'checkpoints'), step)


def _host_array(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x)


def assert_bit_identical(tree_a, tree_b):
  leaves_a = jax.tree_util.tree_leaves_with_path(tree_a)
  leaves_b = jax.tree_util.tree_leaves_with_path(tree_b)
  paths_a = [jax.tree_util.keystr(p) for p, _ in leaves_a]
  paths_b = [jax.tree_util.keystr(p) for p, _ in leaves_b]
  assert paths_a == paths_b
  # params, batch_stats, Padam's three moments, ...: not a vacuous comparison.
  assert len(leaves_a) > 40
  for path, (_, a), (_, b) in zip(paths_a, leaves_a, leaves_b):
    a, b = _host_array(a), _host_array(b)
    assert (a.dtype, a.shape) == (b.dtype, b.shape), path
    assert np.array_equal(a, b) and a.tobytes() == b.tobytes(), (
        f'{path} differs: max |diff| '
        f'{np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))}')


def expected_lr_p(config, epoch):
  """lr and p the optimizer uses in `epoch` (1-based), from the config alone."""
  opt = config.optimizer
  lr = opt.learning_rate * opt.lr_factor ** sum(
      1 for m in opt.lr_milestones if m < epoch)
  p = opt.p
  if opt.p_decay_every_epochs:
    p *= opt.p_decay_factor ** ((epoch - 1) // opt.p_decay_every_epochs)
  return lr, (p if opt.name == 'padam' else None)


def check_rows(rows, config, steps_per_epoch):
  """The metrics rows of a finished run of `config`: complete and plausible."""
  assert [r['epoch'] for r in rows] == list(range(1, config.num_epochs + 1))
  for r in rows:
    assert set(r) == set(COLUMNS), r
    assert r['step'] == r['epoch'] * steps_per_epoch
    lr, p = expected_lr_p(config, r['epoch'])
    assert r['lr'] == pytest.approx(lr, rel=1e-6), r
    assert r['p'] == pytest.approx(p, rel=1e-6), r
    for key in COLUMNS[4:-1]:
      assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
    assert r['skipped_steps'] == 0, r
    for key in ('train_error', 'test_error', 'test_top5_error'):
      assert 0.0 <= r[key] <= 1.0, (key, r)
    assert r['test_top5_error'] <= r['test_error']
    assert r['train_loss'] > 0 and r['test_loss'] > 0
    assert r['epoch_seconds'] > 0 and r['images_per_second'] > 0


def random_data(num_train, num_test, seed=0):
  rng = np.random.default_rng(seed)

  def split(n):
    return input_pipeline.Split(
        images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        labels=rng.integers(0, 10, (n,)).astype(np.int32))

  return input_pipeline.CifarData(train=split(num_train), test=split(num_test),
                                  num_classes=10, name='cifar10',
                                  source='random test data')


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith('error:')]


# ---------------------------------------------------------------------------
# 1. train.py end to end.


def test_train_py_end_to_end_on_mocked_tfds(tmp_path, jax_cache_dir):
  workdir = str(tmp_path / 'run')
  overrides = {'num_epochs': 2, 'checkpoint_every_epochs': 1,
               'keep_checkpoints': 1}
  config = make_config(**overrides)
  result = run_command(
      mocked_train_command(workdir, num_train=NUM_TRAIN, num_test=100,
                           **overrides),
      jax_cache_dir)
  assert 'Traceback' not in result.stderr
  # One log line per epoch; orbax's INFO chatter is filtered out.
  assert re.findall(r'\bepoch (\d+)/2\b', result.stderr) == ['1', '2']
  assert not re.search(r'^I.*\b(checkpoint_manager|async_checkpointer)\.py',
                       result.stderr, re.M)

  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f) == json.loads(json.dumps(config.to_dict()))

  rows = read_jsonl(workdir)
  check_rows(rows, config, STEPS_PER_EPOCH)
  assert [r['lr'] for r in rows] == pytest.approx([0.1, 0.01], rel=1e-6)
  assert [r['p'] for r in rows] == pytest.approx([0.125, 0.0625], rel=1e-6)
  header, csv_rows = read_csv(workdir)
  assert tuple(header) == COLUMNS
  assert csv_rows == [csv_cells(r) for r in rows]
  assert csv_rows[0][COLUMNS.index('lr')] == '0.1'  # not 0.10000000149011612

  # Saved every epoch, only the last kept; nothing half written is left.
  final_step = 2 * STEPS_PER_EPOCH
  assert checkpoint_entries(workdir) == [str(final_step)]
  state = restore(workdir, final_step)
  assert int(state['step']) == final_step

  # The logged test metrics are those of the final state on the mocked test
  # split (100 images: 64 + a padded batch of 36).
  with mock_cifar(num_train=NUM_TRAIN, num_test=100) as mocked:
    pass
  model = models.create_model('tiny_cnn', 10)
  logits = model.apply(
      {'params': state['params'], 'batch_stats': state['batch_stats']},
      augment.normalize(mocked.test_images, input_pipeline.CIFAR10),
      train=False)
  logits, labels = np.asarray(logits, np.float64), mocked.test_labels
  error = float(np.mean(np.argmax(logits, -1) != labels))
  loss = float(np.mean(-jax.nn.log_softmax(logits)[np.arange(100), labels]))
  assert rows[-1]['test_error'] == pytest.approx(error, abs=1e-9)
  assert rows[-1]['test_loss'] == pytest.approx(loss, rel=1e-5)


def test_train_py_caches_compilations_by_default_and_profiles(tmp_path,
                                                              jax_cache_dir):
  """No cache configured: train.py uses $XDG_CACHE_HOME/padax/jax, and a
  second process, with another learning rate, p and seed (a grid as separate
  runs), loads every program from there, compiling none; --profile writes a
  trace."""
  env = env_with_cache(jax_cache_dir)
  for name in ('JAX_COMPILATION_CACHE_DIR',
               'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS',
               'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'):
    del env[name]
  env.update(XDG_CACHE_HOME=str(tmp_path / 'cache'), JAX_LOG_COMPILES='1',
             JAX_EXPLAIN_CACHE_MISSES='1')
  cache = tmp_path / 'cache' / 'padax' / 'jax'
  logs = []
  for run, extra, values in (
      ('first', ['--profile', '--profile_steps=2'], {}),
      ('second', [], {'optimizer.learning_rate': 0.05, 'optimizer.p': 0.0625,
                      'seed': 3})):
    result = subprocess.run(
        mocked_train_command(str(tmp_path / run), num_train=NUM_TRAIN,
                             num_test=64, extra=extra, num_epochs=2,
                             **values),
        cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    logs.append(result.stderr)
  # The first process compiled the programs and wrote them to the cache;
  # the second loaded them all, the init and the train step among them.
  miss = 'PERSISTENT COMPILATION CACHE MISS for '
  hit = "Persistent compilation cache hit for 'jit_train_step'"
  assert hit not in logs[0], logs[0][-5000:]
  assert miss + "'jit_train_step'" in logs[0], logs[0][-5000:]
  assert [n for n in os.listdir(cache) if n.startswith('jit_train_step-')]
  assert hit in logs[1], logs[1][-5000:]
  assert "Persistent compilation cache hit for 'jit__lambda'" in logs[1]
  assert miss not in logs[1], [l for l in logs[1].splitlines() if miss in l]
  # Steps 6 and 7 of 8 (after 5 warm-up steps), in TensorBoard's layout.
  traces = [name for _, _, names in os.walk(tmp_path / 'first' / 'profile')
            for name in names if name.endswith('.xplane.pb')]
  assert len(traces) == 1, traces
  assert not os.path.exists(tmp_path / 'second' / 'profile')


# ---------------------------------------------------------------------------
# 2. Interrupted and resumed runs are bit-identical to uninterrupted ones.

def test_sigkilled_train_py_resumes_bit_identically(tmp_path, jax_cache_dir):
  """Killed in epoch 2 (after the first checkpoint), then run again."""
  overrides = {'num_epochs': 3, 'checkpoint_every_epochs': 1,
               'keep_checkpoints': 1}
  final_step = 3 * STEPS_PER_EPOCH
  reference, interrupted = str(tmp_path / 'reference'), str(tmp_path / 'run')

  def command(workdir, extra=()):
    return mocked_train_command(workdir, num_train=NUM_TRAIN, num_test=64,
                                extra=extra, **overrides)

  popen = dict(cwd=ROOT, env=env_with_cache(jax_cache_dir),
               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  # The uninterrupted reference runs meanwhile: the other one mostly sleeps.
  reference_proc = subprocess.Popen(command(reference), **popen)
  # Epoch 2 is slowed down (2 s per step) so that the kill cannot miss it;
  # sleeping changes no result, and costs no time: the run is killed as soon
  # as it sleeps.
  victim = subprocess.Popen(
      command(interrupted, [f'--step_delay_after={STEPS_PER_EPOCH}',
                            '--step_delay=2']), **popen)
  try:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not finished_steps(interrupted):
      assert victim.poll() is None, victim.communicate()[1][-5000:]
      assert time.monotonic() < deadline, 'no checkpoint in time'
      time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    _, reference_err = reference_proc.communicate(timeout=SUBPROCESS_TIMEOUT)
  finally:
    for proc in (victim, reference_proc):
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  assert victim.returncode == -signal.SIGKILL
  assert reference_proc.returncode == 0, reference_err[-5000:]
  killed_rows = read_jsonl(interrupted)
  assert [r['epoch'] for r in killed_rows] == [1]
  assert finished_steps(interrupted) == [STEPS_PER_EPOCH]

  resumed = run_command(command(interrupted), jax_cache_dir)
  # It went on from epoch 2 (a fresh start would give the same numbers).
  assert re.findall(r'\bepoch (\d+)/3\b', resumed.stderr) == ['2', '3']
  # checkpoint_every_epochs=1, keep_checkpoints=1: the last one only.
  assert checkpoint_entries(reference) == [str(final_step)]
  assert checkpoint_entries(interrupted) == [str(final_step)]
  assert_bit_identical(restore(interrupted, final_step),
                       restore(reference, final_step))
  rows, reference_rows = read_jsonl(interrupted), read_jsonl(reference)
  assert without_timing(rows) == without_timing(reference_rows)
  check_rows(rows, make_config(**overrides), STEPS_PER_EPOCH)
  assert rows[0] == killed_rows[0]  # Kept as written before the kill.
  assert read_csv(interrupted)[1] == [csv_cells(r) for r in rows]


class _Interrupted(Exception):
  pass


def test_uncheckpointed_epoch_is_redone_bit_identically(tmp_path,
                                                        monkeypatch):
  """A run stopped after an epoch's metrics row but before its checkpoint."""
  data = random_data(num_train=NUM_TRAIN, num_test=64)
  config = make_config(num_epochs=4, checkpoint_every_epochs=2,
                       keep_checkpoints=2)
  interrupted, reference = str(tmp_path / 'run'), str(tmp_path / 'reference')
  permutation = input_pipeline.epoch_permutation

  def stop_in_epoch_4(seed, epoch, num_examples):
    if epoch == 4:
      raise _Interrupted
    return permutation(seed, epoch, num_examples)

  with monkeypatch.context() as patch:
    patch.setattr(input_pipeline, 'epoch_permutation', stop_in_epoch_4)
    with pytest.raises(_Interrupted):
      trainer.train_and_evaluate(config, interrupted, data=data,
                                 progress=False)
  stopped_rows = read_jsonl(interrupted)
  assert [r['epoch'] for r in stopped_rows] == [1, 2, 3]
  assert finished_steps(interrupted) == [2 * STEPS_PER_EPOCH]
  # What orbax 0.12 leaves of a save killed half way: it must not be taken
  # for a checkpoint, nor stop the next save of that step.
  half_written = os.path.join(interrupted, 'checkpoints',
                              f'{4 * STEPS_PER_EPOCH}.orbax-checkpoint-tmp')
  os.makedirs(os.path.join(half_written, 'default.orbax-checkpoint-tmp'))
  with open(os.path.join(half_written, '_CHECKPOINT_METADATA'), 'w') as f:
    f.write('{"item_handlers": {"def')

  last = trainer.train_and_evaluate(config, interrupted, data=data,
                                    progress=False)
  reference_last = trainer.train_and_evaluate(config, reference, data=data,
                                              progress=False)
  rows = read_jsonl(interrupted)
  assert rows[:2] == stopped_rows[:2]  # Checkpointed epochs: kept.
  assert without_timing(rows) == without_timing(read_jsonl(reference))
  assert without_timing([last]) == without_timing([reference_last])
  check_rows(rows, config, STEPS_PER_EPOCH)
  steps = [2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH]
  assert finished_steps(interrupted) == finished_steps(reference) == steps
  for step in steps:
    assert_bit_identical(restore(interrupted, step), restore(reference, step))


def test_resume_through_python_api_is_bit_identical(tmp_path):
  """num_epochs=1, then num_epochs=2 on the same workdir == a fresh 2-epoch run."""
  data = random_data(num_train=NUM_TRAIN, num_test=64)
  common = {'checkpoint_every_epochs': 1, 'keep_checkpoints': 5}
  resumed, fresh = str(tmp_path / 'resumed'), str(tmp_path / 'fresh')
  first = trainer.train_and_evaluate(
      make_config(num_epochs=1, **common), resumed, data=data, progress=False)
  assert first['epoch'] == 1
  first_rows = read_jsonl(resumed)
  config = make_config(num_epochs=2, **common)
  last = trainer.train_and_evaluate(config, resumed, data=data, progress=False)
  fresh_last = trainer.train_and_evaluate(config, fresh, data=data,
                                          progress=False)

  assert last['epoch'] == fresh_last['epoch'] == 2
  steps = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
  assert finished_steps(resumed) == finished_steps(fresh) == steps
  for step in steps:
    assert_bit_identical(restore(resumed, step), restore(fresh, step))
  rows = read_jsonl(resumed)
  assert without_timing(rows) == without_timing(read_jsonl(fresh))
  assert rows[:1] == first_rows  # Epoch 1 was not redone.
  check_rows(rows, config, STEPS_PER_EPOCH)
  with open(os.path.join(resumed, 'config.json')) as f:
    assert json.load(f) == json.loads(json.dumps(config.to_dict()))


# ---------------------------------------------------------------------------
# 3. Genuine CIFAR-10 images.

def test_short_run_on_genuine_cifar10_learns(tmp_path, cifar10_subset):
  # 5085 train / 1017 test images; measured (seeds 0, 1): test error 0.65
  # after 3 epochs, train loss 2.00 -> 1.69; chance is 0.9 / ln 10 = 2.30.
  config = make_config(num_epochs=3, data_source='local',
                       data_dir=cifar10_subset,
                       **{'optimizer.lr_milestones': (4,),
                          'optimizer.p_decay_every_epochs': 0})
  trainer.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  rows = read_jsonl(str(tmp_path / 'run'))
  check_rows(rows, config, steps_per_epoch=5085 // 32)
  assert rows[-1]['train_loss'] < rows[0]['train_loss']
  assert rows[-1]['test_error'] < 0.8, rows


# ---------------------------------------------------------------------------
# 4. Refusals.


@pytest.fixture
def finished_workdir(tmp_path):
  """A workdir holding a finished 1-epoch run of make_config(num_epochs=1)."""
  workdir = str(tmp_path / 'finished')
  trainer.train_and_evaluate(make_config(num_epochs=1), workdir,
                             data=random_data(NUM_TRAIN, 64), progress=False)
  assert finished_steps(workdir) == [STEPS_PER_EPOCH]
  return workdir


def test_conflicting_stored_config_is_refused_untouched(finished_workdir,
                                                        jax_cache_dir):
  before = snapshot(finished_workdir)
  time.sleep(0.01)  # A rewrite would show in the mtimes.
  config = make_config(num_epochs=1, seed=3)
  config.optimizer.learning_rate = 0.05
  with pytest.raises(ValueError) as info:
    trainer.train_and_evaluate(config, finished_workdir,
                               data=random_data(NUM_TRAIN, 64), progress=False)
  message = str(info.value)
  assert 'optimizer.learning_rate' in message and 'seed' in message
  assert '0.1' in message and '0.05' in message
  assert snapshot(finished_workdir) == before

  # The same through train.py: one error line, exit code 2, no traceback.
  result = run_command(
      [sys.executable, TRAIN_PY, f'--workdir={finished_workdir}',
       *config_flags(num_epochs=5, **{'optimizer.learning_rate': 0.05})],
      jax_cache_dir, expect_rc=2)
  lines = error_lines(result.stderr)
  assert len(lines) == 1 and 'optimizer.learning_rate' in lines[0], (
      result.stderr)
  assert 'Traceback' not in result.stderr
  assert snapshot(finished_workdir) == before


@pytest.mark.parametrize('key, value', [
    ('model', 'resnet1000'),
    ('dataset', 'cifar1000'),
    ('optimizer.name', 'sgd'),
    ('data_source', 'gcs'),
    ('dtype', 'float16'),
])
def test_unknown_name_is_refused_before_any_file(tmp_path, key, value):
  workdir = tmp_path / 'not' / 'created'
  with pytest.raises(ValueError) as info:
    trainer.train_and_evaluate(make_config(**{key: value}), str(workdir),
                               progress=False)
  assert f'{key}={value!r}' in str(info.value)
  assert not (tmp_path / 'not').exists()


@pytest.mark.parametrize('flags, expected', [
    (['--config.model=resnet1000'], "model='resnet1000'"),
    (['--config.optimizer.name=sgd'], "optimizer.name='sgd'"),
    (['--config.batch_size=0'], 'batch_size=0'),
    (['--config.data_source=local', '--config.data_dir=/nonexistent/cifar'],
     '/nonexistent/cifar'),
], ids=['model', 'optimizer', 'batch_size', 'missing_data'])
def test_train_py_bad_override_prints_one_error_line(tmp_path, jax_cache_dir,
                                                     flags, expected):
  workdir = tmp_path / 'run'
  result = run_command(
      [sys.executable, TRAIN_PY, '--config', QUICK, f'--workdir={workdir}',
       '--progress=false', *flags], jax_cache_dir, expect_rc=2)
  lines = error_lines(result.stderr)
  assert len(lines) == 1 and expected in lines[0], result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()
