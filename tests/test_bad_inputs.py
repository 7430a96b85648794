"""Bad input: one clear message, exit status 2, and no workdir file touched.

A table of bad inputs to train.py and sweep.py (each a fresh process: the
message must come without a traceback, and the command line itself is under
test), to the Python API (train_and_evaluate, run_sweep) and to padax. Each
asserts the one `error:` line (or exception message) names what is wrong,
the value given and what is allowed, and that nothing under the test's
folder (workdir, data) was created or changed: every refusal comes before
the first write.
"""

import dataclasses
import os
import pickle
import subprocess
import sys
import time
from typing import Callable, Optional

import ml_collections
import numpy as np
import pytest

import padax
from configs import quick
from sweeps import run as sweep_run
from sweeps.configs import cpu_subset
from tests import refused_inputs
from tests.conftest import ROOT
from tests.helpers import snapshot
from training import configuration
from training import host_devices
from training import optimizers
from training import trainer
from training import run_lock
from training import rundir

pytestmark = pytest.mark.slow

QUICK = os.path.join(ROOT, 'configs', 'quick.py')
CPU_SUBSET = os.path.join(ROOT, 'sweeps', 'configs', 'cpu_subset.py')
TRAIN = [os.path.join(ROOT, 'train.py'), '--config', QUICK, '--progress=false']
SWEEP = [os.path.join(ROOT, 'sweep.py'), '--config', CPU_SUBSET,
         '--progress=false']
CIFAR_FILES = ('data_batch_1', 'data_batch_2', 'data_batch_3',
               'data_batch_4', 'data_batch_5', 'test_batch')


# ---------------------------------------------------------------------------
# Set-ups: what a case needs in tmp_path besides the workdir (`W`).


def _incomplete_data(tmp):
  folder = os.path.join(tmp, 'data', 'cifar-10-batches-py')
  os.makedirs(folder)
  with open(os.path.join(folder, 'data_batch_1'), 'wb') as f:
    pickle.dump({b'data': np.zeros((2, 3072), np.uint8),
                 b'labels': [0, 1]}, f)


def _not_cifar_data(tmp):
  folder = os.path.join(tmp, 'data', 'cifar-10-batches-py')
  os.makedirs(folder)
  for name in CIFAR_FILES:
    with open(os.path.join(folder, name), 'w') as f:
      f.write('these are not the images you are looking for\n')


def _stored_config(tmp):
  config = quick.get_config()
  config.seed = 7
  rundir.Workdir(os.path.join(tmp, 'W'), config).prepare()


def _stored_sweep(tmp):
  config = cpu_subset.get_config()
  config.sweep.chunk = 2
  rundir.Workdir(os.path.join(tmp, 'W'), config).prepare()


def _file_as_workdir(tmp):
  with open(os.path.join(tmp, 'W'), 'w') as f:
    f.write('a file\n')


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory this process cannot write: a read-only tmpfs (root can
  write anywhere else), or a chmod 0o555 folder (other users)."""
  path = tmp_path / 'ro'
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o555)
    yield str(path)
    path.chmod(0o755)
    return
  mount = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k',
                          'tmpfs', str(path)], capture_output=True, check=False)
  if mount.returncode:
    pytest.skip('running as root without permission to mount a read-only '
                f'tmpfs: {mount.stderr.decode().strip()}')
  try:
    yield str(path)
  finally:
    subprocess.run(['umount', str(path)], check=True)


def _config_with(**changes):
  """configs/quick.py as a plain ConfigDict (any type goes) with `changes`."""
  d = quick.get_config().to_dict()
  for key, value in changes.items():
    *parents, leaf = key.split('.')
    node = d
    for parent in parents:
      node = node[parent]
    if value is _DELETE:
      del node[leaf]
    else:
      node[leaf] = value
  return ml_collections.ConfigDict(d)


_DELETE = object()


def _sweep_with(**sweep):
  config = cpu_subset.get_config()
  for key, value in sweep.items():
    config.sweep[key] = value
  return config


def _train(**changes):
  return lambda tmp: trainer.train_and_evaluate(
      _config_with(**changes), os.path.join(tmp, 'W'), progress=False)


def _local_data(**changes):
  return lambda tmp: trainer.train_and_evaluate(
      _config_with(data_source='local', data_dir=os.path.join(tmp, 'data'),
                   **changes), os.path.join(tmp, 'W'), progress=False)


@dataclasses.dataclass
class Case:
  """A bad input: a command line (argv after the interpreter; the workdir
  is added) or an in-process call(tmp folder), and what the message says."""
  id: str
  fragments: tuple
  command: Optional[list] = None
  call: Optional[Callable] = None
  setup: Optional[Callable] = None
  env: Optional[dict] = None


CASES = [
    # train.py: what needs devices, data or the workdir's files (the
    # refusals before JAX are tests/refused_inputs.py's table).
    Case('batch not divisible by devices', (
        'batch_size=33 does not divide evenly over 2 devices; allowed: a '
        'multiple of 2.',), [*TRAIN, '--config.batch_size=33'],
         env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}),
    Case('data dir missing', (
        'data_dir /nonexistent/cifar does not exist', 'cifar-10-batches-py'),
         [*TRAIN, '--config.data_source=local',
          '--config.data_dir=/nonexistent/cifar']),
    Case('stored config conflicts', (
        'holds a run with a different config (seed: stored 7, requested 0)',
        'Only num_epochs may change on resume'), [*TRAIN],
         setup=_stored_config),
    # sweep.py: the command line itself.
    Case('empty grid', (
        'sweep.p=() is not allowed (empty); allowed: a non-empty list of '
        'distinct values of optimizer.p.',), [*SWEEP, '--config.sweep.p=()']),
    Case('grid of strings', (
        "sweep.learning_rate=('0.1',) is not allowed ('0.1' is not a "
        'number); allowed: a non-empty list of distinct values of '
        'optimizer.learning_rate.',),
         [*SWEEP, "--config.sweep.learning_rate='0.1'"]),
    Case('unknown grid key', (
        'sweep.lr is not a key', 'did you mean sweep.learning_rate?'),
         [*SWEEP, '--config.sweep.lr=(0.1,)']),
    Case('sweep without a grid', (
        'sweep=None is not allowed (missing or not a ConfigDict)',),
         [os.path.join(ROOT, 'sweep.py'), '--config', QUICK]),
    Case('bad --chunk', (
        "--chunk='lots' is not allowed; allowed: an integer >= 1, 0",),
         [*SWEEP, '--chunk=lots']),
    # The Python API: the same checks, without a process each.
    Case('api: unknown config key', (
        'optimizer.lr=0.1 is not a config key (did you mean '
        'optimizer.learning_rate?); allowed under optimizer:',),
         call=_train(**{'optimizer.lr': 0.1})),
    Case('api: misplaced key', (
        'learning_rate=0.1 is not a config key (did you mean '
        'optimizer.learning_rate?)',), call=_train(learning_rate=0.1)),
    Case('api: float for an int', (
        'num_epochs=2.5 is not allowed (a float); allowed: an integer, as in '
        'training/configuration.py (num_epochs=200).',), call=_train(num_epochs=2.5)),
    Case('api: string for a number', (
        "optimizer.weight_decay='5e-4' is not allowed (a str); allowed: a "
        'number',), call=_train(**{'optimizer.weight_decay': '5e-4'})),
    Case('api: missing key', (
        'nonfinite_policy is missing from the config; allowed: a config with '
        "every key of training/configuration.py (there nonfinite_policy='stop').",),
         call=_train(nonfinite_policy=_DELETE)),
    Case('api: eps out of range', (
        'optimizer (padam): eps=-1e-08 is out of range; allowed: eps >= 0.',),
         call=_train(**{'optimizer.eps': -1e-8})),
    Case('api: b1 out of range (adam)', (
        'optimizer (adam): b1=1.0 is out of range; allowed: 0 <= b1 < 1.',),
         call=_train(**{'optimizer.name': 'adam', 'optimizer.b1': 1.0})),
    Case('api: negative learning rate', (
        'optimizer (padam): learning_rate=-0.1 is out of range; allowed: '
        'learning_rate >= 0',),
         call=_train(**{'optimizer.learning_rate': -0.1})),
    Case('api: bad milestones', (
        'optimizer.lr_milestones=(0, 3) is not allowed (0); allowed: epochs, '
        'integers >= 1',), call=_train(**{'optimizer.lr_milestones': (0, 3)})),
    Case('api: unknown dataset', (
        "dataset='mnist' is not known; allowed: cifar10, cifar100.",),
         call=_train(dataset='mnist')),
    Case('api: unknown optimizer', (
        "optimizer.name='sgd' is not known; allowed: sgdm, adam, amsgrad, "
        'adamw, padam, lion.',), call=_train(**{'optimizer.name': 'sgd'})),
    Case('api: unknown formulation', (
        "optimizer.formulation='pytorch' is not known; allowed: authors, "
        'paper, report.',), call=_train(**{'optimizer.formulation': 'pytorch'})),
    Case('api: unknown nonfinite policy', (
        "nonfinite_policy='ignore' is not known; allowed: stop, skip.",),
         call=_train(nonfinite_policy='ignore')),
    Case('api: no epochs', (
        'num_epochs=0 is not allowed; allowed: an integer >= 1.',),
         call=_train(num_epochs=0)),
    Case('api: no checkpoints kept', (
        'keep_checkpoints=0 is not allowed; allowed: an integer >= 1.',),
         call=_train(keep_checkpoints=0)),
    Case('api: no skips allowed', (
        'max_consecutive_skips=0 is not allowed; allowed: an integer >= 1.',),
         call=_train(max_consecutive_skips=0)),
    Case('api: negative seed', (
        'seed=-1 is not allowed; allowed: an integer >= 0.',),
         call=_train(seed=-1)),
    Case('api: data dir incomplete', (
        'Incomplete CIFAR-10 python layout', 'missing data_batch_2, '
        'data_batch_3, data_batch_4, data_batch_5, test_batch'),
         call=_local_data(), setup=_incomplete_data),
    Case('api: data dir not CIFAR', (
        'data_batch_1: not a CIFAR python batch file',),
         call=_local_data(), setup=_not_cifar_data),
    Case('api: workdir is a file', (
        'exists and is not a directory; allowed: a directory',),
         call=_train(), setup=_file_as_workdir),
    Case('api: grid value out of range', (
        'sweep.p=(0.25, 0.75) is not allowed (optimizer (padam): p=0.75 is '
        'out of range; allowed: 0 <= p <= 0.5',),
         call=lambda tmp: sweep_run.run_sweep(_sweep_with(p=(0.25, 0.75)),
                                         os.path.join(tmp, 'W'))),
    Case('api: sweep seeds', (
        'sweep.seed=(0, 1.5) is not allowed (1.5 is not an integer >= 0); '
        'allowed: '
        'a non-empty list of distinct integers >= 0.',),
         call=lambda tmp: sweep_run.run_sweep(_sweep_with(seed=(0, 1.5)),
                                         os.path.join(tmp, 'W'))),
    Case('api: stored sweep chunks', (
        'sweep.chunk=1 is not allowed for workdir=', 'it holds a sweep '
        'trained 2 members at a time; allowed: 2 (--chunk 2)'),
         call=lambda tmp: sweep_run.run_sweep(cpu_subset.get_config(),
                                         os.path.join(tmp, 'W'), chunk=1),
         setup=_stored_sweep),
    # padax.
    Case('padax p', ('p=0.75 is out of range; allowed: 0 <= p <= 0.5',),
         call=lambda tmp: padax.padam(0.1, p=0.75)),
    Case('padax b2', ('b2=1.0 is out of range; allowed: 0 <= b2 < 1',),
         call=lambda tmp: padax.padamw(0.1, b2=1.0)),
    Case('padax learning rate', (
        'learning_rate=-1.0 is out of range; allowed: learning_rate >= 0',),
         call=lambda tmp: padax.padam(-1.0)),
    Case('padax formulation', (
        "formulation='pytorch' is not known; allowed: 'authors', 'paper', "
        "'report'.",), call=lambda tmp: padax.padam(0.1, formulation='pytorch')),
    Case('padax amsgrad', ("amsgrad='yes' must be a bool (True or False).",),
         call=lambda tmp: padax.scale_by_partial_adaptive(amsgrad='yes')),
]


def _run(command, tmp_path, env=None):
  argv = [a.replace('DATA', str(tmp_path / 'data')) for a in command]
  if not any(a.startswith('--workdir') for a in argv):
    argv.append(f'--workdir={tmp_path / "W"}')
  return subprocess.run(
      [sys.executable, *argv], cwd=str(tmp_path), capture_output=True,
      text=True, timeout=120, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})})


def assert_refused(result, fragments):
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(errors) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], (fragment, errors[0])
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_refusal(tmp_path, case):
  if case.setup is not None:
    case.setup(str(tmp_path))
  before = snapshot(str(tmp_path))
  time.sleep(0.01)  # A rewrite would show in the mtimes.
  if case.command is not None:
    assert_refused(_run(case.command, tmp_path, case.env), case.fragments)
  else:
    with pytest.raises(ValueError) as info:
      case.call(str(tmp_path))
    for fragment in case.fragments:
      assert fragment in str(info.value), (fragment, str(info.value))
  assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize('case', refused_inputs.CASES,
                         ids=[c.id for c in refused_inputs.CASES])
def test_train_py_refuses_before_jax(tmp_path, case):
  """One `error:` line, exit 2, nothing written, and JAX never imported:
  the refusal comes before JAX starts (benchmarks/refusal_time.py times
  these)."""
  if case.setup is not None:
    case.setup(str(tmp_path))
  before = snapshot(str(tmp_path))
  time.sleep(0.01)  # A rewrite would show in the mtimes.
  result = refused_inputs.run(case, str(tmp_path), trace_imports=True)
  errors = refused_inputs.error_lines(result.stderr)
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
  for fragment in case.fragments:
    assert fragment in errors[0], (fragment, errors[0])
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  # Nothing but the import trace and the error line: no log line first.
  others = [l for l in result.stderr.splitlines()
            if not l.startswith(('import time:', 'error:'))]
  assert not others, others
  imported = refused_inputs.imported_packages(result.stderr)
  assert 'ml_collections' in imported  # The trace is on.
  assert not imported & set(refused_inputs.JAX_PACKAGES), imported
  assert not result.stdout
  assert snapshot(str(tmp_path)) == before


def test_bad_jax_platform_is_one_error_line(tmp_path):
  """A platform the host lacks: JAX's reason in one line, nothing written."""
  if 'libtpu' in host_devices.installed_accelerator_plugins():
    pytest.skip('libtpu is installed: this host may have a TPU')
  case = refused_inputs.Refused('tpu', refused_inputs.quick_args(), (),
                                env={'JAX_PLATFORMS': 'tpu'})
  before = snapshot(str(tmp_path))
  result = refused_inputs.run(case, str(tmp_path), timeout=120)
  errors = refused_inputs.error_lines(result.stderr)
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
  assert errors[0].startswith(
      "error: JAX_PLATFORMS='tpu' is not allowed on this host (Unable to "
      "initialize backend 'tpu'"), errors[0]
  assert errors[0].endswith('allowed: platforms it has (e.g. cpu), or unset '
                            '(JAX picks one).'), errors[0]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize('command', [TRAIN, SWEEP], ids=['train', 'sweep'])
def test_workdir_in_use_is_refused(tmp_path, command):
  lock = run_lock.RunLock(str(tmp_path / 'W'))
  lock.acquire()
  try:
    before = snapshot(str(tmp_path))
    time.sleep(0.01)
    result = _run(command, tmp_path)
    assert_refused(result, (
        f"workdir='{tmp_path / 'W'}' is in use by another run (pid "
        f'{os.getpid()} on ', 'allowed: one run per workdir: wait for it to '
        'end, or stop it (SIGTERM saves a checkpoint)'))
    assert snapshot(str(tmp_path)) == before
  finally:
    lock.release()


def test_workdir_not_writable_is_refused(tmp_path, read_only_dir):
  before = snapshot(str(tmp_path))
  workdir = os.path.join(read_only_dir, 'run')
  result = _run([*TRAIN, f'--workdir={workdir}'], tmp_path)
  why = 'a read-only file system' if os.geteuid() == 0 else 'permission denied'
  assert_refused(result, (f"workdir='{workdir}' is not writable "
                          f'({read_only_dir}: {why}); allowed: a directory',))
  assert snapshot(str(tmp_path)) == before


def test_at_least_25_bad_inputs_are_tried():
  # The tables, the lock (train.py, sweep.py) and the read-only workdir; the
  # full disk and damaged checkpoints are in test_faults.py.
  assert len(refused_inputs.CASES) >= 20
  assert len(CASES) + len(refused_inputs.CASES) + 2 + 1 >= 25


# ---------------------------------------------------------------------------
# The harness's own names and ranges (training/configuration.py, which
# imports no JAX) agree with the code that uses them.


def test_config_names_are_those_of_models_optimizers_and_padax():
  assert configuration.HYPERPARAMETERS == optimizers.HYPERPARAMETERS
  assert configuration.OPTIMIZERS == optimizers.OPTIMIZERS
  assert configuration.FORMULATIONS == padax.FORMULATIONS
  for name in configuration.DTYPE_NAMES:
    assert np.dtype(configuration.compute_dtype(name)).name == name


_PROBES = (-1.0, -1e-9, 0.0, 1e-9, 0.25, 0.5, 0.5 + 1e-9, 0.999, 1.0 - 1e-9,
           1.0, 2.0, 1e9, float('inf'), float('-inf'), float('nan'))


@pytest.mark.parametrize(
    'key', ('learning_rate', 'p', 'b1', 'b2', 'eps', 'weight_decay'))
def test_config_ranges_of_padax_arguments_are_padax_ranges(key):
  for value in _PROBES:
    try:
      padax.check_hyperparameters('padax', **{key: value})
      padax_allows = True
    except ValueError:
      padax_allows = False
    try:
      configuration.check_hyperparameter('padam', key, value)
      config_allows = True
    except ValueError as e:
      config_allows = False
      assert str(e).startswith(f'optimizer (padam): {key}={value!r} '), e
    assert config_allows == padax_allows, (key, value)


def test_sgd_momentum_has_its_own_range_and_name():
  for value in (0.0, 0.5, 0.9, 0.99):
    configuration.check_hyperparameter('sgdm', 'momentum', value)
  for value in (-0.1, 1.0, 1.5, float('nan')):
    with pytest.raises(ValueError, match=(
        rf'^optimizer \(sgdm\): momentum={value!r} is out of range; '
        r'allowed: 0 <= momentum < 1')):
      configuration.check_hyperparameter('sgdm', 'momentum', value)


def test_every_optimizer_hyperparameter_has_a_harness_range_of_its_own(
    monkeypatch):
  # Each numeric argument of a training/optimizers.py factory is checked
  # against the harness's table, whose default value it allows.
  defaults = configuration.base_config().optimizer
  for name, keys in optimizers.HYPERPARAMETERS.items():
    for key in keys:
      configuration.check_hyperparameter(name, key, defaults[key])
  # A new one, which padax does not know, needs only its range here.
  with pytest.raises(TypeError, match='unknown hyperparameter'):
    padax.check_hyperparameters('padax', dampening=0.5)
  monkeypatch.setitem(configuration.HYPERPARAMETER_RANGES, 'dampening',
                      (0.0, 1.0, True))
  configuration.check_hyperparameter('sgdm', 'dampening', 1.0)
  with pytest.raises(ValueError, match=(
      r'^optimizer \(sgdm\): dampening=1\.5 is out of range; allowed: '
      r'0 <= dampening <= 1\.$')):
    configuration.check_hyperparameter('sgdm', 'dampening', 1.5)
