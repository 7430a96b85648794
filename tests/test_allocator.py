"""training.allocator: when train.py restarts under mimalloc, and that the
allocator changes speed only, not results."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.fault_harness import env_with_cache
from tests.helpers import without_timing
from training import allocator
from training import host_devices

pytestmark = pytest.mark.slow

LINUX = sys.platform.startswith('linux')


@pytest.fixture
def no_plugins(monkeypatch):
  monkeypatch.setattr(host_devices, 'installed_accelerator_plugins',
                      lambda: [])


def test_restarts_with_mimalloc_preloaded_by_default(no_plugins):
  if not LINUX:
    pytest.skip('mimalloc is preloaded on Linux only')
  library = allocator.mimalloc_library()
  # The `train` extra installs it: CI must exercise the restart.
  assert library and os.path.basename(library).startswith('libmimalloc.so')
  env = allocator.mimalloc_environment({'PATH': '/bin', 'HOME': '/root'})
  assert env == {'PATH': '/bin', 'HOME': '/root', 'LD_PRELOAD': library,
                 'MIMALLOC_PURGE_DELAY': '-1'}
  # The user's own mimalloc settings win.
  env = allocator.mimalloc_environment({'MIMALLOC_PURGE_DELAY': '10'})
  assert env['MIMALLOC_PURGE_DELAY'] == '10'


@pytest.mark.parametrize('environ', [
    {'PADAX_ALLOCATOR': 'system'},
    {'LD_PRELOAD': '/usr/lib/libsomething.so'},  # The user's, or a restart.
])
def test_keeps_the_process_when_asked_or_already_preloaded(environ,
                                                           no_plugins):
  assert allocator.mimalloc_environment(environ) is None


@pytest.mark.parametrize('plugins, environ, restarts', [
    (['jax-cuda12-plugin'], {}, False),
    (['libtpu'], {}, False),
    ([], {'JAX_PLATFORMS': 'cuda'}, False),
    ([], {'JAX_PLATFORMS': 'tpu,cpu'}, False),
    # The user asked for the CPU on an accelerator host: a CPU host then.
    (['jax-cuda12-plugin'], {'JAX_PLATFORMS': 'cpu'}, True),
    ([], {}, True),
])
def test_keeps_the_process_on_accelerator_hosts(monkeypatch, plugins,
                                                environ, restarts):
  if not LINUX or allocator.mimalloc_library() is None:
    pytest.skip('mimalloc is preloaded on Linux only, where installed')
  monkeypatch.setattr(host_devices, 'installed_accelerator_plugins',
                      lambda: plugins)
  env = allocator.mimalloc_environment(environ)
  assert (env is not None) == restarts


def test_bad_choice_names_key_value_and_choices():
  with pytest.raises(ValueError) as info:
    allocator.mimalloc_environment({'PADAX_ALLOCATOR': 'jemalloc'})
  assert str(info.value) == (
      "PADAX_ALLOCATOR='jemalloc' is not allowed; allowed: mimalloc, "
      'system.')


def _train(workdir, data_dir, **env_overrides):
  env = env_with_cache(os.path.join(os.path.dirname(workdir), 'jax-cache'))
  env.pop('LD_PRELOAD', None)
  env.update(env_overrides)
  result = subprocess.run(
      [sys.executable, 'train.py', '--config', 'configs/quick.py',
       f'--workdir={workdir}', '--progress=false', '--config.num_epochs=1',
       # 8 steps of batch 128 on genuine images (the result does not depend
       # on how many; 5120 images cost a third more), then the full test set.
       '--config.train_examples=1024', '--config.data_source=local',
       f'--config.data_dir={data_dir}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  return result.stderr, rows


def test_train_py_runs_under_mimalloc_with_the_same_results(tmp_path,
                                                           cifar10_subset):
  if not LINUX or allocator.mimalloc_environment(dict(os.environ)) is None:
    pytest.skip('no restart here (not Linux, PADAX_ALLOCATOR=system, '
                'LD_PRELOAD set, or an accelerator plugin)')
  log, rows = _train(str(tmp_path / 'mimalloc'), cifar10_subset)
  system_log, system_rows = _train(str(tmp_path / 'system'), cifar10_subset,
                                   PADAX_ALLOCATOR='system')
  assert 'allocator: mimalloc' in log, log[-3000:]
  assert 'allocator: system malloc' in system_log, system_log[-3000:]
  # Bit for bit (JSON keeps every digit of a float32).
  assert without_timing(rows) == without_timing(system_rows)
  assert rows and rows[-1]['train_loss'] > 0
  assert rows[-1]['step'] == 1024 // 128


def test_train_py_refuses_a_bad_choice_before_any_file(tmp_path):
  env = dict(os.environ, PADAX_ALLOCATOR='jemalloc')
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, 'train.py', '--config', 'configs/quick.py',
       f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=120, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      "error: PADAX_ALLOCATOR='jemalloc' is not allowed; allowed: mimalloc, "
      'system.']
  assert not workdir.exists()


@pytest.mark.parametrize('script', ['train.py', 'sweep.py'])
def test_the_process_before_the_restart_does_not_start_jax(script, tmp_path):
  """Under mimalloc, everything imported before `use_mimalloc`'s restart is
  imported twice: JAX, ~1.5 s of a start, must not be among it. train.py
  restarts once its flags and config are checked: give it good ones."""
  argv = [script]
  if script == 'train.py':
    argv += ['--config', 'configs/quick.py', f'--workdir={tmp_path / "W"}']
  probe = (f'import runpy, sys; sys.argv = {argv!r}; '
           "from training import cli; cli.use_fast_allocator = "
           "lambda: sys.exit(','.join(sorted({m.split('.')[0] for m in "
           "sys.modules} & {'jax', 'flax', 'optax', 'orbax'})) or 0); "
           f'runpy.run_path({script!r}, run_name="__main__")')
  result = subprocess.run([sys.executable, '-c', probe], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0, (result.stderr or result.stdout)[-3000:]
