"""The sweep runner (sweeps/, sweep.py): a vmapped grid of train.py's step.

Small and CPU-fast: tiny_cnn, batches of 16, genuine CIFAR-10 images sliced
from the shared subset (random images where it is absent). The compiled
functions are memoised per base config in sweeps.grid, so every test here
uses the same base config and batch shapes.
"""

import glob
import json
import logging
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import models
from configs import quick
from reporting import sweep_summary
from sweeps import grid
from sweeps import run as sweep_run
from sweeps import spec
from sweeps.configs import cpu_subset
from sweeps.configs import report_p_grid
from sweeps.configs import report_sensitivity
from tests.conftest import ROOT
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import
from tests.sweep_helpers import BATCH, NUM_TEST, NUM_TRAIN, STEPS_PER_EPOCH
from tests.sweep_helpers import restore_chunk, small_data, sweep_config
from training import input_pipeline
from training import optimizers
from training import records
from training import train_lib
from training import rundir

NUM_STEPS = 4
# Member X, and the others it shares a grid with: p AND lr differ.
X = dict(p=0.25, learning_rate=0.05, seed=0)
Y = dict(p=0.125, learning_rate=0.01, seed=1)
Z = dict(p=0.0625, learning_rate=0.002, seed=2)
W = dict(p=0.5, learning_rate=0.1, seed=3)
# vmap batches the convolutions into grouped ones and reduces BatchNorm
# statistics over other shapes, which XLA computes in another order. Measured
# (jax 0.10.2, CPU) after 4 steps: ~45 of the 56 float leaves (params,
# batch_stats, opt_state) of a member differ from its run alone, by at most
# 1.2e-7 absolute (BatchNorm variances ~1: 1 ulp) and 0.04 * (ATOL + RTOL *
# |ref|) anywhere; the summed metrics came out bit-identical. The same holds
# for a member in grids of other sizes and companions.
RTOL, ATOL = 1e-5, 1e-6
TIMING = ('epoch_seconds', 'images_per_second')

# lr and p live in the optimizer state (optimizers.create_optimizer), so the
# members' runs alone (train_alone) are one program: with the persistent
# cache it compiles once, not once per member.
pytestmark = [pytest.mark.usefixtures('compilation_cache_dir'),
              pytest.mark.slow]


@pytest.fixture(scope='module')
def data():
  return small_data()


def members_of(*values):
  return [spec.Member(i, f'm{i}', dict(v)) for i, v in enumerate(values)]


def host(tree):
  """Numpy leaves; PRNG keys as their key data."""
  def one(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)


def member(tree, k):
  return jax.tree.map(lambda x: x[k], tree)


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
  """Integer leaves (step, rng) equal; float leaves within the tolerance."""
  flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
  flat_e = jax.tree.leaves(expected)
  assert len(flat_a) == len(flat_e)
  for (path, a), e in zip(flat_a, flat_e):
    where = jax.tree_util.keystr(path)
    if np.issubdtype(a.dtype, np.floating):
      np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=where)
    else:
      np.testing.assert_array_equal(a, e, err_msg=where)


def batches(data, seed, count=NUM_STEPS):
  order = input_pipeline.epoch_permutation(seed, 1, NUM_TRAIN)
  return [{'images': data.train.images[order[i * BATCH:(i + 1) * BATCH]],
           'labels': data.train.labels[order[i * BATCH:(i + 1) * BATCH]]}
          for i in range(count)]


def train_grid(data, members, *, own_batches=False):
  """Stacked states after NUM_STEPS vmapped steps; and the summed metrics."""
  config = sweep_config()
  _, _, steps, init = grid.build(spec.train_config(config), 10,
                                 STEPS_PER_EPOCH, own_batches)
  state = grid.init_grid(init, members)
  if own_batches:
    streams = [batches(data, m.seed) for m in members]
    feed = [jax.tree.map(lambda *x: np.stack(x), *step_batches)
            for step_batches in zip(*streams)]
  else:
    feed = batches(data, 0)
  totals = None
  for batch in feed:
    state, metrics = steps.train_step(state, jax.tree.map(
        lambda x: steps.global_array(x, steps.sharded), batch))
    totals = metrics if totals is None else steps.add(totals, metrics)
  return host(state), host(totals)


def train_alone(data, values, batch_seeds):
  """train.py's way: MeshSteps of the member's own optimizer, seeded state.

  One run per batch seed (the batches of epoch_permutation(seed, 1)), with
  the same compiled step; returns [(state, summed metrics)].
  """
  member_cfg = spec.member_config(sweep_config(), spec.Member(0, 'x', values))
  optimizer = optimizers.create_optimizer(member_cfg, STEPS_PER_EPOCH)
  model = models.create_model(member_cfg.model, 10)
  steps = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer)
  init = jax.jit(
      lambda rng: train_lib.create_train_state(rng, model, optimizer),
      out_shardings=steps.replicated)
  runs = []
  for batch_seed in batch_seeds:
    state = init(jax.random.key(member_cfg.seed))
    totals = None
    for batch in batches(data, batch_seed):
      state, metrics = steps.train_step(state, steps.shard(batch))
      totals = metrics if totals is None else steps.add(totals, metrics)
    runs.append((host(state), host(totals)))
  return runs


@pytest.fixture(scope='module')
def xyz(data):
  return train_grid(data, members_of(X, Y, Z))


# 1. -------------------------------------------------------------------------


def test_grid_members_equal_runs_alone(data, xyz):
  """Each member of a vmapped 3-member grid (p and lr differ) = its own run.

  Shared batches (the default) against each config trained alone on the same
  batches; then each member on its own batches (own_batches) against its run
  alone on the batches of its seed, with the same compiled single steps.
  """
  grid_state, grid_metrics = xyz
  own_state, own_metrics = train_grid(data, members_of(X, Y, Z),
                                      own_batches=True)
  for k, values in enumerate((X, Y, Z)):
    shared, own = train_alone(data, values, batch_seeds=(0, values['seed']))
    assert_close(member(grid_state, k), shared[0])
    assert_close(member(grid_metrics, k), shared[1])
    assert_close(member(own_state, k), own[0])
    assert_close(member(own_metrics, k), own[1])
    # The hyperparameters in the state are the member's own.
    hyper = member(grid_state, k).opt_state.hyperparams
    assert hyper['p'] == np.float32(values['p'])
    assert hyper['learning_rate'] == np.float32(values['learning_rate'])


# 2. -------------------------------------------------------------------------


def test_batch_norm_statistics_per_member_and_independent_of_grid(data, xyz):
  grid_state, grid_metrics = xyz
  stats = grid_state.batch_stats
  for layer in stats:
    for k in range(3):
      for j in range(k):
        assert not np.allclose(stats[layer]['mean'][k],
                               stats[layer]['mean'][j])
  # The running stats moved from their init (0, 1) in every member.
  assert np.all(np.abs(stats['bn1']['mean']).max(-1) > 0)
  # X in grid {X, W} (another size, other companions) = X in {X, Y, Z}.
  xw_state, xw_metrics = train_grid(data, members_of(X, W))
  assert_close(member(xw_state, 0), member(grid_state, 0))
  assert_close(member(xw_metrics, 0), member(grid_metrics, 0))
  # ... and W is not X.
  assert not np.allclose(xw_state.params['conv1']['kernel'][1],
                         xw_state.params['conv1']['kernel'][0])


# 3. -------------------------------------------------------------------------


class Killed(Exception):
  pass


def read_rows(workdir, name):
  return rundir.read_rows(rundir.Workdir(
      os.path.join(workdir, 'members', name),
      ml_collections.ConfigDict()).jsonl_path)


def final_states(workdir, num_chunks):
  return [host(restore_chunk(workdir, ci, num_classes=10,
                             steps_per_epoch=STEPS_PER_EPOCH)[1])
          for ci in range(num_chunks)]


def chunked_config():
  """4 members in chunks of 2 (the compiled K=2 step of test 2 serves)."""
  return sweep_config(p=(0.25, 0.125, 0.0625, 0.5), learning_rate=(0.05,),
                      chunk=2)


@pytest.fixture(scope='module')
def straight(data, tmp_path_factory):
  """An uninterrupted 3-epoch sweep of chunked_config(): (workdir, summary)."""
  workdir = str(tmp_path_factory.mktemp('straight') / 'a')
  return workdir, sweep_run.run_sweep(chunked_config(), workdir, data=data,
                                 progress=False)


def test_interrupted_sweep_resumes_bit_identical(data, tmp_path, straight,
                                                 caplog):
  """Stopped, extended and killed mid-chunk, then rerun: as if never stopped.

  Run A (`straight`): 3 epochs. Run B: 2 epochs, then extended to 3 epochs
  and killed in chunk 2 after epoch 3's metrics of its members were written
  but before its checkpoint, then run again.
  """
  config = chunked_config()
  names = [m.name for m in spec.grid_members(config)]
  (a, summary_a), b = straight, str(tmp_path / 'b')

  short = chunked_config()
  short.num_epochs = 2
  sweep_run.run_sweep(short, b, data=data, progress=False)
  assert [len(read_rows(b, n)) for n in names] == [2, 2, 2, 2]

  def kill(chunk_index, epoch):
    if (chunk_index, epoch) == (1, 3):
      raise Killed()

  with pytest.raises(Killed):
    sweep_run.run_sweep(config, b, data=data, progress=False, after_epoch=kill)
  # Chunk 2's epoch-3 rows were written after its last checkpoint (epoch 2).
  assert [len(read_rows(b, n)) for n in names] == [3, 3, 3, 3]
  caplog.clear()
  with caplog.at_level(logging.INFO):
    summary_b = sweep_run.run_sweep(config, b, data=data, progress=False)
  # Chunk 1 had all its epochs: the log says so, and not of chunk 2.
  nothing_left = [r.getMessage() for r in caplog.records
                  if r.getMessage().startswith('Nothing left to train')]
  assert nothing_left == [
      'Nothing left to train in chunk 1/2: all num_epochs=3 epochs are done; '
      'a larger --config.num_epochs trains on from this checkpoint.']

  for state_a, state_b in zip(final_states(a, 2), final_states(b, 2)):
    leaves_a = jax.tree_util.tree_flatten_with_path(state_a)[0]
    leaves_b = jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for (path, x), y in zip(leaves_a, leaves_b):
      assert np.array_equal(np.asarray(x), np.asarray(y)), path
  for name in names:
    rows_a, rows_b = read_rows(a, name), read_rows(b, name)
    assert [r['epoch'] for r in rows_a] == [1, 2, 3]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING}
                          for r in rows]
    assert strip(rows_a) == strip(rows_b)
  assert [{k: v for k, v in s.items()} for s in summary_a] == summary_b

  # The workdir's files: as train.py's for each member, plus the summary.
  for name in names:
    member_dir = os.path.join(a, 'members', name)
    with open(os.path.join(member_dir, 'metrics.csv')) as f:
      assert f.readline().strip() == ','.join(records.COLUMNS)
      lr_cells = [line.split(',')[records.COLUMNS.index('lr')]
                  for line in f]
    # The float32 lr, as the shortest text of that float32: 0.05, not
    # 0.05000000074505806 (metrics.jsonl's exact value).
    assert lr_cells == [str(np.float32(r['lr'])) for r in read_rows(a, name)]
    assert lr_cells[0] == '0.05'
    with open(os.path.join(member_dir, 'config.json')) as f:
      member_cfg = json.load(f)
    assert member_cfg['model'] == 'tiny_cnn'
    assert member_cfg['optimizer']['p'] == float(name.split('-')[0][1:])
  with open(os.path.join(a, 'summary.json')) as f:
    summary = json.load(f)['members']
  assert [s['name'] for s in summary] == names
  for s in summary:
    rows = read_rows(a, s['name'])
    assert s['best_test_error'] == min(r['test_error'] for r in rows)
    assert s['final_test_error'] == rows[-1]['test_error']
    assert 1 <= s['best_epoch'] <= 3 and s['learning_rate'] == 0.05
  with open(os.path.join(a, 'summary.md')) as f:
    text = f.read()
  # The grid lists p as 0.25, 0.125, 0.0625, 0.5; summary.md by value, as
  # report.py's table.md and grid.md.
  listed = [line.split(' | ')[0].strip('| ') for line in text.splitlines()
            if line.startswith('| p')]
  assert listed == ['p0.0625-lr0.05-seed0', 'p0.125-lr0.05-seed0',
                    'p0.25-lr0.05-seed0', 'p0.5-lr0.05-seed0']
  with open(os.path.join(a, 'config.json')) as f:
    assert json.load(f)['sweep']['chunk'] == 2
  # Another chunking of the same workdir is refused, naming the key.
  with pytest.raises(ValueError, match=r'sweep\.chunk=3 is not allowed.*'
                     r'allowed: 2 \(--chunk 2\)'):
    sweep_run.run_sweep(config, b, data=data, progress=False, chunk=3)

  # The device layout the rows depend on is recorded, and "auto" resumes on
  # it: sweep.py splits a CPU host into that many devices.
  with open(os.path.join(a, 'config.json')) as f:
    layout = json.load(f)['sweep_layout']
  assert sorted(layout) == ['devices_per_member', 'grid_devices']
  assert 1 <= layout['grid_devices'] * layout['devices_per_member'] <= (
      jax.device_count())
  assert sweep_run.cpu_split(config, a, spec.AUTO_CHUNK) == (
      layout['grid_devices'],
      layout['grid_devices'] * layout['devices_per_member'])
  # A layout this process cannot reproduce is refused, nothing written.
  moved = str(tmp_path / 'moved')
  shutil.copytree(a, moved)
  with open(os.path.join(moved, 'config.json')) as f:
    stored = json.load(f)
  stored['sweep_layout'] = {'grid_devices': 1,
                               'devices_per_member': jax.device_count() + 1}
  with open(os.path.join(moved, 'config.json'), 'w') as f:
    json.dump(stored, f)
  before = {p: open(p, 'rb').read() for p in glob.glob(
      os.path.join(moved, '**'), recursive=True) if os.path.isfile(p)}
  with pytest.raises(ValueError, match=(
      r'holds a sweep trained on 1 x \d+ devices \(grid x data\); this '
      r'process has \d+ device\(s\).*allowed: \d+ devices')):
    sweep_run.run_sweep(config, moved, data=data, progress=False)
  after = {p: open(p, 'rb').read() for p in glob.glob(
      os.path.join(moved, '**'), recursive=True) if os.path.isfile(p)}
  assert after == before


# Several devices. -------------------------------------------------------------

_TWO_DEVICES = r"""
import json, os, sys
sys.path.insert(0, os.environ['ROOT'])
import jax
from tests import sweep_helpers as t
from sweeps import grid
from sweeps import run as sweep_run
assert jax.device_count() == 2
config = t.sweep_config(p=(0.25, 0.125, 0.0625), learning_rate=(0.05,))
config.num_epochs = 1
sweep_run.run_sweep(config, sys.argv[1], data=t.small_data(), progress=False)
members, state = t.restore_chunk(sys.argv[1], 0, num_classes=10,
                                 steps_per_epoch=t.STEPS_PER_EPOCH)
print(json.dumps([len(members), state.params['conv1']['kernel'].shape[0]]))
"""


@pytest.mark.skipif(
    not os.environ.get('PADAX_MESH_TESTS'),
    reason='~35 s (a fresh process compiling for 2 devices): set '
    'PADAX_MESH_TESTS=1 to run it.')
def test_members_spread_over_a_grid_mesh_axis(tmp_path, straight):
  """3 members at once on 2 (simulated CPU) devices: padded to 4.

  The checkpoint holds the 3 real members; epoch 1's metrics equal those of
  the same members in the 1-device sweep in chunks of 2 (`straight`) within
  the float tolerance.
  """
  two = tmp_path / 'two'
  assert _run_on_devices(_TWO_DEVICES, two, 2) == [3, 3]
  _assert_epoch_1_as_on_one_device(two, straight, 3)


def _run_on_devices(script, workdir, num_devices):
  """The last stdout line (JSON) of `script` run on `num_devices` simulated
  CPU devices in a fresh process."""
  result = subprocess.run(
      [sys.executable, '-c', script, str(workdir)], capture_output=True,
      text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, ROOT=ROOT, JAX_PLATFORMS='cpu',
               XLA_FLAGS=f'--xla_force_host_platform_device_count='
               f'{num_devices}'))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_epoch_1_as_on_one_device(workdir, straight, num_members):
  """Epoch 1 of the first members equals the 1-device sweep's (`straight`):
  losses within the float tolerance (sums in another order), the rest
  exactly."""
  for m in spec.grid_members(chunked_config())[:num_members]:
    (row,), row_one = read_rows(str(workdir), m.name), read_rows(
        straight[0], m.name)[0]
    for key in ('train_loss', 'test_loss'):
      assert math.isclose(row[key], row_one[key], rel_tol=1e-5), key
    for key in ('train_error', 'test_error', 'test_top5_error', 'step', 'lr',
                'p'):
      assert row[key] == row_one[key], key


_GRID_BY_DATA = r"""
import os, sys
sys.path.insert(0, os.environ['ROOT'])
import jax
from tests import sweep_helpers as t
assert jax.device_count() == 4
config = t.sweep_config(p=(0.25, 0.125), learning_rate=(0.05,))
config.num_epochs = 1
t.print_sweep_meshes(config, sys.argv[1], t.small_data())
"""


def test_each_member_data_parallel_over_its_own_devices(tmp_path, straight):
  """2 members on 4 (simulated CPU) devices: a 2 x 2 (grid x data) mesh, as
  sweep.py splits a CPU host; each member's batch is split over 2 devices,
  BatchNorm over its whole batch. Epoch 1 equals the same members trained
  on one device (`straight`) within the float tolerance (sums in another
  order)."""
  run = tmp_path / 'run'
  assert _run_on_devices(_GRID_BY_DATA, run, 4) == [{'grid': 2, 'data': 2}]
  _assert_epoch_1_as_on_one_device(run, straight, 2)


def test_devices_per_member():
  config = quick.get_config()
  config.batch_size, config.eval_batch_size = 128, 500
  assert grid.devices_per_member(config, 36, 9) == 4
  assert grid.devices_per_member(config, 9, 9) == 1
  assert grid.devices_per_member(config, 1, 9) == 1
  assert grid.devices_per_member(config, 8, 3) == 2
  # 4 does not divide an evaluation batch of 250 (nor 3 a batch of 128).
  config.eval_batch_size = 250
  assert grid.devices_per_member(config, 36, 9) == 2
  sweep = sweep_config(p=(0.25, 0.125, 0.0625), learning_rate=(0.1, 0.01))
  sweep.batch_size, sweep.eval_batch_size = 128, 100
  per_run = sweep.cpu_devices
  assert per_run == 4, per_run  # configs/quick.py's, the sweep tests' base.
  assert grid.cpu_devices(sweep) == 6 * per_run
  assert grid.cpu_devices(sweep, chunk=2) == 2 * per_run


# 4. -------------------------------------------------------------------------


@pytest.mark.parametrize('sweep, match', [
    (dict(p=()), r"sweep\.p=\(\) is not allowed \(empty\); allowed: a "
                 r"non-empty list of distinct values of optimizer\.p\."),
    (dict(p=(0.25, 0.7)), r"sweep\.p=\(0\.25, 0\.7\) is not allowed "
                          r"\(optimizer \(padam\): p=0\.7 is out of range; "
                          r"allowed: 0 <= p <= 0\.5"),
    (dict(p=(-0.1,)), r"sweep\.p=\(-0\.1,\).*allowed: 0 <= p <= 0\.5"),
    (dict(learning_rate=(0.1, -0.01)),
     r"sweep\.learning_rate=\(0\.1, -0\.01\) is not allowed \(optimizer "
     r"\(padam\): learning_rate=-0\.01 is out of range; allowed: "
     r"learning_rate >= 0.*\); allowed: a non-empty list"),
    (dict(p=('a',)), r"sweep\.p=\('a',\) is not allowed \('a' is not a "
                     r"number\)"),
    (dict(learning_rate='0.1'), r"sweep\.learning_rate='0\.1' is not allowed "
                                r"\(not a list\)"),
    (dict(p=(0.25, True)), r"sweep\.p=.*True is not a number"),
    (dict(seed=(0, 1.5)), r"sweep\.seed=\(0, 1\.5\) is not allowed \(1\.5 is "
                          r"not an integer >= 0\); allowed: .*integers >= 0"),
    (dict(seed=(-1,)), r"sweep\.seed=\(-1,\).*integers >= 0"),
    (dict(p=(0.25, 0.25)), r"sweep\.p=\(0\.25, 0\.25\).*a value repeats"),
    (dict(lr=(0.1,)), r"sweep\.lr=\(0\.1,\) is not allowed \(not a grid "
                      r"key; did you mean learning_rate\?\); allowed: grid "
                      r"keys p, learning_rate"),
    (dict(momentum=(0.9,)), r"sweep\.momentum=.*optimizer\.name='padam' "
                            r"takes no momentum"),
    (dict(b2=(0.999, 1.0)), r"sweep\.b2=.*allowed: 0 <= b2 < 1"),
    (dict(chunk=-2), r"sweep\.chunk=-2 is not allowed"),
    (dict(own_batches='yes'), r"sweep\.own_batches='yes' is not allowed"),
])
def test_bad_grid_is_refused_before_any_file(data, tmp_path, sweep, match):
  workdir = tmp_path / 'sweep'
  with pytest.raises(ValueError, match=match):
    sweep_run.run_sweep(sweep_config(**sweep), str(workdir), data=data,
                   progress=False)
  assert not workdir.exists()


def test_command_line_refuses_bad_grid(tmp_path):
  workdir = tmp_path / 'sweep'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'sweep.py'), '--config',
       os.path.join(ROOT, 'sweeps', 'configs', 'cpu_subset.py'),
       '--workdir', str(workdir), '--config.sweep.p=(0.25,0.75)'],
      capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2, result.stderr[-2000:]
  assert ('error: sweep.p=(0.25, 0.75) is not allowed (optimizer (padam): '
          'p=0.75 is out of range; allowed: 0 <= p <= 0.5') in result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


_DEVICES_LINE = r"""
import os, sys
sys.path.insert(0, os.environ['ROOT'])
sys.argv = ['sweep.py', '--config', sys.argv[1], '--workdir', sys.argv[2],
            '--chunk', '3']
from absl import app
import sweep
from training import cli
import jax
# Everything of sweep.main up to training: the devices and their log line.
cli.run = lambda main: print('device_count', jax.device_count())
cli.print_results = lambda *args, **kwargs: None
app.run(sweep.main, flags_parser=cli.parse_flags)
"""


def test_command_line_names_the_virtual_cpu_devices(tmp_path):
  """On a CPU host sweep.py splits the CPU into XLA devices (cpu_subset: 4
  per member); its log line says what the count is made of."""
  result = subprocess.run(
      [sys.executable, '-c', _DEVICES_LINE,
       os.path.join(ROOT, 'sweeps', 'configs', 'cpu_subset.py'),
       str(tmp_path / 'sweep')], capture_output=True, text=True,
      cwd=str(tmp_path), timeout=120,
      env={**{k: v for k, v in os.environ.items()
              if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')},
           'ROOT': ROOT, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'device_count 12' in result.stdout
  assert (f'the CPU ({os.cpu_count()} cores) split into 12 virtual devices: '
          '4 for each of the 3 members trained at once (cpu_devices).'
          ) in result.stderr, result.stderr
  assert not (tmp_path / 'sweep').exists()


def test_summary_lists_members_by_value():
  """summary.md: p, then lr, ascending, whatever the grid's order."""
  config = sweep_config(p=(0.25, 0.0625), learning_rate=(0.1, 0.001, 0.01))
  members = spec.grid_members(config)
  summary = [sweep_summary.summarize_member(
      m.name, m.values, [dict(epoch=1, test_error=0.5, train_loss=1.0)])
             for m in members]
  text = sweep_summary.summary_markdown(
      spec.train_config(config).to_dict(), ['p', 'learning_rate', 'seed'],
      summary)
  listed = [line.split(' | ')[0].strip('| ') for line in text.splitlines()
            if line.startswith('| p')]
  assert listed == ['p0.0625-lr0.001-seed0', 'p0.0625-lr0.01-seed0',
                    'p0.0625-lr0.1-seed0', 'p0.25-lr0.001-seed0',
                    'p0.25-lr0.01-seed0', 'p0.25-lr0.1-seed0']


# Pieces. --------------------------------------------------------------------


def test_presets():
  p_grid = report_p_grid.get_config('cifar100')
  assert p_grid.dataset == 'cifar100' and p_grid.model == 'resnet18'
  assert [m.values for m in spec.grid_members(p_grid)] == [
      dict(p=p, learning_rate=0.1, seed=0) for p in (0.25, 0.125, 0.0625)]
  assert tuple(p_grid.optimizer.lr_milestones) == (30, 60, 90)
  sensitivity = report_sensitivity.get_config()
  assert sensitivity.num_epochs == 30
  assert {(m.values['p'], m.values['learning_rate'])
          for m in spec.grid_members(sensitivity)} == {
              (p, lr) for p in (0.25, 0.125, 0.0625)
              for lr in (0.1, 0.01, 0.001)}
  cpu = cpu_subset.get_config()
  assert len(spec.grid_members(cpu)) == 9 and cpu.model == 'tiny_cnn'
  assert cpu.data_source == 'download' and cpu.train_examples == 5000
  with pytest.raises(ValueError, match='cifar10, cifar100'):
    report_p_grid.get_config('mnist')


def test_member_names_configs_and_chunks():
  config = sweep_config(p=(0.25, 0.0625), learning_rate=(0.1, 1e-3),
                        seed=(0, 1), weight_decay=(0.0, 5e-4))
  members = spec.grid_members(config)
  assert len(members) == 16
  assert members[0].name == 'p0.25-lr0.1-wd0-seed0'
  assert members[-1].name == 'p0.0625-lr0.001-wd0.0005-seed1'
  cfg = spec.member_config(config, members[-1])
  assert (cfg.seed, cfg.optimizer.p, cfg.optimizer.learning_rate,
          cfg.optimizer.weight_decay) == (1, 0.0625, 1e-3, 5e-4)
  assert 'sweep' not in cfg
  assert [len(c) for c in spec.chunks_of(members, 5)] == [5, 5, 5, 1]
  # Automatic chunking: what fits in 70% of the free memory.
  assert grid.auto_chunk(16, member_bytes=100, free_bytes=1000) == 7
  assert grid.auto_chunk(16, 100, 1000, reserved_bytes=500) == 2
  assert grid.auto_chunk(16, 100, 10) == 1
  assert grid.auto_chunk(16, 100, None) == 16
  assert grid.auto_chunk(16, 100, 1000, num_devices=2) == 14
  # The estimate: 3 copies of the state (~24k params, 4 copies in Padam's
  # state) plus the compiled step's temporaries.
  model, optimizer, _, _ = grid.build(spec.train_config(sweep_config()), 10,
                                      STEPS_PER_EPOCH, False)
  estimate = grid.estimate_member_bytes(model, optimizer, BATCH)
  assert 3 * 4 * 4 * 20_000 < estimate < 100 * 2**20


def test_summary_marks_diverged_member():
  m = spec.Member(0, 'p0.5-lr10-seed0', dict(p=0.5, learning_rate=10.0,
                                              seed=0))
  rows = [dict(epoch=1, test_error=0.8, train_loss=2.0),
          dict(epoch=2, test_error=0.7, train_loss=1.5),
          dict(epoch=3, test_error=0.9, train_loss=math.nan)]
  s = sweep_summary.summarize_member(m.name, m.values, rows)
  assert (s['best_test_error'], s['best_epoch'], s['final_test_error'],
          s['diverged_epoch'], s['epochs']) == (0.7, 2, 0.9, 3, 3)
  text = sweep_summary.summary_markdown(
      spec.train_config(sweep_config(p=(0.5,), learning_rate=(10.0,))
                        ).to_dict(), ['p', 'learning_rate', 'seed'], [s])
  assert 'diverged at epoch 3' in text and '70.00' in text
