"""Kills runs of train.py / sweep.py at random points and checks nothing is lost.

A *round* trains one fresh workdir through tests/e2e_scripts/fault_run.py,
killing it again and again, each process at one randomly drawn fault:

  event   SIGKILL at the N-th event of a random kind (a training step, an
          evaluation batch, a checkpoint save, a metadata write inside an
          Orbax checkpoint, the rename that finalizes it, the deletion of an
          old checkpoint, the rename of a metrics file): fault_run.py kills
          itself there, from whichever thread gets there;
  timed   SIGKILL from outside, a random time after training started;
  term    SIGTERM from outside, a random time after training started: the
          run must save a checkpoint and exit 0 with a message.

After each fault the workdir must hold what it held before, or more: the
newest complete checkpoint never goes back, every metrics file parses, no
checkpoint is ever reported unreadable. The round ends when a process is not
killed (the run finished, or the drawn event never came) and then the final
checkpoint(s) must be bit-identical to those of an uninterrupted run of the
same command, and the metrics rows equal but for their timings.
"""

import dataclasses
import fcntl
import json
import os
import shutil
import random
import re
import signal
import subprocess
import sys
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import ROOT

FAULT_RUN = os.path.join(ROOT, 'tests', 'e2e_scripts', 'fault_run.py')
EVENT_KINDS = ('step', 'eval', 'ckpt_save', 'ckpt_write', 'ckpt_finalize',
               'prune', 'metrics')
TIMING = ('epoch_seconds', 'images_per_second')
TIMEOUT_S = 300

# The schedules' shapes are the only config values compiled into the train
# step (lr and p live in its state): these are tests/test_train_e2e.py's
# (SMALL), so its runs, these and tests/test_nonfinite.py's share compiled
# programs through the session's persistent cache.
_SMALL = ['--config.model=tiny_cnn', '--config.batch_size=32',
          '--config.eval_batch_size=64', '--config.optimizer.lr_milestones=(1,)',
          '--config.optimizer.p_decay_every_epochs=1',
          '--config.optimizer.p_decay_factor=0.5', '--progress=false']


def train_flags(num_epochs=3, every=1, keep=1, extra=()):
  return ['--entry=train', '--config', os.path.join(ROOT, 'configs',
                                                    'quick.py'), *_SMALL,
          f'--config.num_epochs={num_epochs}',
          f'--config.checkpoint_every_epochs={every}',
          f'--config.keep_checkpoints={keep}', *extra]


def sweep_flags(num_epochs=3, every=1, keep=1, extra=()):
  return ['--entry=sweep', '--config',
          os.path.join(ROOT, 'sweeps', 'configs', 'cpu_subset.py'), *_SMALL,
          '--config.sweep.p=(0.25,0.125)',
          '--config.sweep.learning_rate=(0.05,)', '--config.sweep.chunk=1',
          '--config.train_examples=0',  # fault_run.py's few random images.
          f'--config.num_epochs={num_epochs}',
          f'--config.checkpoint_every_epochs={every}',
          f'--config.keep_checkpoints={keep}', *extra]


def shared_path(tmp_path_factory, name: str) -> str:
  """A folder that every pytest-xdist worker of this session sees."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent
  path = os.path.join(str(root), name)
  os.makedirs(path, exist_ok=True)
  return path


def once(tmp_path_factory, name: str, build) -> str:
  """`build(path)` run once per session (whichever worker comes first, the
  others wait for it): returns the path, a folder shared by the workers."""
  path = shared_path(tmp_path_factory, name)
  with open(os.path.join(path, '.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(path, '.done')):
      build(path)
      open(os.path.join(path, '.done'), 'w').close()
  return path


@pytest.fixture(scope='module')
def compilation_cache_dir(tmp_path_factory):
  """A persistent compilation cache shared by this session's workers, in
  process and in their subprocesses (env_with_cache): each program compiles
  about once. Import it into the module; the previous settings are restored
  after."""
  path = shared_path(tmp_path_factory, 'padax_jax_compilation_cache')
  values = {'jax_compilation_cache_dir': path,
            'jax_persistent_cache_min_compile_time_secs': 0,
            'jax_persistent_cache_min_entry_size_bytes': -1}
  saved = {name: getattr(jax.config, name) for name in values}
  for name, value in values.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield path
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def env_with_cache(cache_dir):
  env = dict(os.environ)
  env.update({
      'JAX_COMPILATION_CACHE_DIR': cache_dir,
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1',
      # On a GPU machine the test process may already hold most of the
      # memory; the tests run on the CPU anyway.
      'XLA_PYTHON_CLIENT_PREALLOCATE': 'false',
      'JAX_PLATFORMS': 'cpu',
  })
  return env


def read_events(path):
  """[(kind, n, time)] of fault_run.py's events file."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line.split() for line in f if line.strip()]
  return [(kind, int(n), float(t)) for kind, n, t in lines]


def has_event(path, kind, n=1):
  return any(e[:2] == (kind, n) for e in read_events(path))


# ---------------------------------------------------------------------------
# What a workdir holds.


def checkpoint_dirs(workdir):
  """{chunk folder or '': sorted complete steps} of train.py / sweep dirs."""
  root = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(root):
    return {}
  folders = sorted(n for n in os.listdir(root) if n.startswith('chunk-'))
  out = {}
  for folder in folders or ['']:
    path = os.path.join(root, folder)
    out[folder] = sorted(int(n) for n in os.listdir(path) if n.isdigit())
  return out


def leftovers(workdir):
  """Files a finished run must not leave: tmp, .deleting-, unreadable-."""
  found = []
  for root, dirs, files in os.walk(workdir):
    for name in dirs + files:
      if ('orbax-checkpoint-tmp' in name or name.startswith(
          ('.deleting-', 'unreadable-', '.tmp-'))):
        found.append(os.path.relpath(os.path.join(root, name), workdir))
  return found


def metrics_files(workdir):
  """{relative dir: rows} of every metrics.jsonl (all must parse)."""
  out = {}
  for root, _, files in os.walk(workdir):
    if 'metrics.jsonl' in files:
      with open(os.path.join(root, 'metrics.jsonl')) as f:
        out[os.path.relpath(root, workdir)] = [json.loads(l) for l in f
                                               if l.strip()]
  return out


def without_timing(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def restore_raw(directory, step):
  """The arrays of a checkpoint, on this process's first device (whatever
  devices wrote it: sweep.py splits a CPU host into several)."""
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers=ocp.StandardCheckpointHandler())
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  try:
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        manager.item_metadata(step))
    return manager.restore(step, args=ocp.args.StandardRestore(target))
  finally:
    manager.close()


def host_array(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x)


def assert_same_final_state(a, b, same_kept=True):
  """Every chunk's newest checkpoint of workdir `a` equals `b`'s, bit for bit
  (and, if same_kept, both keep the same steps)."""
  dirs_a, dirs_b = checkpoint_dirs(a), checkpoint_dirs(b)
  if same_kept:
    assert dirs_a == dirs_b, (dirs_a, dirs_b)
  assert {f: s[-1] for f, s in dirs_a.items()} == {
      f: s[-1] for f, s in dirs_b.items()}, (dirs_a, dirs_b)
  leaves = 0
  for folder, steps in dirs_a.items():
    path_a = os.path.join(a, 'checkpoints', folder)
    path_b = os.path.join(b, 'checkpoints', folder)
    tree_a = restore_raw(path_a, steps[-1])
    tree_b = restore_raw(path_b, steps[-1])
    flat_a = jax.tree_util.tree_flatten_with_path(tree_a)[0]
    flat_b = jax.tree.leaves(tree_b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
      x, y = host_array(x), host_array(y)
      assert x.dtype == y.dtype and x.shape == y.shape, path
      assert x.tobytes() == y.tobytes(), (
          f'{folder} {jax.tree_util.keystr(path)} differs')
      leaves += 1
  # params, batch_stats, Padam's moments, step, rng: not a vacuous check.
  assert leaves > 40 * len(dirs_a), leaves


def assert_same_results(a, b, same_kept=True):
  assert_same_final_state(a, b, same_kept)
  rows_a, rows_b = metrics_files(a), metrics_files(b)
  assert set(rows_a) == set(rows_b)
  for name in rows_a:
    assert without_timing(rows_a[name]) == without_timing(rows_b[name]), name
  if os.path.exists(os.path.join(b, 'summary.json')):
    with open(os.path.join(a, 'summary.json')) as fa, open(
        os.path.join(b, 'summary.json')) as fb:
      assert json.load(fa) == json.load(fb)


# ---------------------------------------------------------------------------
# Rounds.


@dataclasses.dataclass
class Fault:
  kind: str           # 'event', 'timed' or 'term'
  event: str = ''     # event kind for 'event'
  n: int = 0          # its occurrence
  delay: float = 0.0  # seconds after training started for 'timed', 'term'

  def __str__(self):
    return (f'SIGKILL at {self.event} {self.n}' if self.kind == 'event' else
            f'{"SIGKILL" if self.kind == "timed" else "SIGTERM"} '
            f'{self.delay:.2f}s into training')


@dataclasses.dataclass
class Tally:
  kills: int = 0
  terms: int = 0
  rounds: int = 0
  processes: int = 0
  missed: int = 0  # drawn faults that never came (the run finished first)
  by_last_event: dict = dataclasses.field(default_factory=dict)
  log: list = dataclasses.field(default_factory=list)

  def as_dict(self):
    return dataclasses.asdict(self)


def run_to_end(flags, workdir, events, env, extra=()):
  """An uninterrupted run; returns the completed process."""
  result = subprocess.run(
      [sys.executable, FAULT_RUN, f'--workdir={workdir}',
       f'--events={events}', *flags, *extra], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  return result


def reference_profile(events):
  """(count of each event kind, seconds of training) of a reference run."""
  counts, times = {}, {}
  for kind, n, t in read_events(events):
    counts[kind] = max(counts.get(kind, 0), n)
    times.setdefault(kind, t)
  return counts, times['done'] - times['step']


def draw_fault(rng: random.Random, counts: dict, train_seconds: float,
               remaining: float):
  """A random fault within what is left to do (a fraction of the reference
  run's events and time), so that most drawn faults do come."""
  r = rng.random()
  if r < 0.15:
    return Fault('timed', delay=rng.uniform(0, train_seconds * remaining))
  if r < 0.25:
    return Fault('term', delay=rng.uniform(0, train_seconds * remaining))
  kind = rng.choice([k for k in EVENT_KINDS if counts.get(k)])
  return Fault('event', kind,
               rng.randint(1, max(1, round(counts[kind] * remaining))))


def _remaining(workdir, reference):
  """The fraction of the reference's steps not yet in a checkpoint."""
  done = sum(steps[-1] for steps in checkpoint_dirs(workdir).values()
             if steps)
  total = sum(steps[-1] for steps in checkpoint_dirs(reference).values())
  return 1.0 - done / total


def _snapshot(workdir):
  newest = {folder: (steps[-1] if steps else None)
            for folder, steps in checkpoint_dirs(workdir).items()}
  return newest, metrics_files(workdir)


def _lock_holder(workdir):
  path = os.path.join(workdir, 'lock')
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    return f.read().strip()


def _check_nothing_lost(before, after, stderr):
  newest_before, _ = before
  newest_after, rows_after = after
  for folder, step in newest_before.items():
    if step is not None:
      assert newest_after.get(folder) is not None and (
          newest_after[folder] >= step), (folder, step, newest_after)
  for name, rows in rows_after.items():
    assert [r['epoch'] for r in rows] == list(range(1, len(rows) + 1)), name
  assert 'unreadable' not in stderr, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]


def fault_round(flags, workdir, reference, env, rng, tally, counts,
                train_seconds, max_faults):
  """Faults a fresh run of `flags` in `workdir` until a process is not
  killed (or max_faults were made), finishes it, compares with `reference`.
  """
  tally.rounds += 1
  events = workdir + '.events'
  faults_made = 0
  killed_holding_lock = False
  while True:
    fault = (draw_fault(rng, counts, train_seconds,
                        _remaining(workdir, reference))
             if faults_made < max_faults else None)
    extra = ([f'--kill_at={fault.event}:{fault.n}']
             if fault and fault.kind == 'event' else [])
    if os.path.exists(events):
      os.remove(events)
    before = _snapshot(workdir)
    proc = subprocess.Popen(
        [sys.executable, FAULT_RUN, f'--workdir={workdir}',
         f'--events={events}', *flags, *extra], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tally.processes += 1
    try:
      if fault and fault.kind in ('timed', 'term'):
        deadline = time.monotonic() + TIMEOUT_S
        while (not has_event(events, 'step') and
               proc.poll() is None and time.monotonic() < deadline):
          time.sleep(0.01)
        time.sleep(fault.delay)
        if proc.poll() is None:
          proc.send_signal(signal.SIGKILL if fault.kind == 'timed'
                           else signal.SIGTERM)
      _, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    last = read_events(events)[-1][0] if read_events(events) else 'start'
    if killed_holding_lock:
      # The killed run's lock did not stay stuck: taken over, and said so.
      assert 'Took over the lock of' in stderr, stderr[-3000:]
    # A clean release empties the lock file: a name left in it is a run
    # killed while it held the lock.
    killed_holding_lock = (proc.returncode == -signal.SIGKILL and
                           _lock_holder(workdir) != '')
    record = {'fault': str(fault) if fault else None,
              'returncode': proc.returncode, 'last_event': last}
    tally.log.append(record)
    # A SIGTERM in the instant after training ended, when the default
    # handler is back, ends the process as a kill does.
    if proc.returncode in (-signal.SIGKILL, -signal.SIGTERM):
      tally.kills += 1
      faults_made += 1
      tally.by_last_event[last] = tally.by_last_event.get(last, 0) + 1
      _check_nothing_lost(before, _snapshot(workdir), stderr)
      continue
    assert proc.returncode == 0, (record, stderr[-5000:])
    _check_nothing_lost(before, _snapshot(workdir), stderr)
    if 'Stopped by SIGTERM' in stderr:
      assert re.search(r'Stopped by SIGTERM at step \d+', stderr), stderr
      tally.terms += 1
      faults_made += 1
      continue
    if fault is not None:
      tally.missed += 1
    if has_event(events, 'done') and 'Stopped by' not in stderr:
      break
  assert not leftovers(workdir), leftovers(workdir)
  assert_same_results(workdir, reference)



# ---------------------------------------------------------------------------
# Refusals: one message, no traceback, no file changed anywhere near.


def snapshot_around(root):
  """helpers.snapshot of `root` (the test's folder: the workdir and what lies
  around it), plus each symlink's target found under it, wherever that is
  (mtime, size, mode and digest of a file; the listing of a folder)."""
  from tests.helpers import snapshot  # pylint: disable=g-import-not-at-top
  out = snapshot(root)
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      if not os.path.islink(path):
        continue
      target = os.path.realpath(path)
      if os.path.isdir(target):
        out['-> ' + target] = (os.stat(target).st_mtime_ns,
                               snapshot(target))
      elif os.path.isfile(target):
        with open(target, 'rb') as f:
          st = os.stat(target)
          out['-> ' + target] = (st.st_mtime_ns, st.st_size, st.st_mode,
                                 f.read())
  return out


def run_script(argv, cwd, env=None):
  """A Python script (train.py, sweep.py, ...) run in `cwd` on the CPU."""
  return subprocess.run(
      [sys.executable, *argv], cwd=str(cwd), capture_output=True, text=True,
      timeout=TIMEOUT_S, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})})


def assert_one_error(result, fragments, status=2):
  """Exit `status`, one `error:` line holding each fragment, no traceback."""
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert result.returncode == status, result.stderr[-3000:]
  assert len(errors) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], (fragment, errors[0])
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]


def remove(*names):
  """A case's step: removes `names` (files, folders, links) under its tmp."""
  def step(tmp):
    for name in names:
      path = os.path.join(tmp, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
  return step
