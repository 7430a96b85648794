"""Non-finite losses and gradients: the 'stop' and 'skip' policies.

Single runs (train_and_evaluate, train.py) and sweeps with one diverging
member. A non-finite step is made two ways: a training example whose label
is out of range (its cross-entropy is NaN) placed so that it falls in known
batches, or a learning rate so large that the parameters overflow.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import models
from configs import quick
from sweeps import run as sweep_run
from tests import fault_harness as harness
from tests.conftest import ROOT
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import
from training import faults
from training import input_pipeline
from training import optimizers
from training import train_lib
from training import trainer

NUM_TRAIN, NUM_TEST, BATCH = 130, 64, 32
STEPS = NUM_TRAIN // BATCH  # 4: two examples are left out of each epoch.
POISON = 10  # An out-of-range label: its cross-entropy is NaN.

pytestmark = [pytest.mark.usefixtures('compilation_cache_dir'),
              pytest.mark.slow]


def make_config(**overrides):
  config = quick.get_config()
  config.model = 'tiny_cnn'
  config.batch_size = BATCH
  config.eval_batch_size = NUM_TEST
  config.num_epochs = 3
  config.checkpoint_every_epochs = 1
  config.keep_checkpoints = 3
  config.optimizer.lr_milestones = (1,)
  # tests/test_train_e2e.py's schedules (SMALL): the same compiled programs.
  config.optimizer.p_decay_every_epochs = 1
  config.optimizer.p_decay_factor = 0.5
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def random_data(seed=0):
  rng = np.random.default_rng(seed)
  split = lambda n: input_pipeline.Split(
      rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      rng.integers(0, 10, (n,)).astype(np.int32))
  return input_pipeline.CifarData(split(NUM_TRAIN), split(NUM_TEST), 10,
                                  'cifar10', 'random test data')


def poisoned_batches(seed):
  """(example, {epoch: 1-based step in the epoch or None}) for an example
  that epoch 1 leaves out and epoch 2 uses: its batches, by the same
  permutations the trainer draws."""
  for example in input_pipeline.epoch_permutation(seed, 1, NUM_TRAIN)[
      STEPS * BATCH:]:
    where = {}
    for epoch in (1, 2, 3):
      position = list(input_pipeline.epoch_permutation(
          seed, epoch, NUM_TRAIN)).index(example)
      where[epoch] = (position // BATCH + 1 if position < STEPS * BATCH
                      else None)
    if where[2] is not None:
      return int(example), where
  raise AssertionError(f'seed {seed}: no left-out example is used later')


@pytest.fixture(scope='module')
def poisoned():
  """(config seed, data with one poisoned label, where it is trained)."""
  seed = 0
  example, where = poisoned_batches(seed)
  data = random_data()
  data.train.labels[example] = POISON
  return seed, data, where


def read_rows(workdir):
  return harness.metrics_files(workdir)['.']


def steps_in(workdir):
  return harness.checkpoint_dirs(workdir)['']


def all_finite(tree):
  leaves = [harness.host_array(x) for x in jax.tree.leaves(tree)]
  return all(np.all(np.isfinite(x)) for x in leaves
             if np.issubdtype(x.dtype, np.floating))


# ---------------------------------------------------------------------------
# The step function.


def test_skip_drops_exactly_the_non_finite_update():
  config = make_config()
  optimizer = optimizers.create_optimizer(config, STEPS)
  model = models.create_model('tiny_cnn', 10)
  # train.py's own jitted steps (the programs the runs below compile too).
  skip = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer,
                             nonfinite='skip')
  stop = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer)
  state = jax.jit(
      lambda rng: train_lib.create_train_state(rng, model, optimizer),
      out_shardings=skip.replicated)(jax.random.key(0))
  copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # Donated.
  data = random_data()
  images, labels = data.train.images[:BATCH], data.train.labels[:BATCH]
  moved, metrics = skip.train_step(
      copy(state), skip.shard({'images': images, 'labels': labels}))
  assert float(metrics['finite']) == 1.0 and float(metrics['skipped']) == 0
  assert float(metrics['count']) == BATCH
  poisoned = skip.shard({'images': images,
                         'labels': np.where(np.arange(BATCH) == 3, POISON,
                                            labels).astype(np.int32)})
  kept, metrics = skip.train_step(copy(moved), poisoned)
  assert (float(metrics['finite']), float(metrics['skipped'])) == (0.0, 1.0)
  assert (float(metrics['loss_sum']), float(metrics['correct']),
          float(metrics['count'])) == (0.0, 0.0, 0.0)
  assert int(kept.step) == int(moved.step) + 1
  for name in ('params', 'batch_stats', 'opt_state'):
    for a, b in zip(jax.tree.leaves(getattr(kept, name)),
                    jax.tree.leaves(getattr(moved, name))):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), name
  # 'stop' applies it (the host stops the run) and says it was not finite.
  _, metrics = stop.train_step(copy(moved), poisoned)
  assert (float(metrics['finite']), float(metrics['skipped'])) == (0.0, 0.0)
  assert np.isnan(float(metrics['loss_sum']))


# ---------------------------------------------------------------------------
# Single runs.


def test_stop_policy_stops_at_the_step_and_keeps_the_last_checkpoint(
    tmp_path, poisoned):
  seed, data, where = poisoned
  bad_step = STEPS + where[2]
  workdir, reference = str(tmp_path / 'run'), str(tmp_path / 'reference')
  with pytest.raises(faults.Diverged) as info:
    trainer.train_and_evaluate(make_config(seed=seed), workdir, data=data,
                               progress=False)
  assert str(info.value) == (
      f'training stopped: non-finite loss or gradient at step {bad_step} '
      f'(epoch 2, step {where[2]} of {STEPS}) with nonfinite_policy=\'stop\'; '
      f'the last good checkpoint, step {STEPS} (epoch 1), is intact in '
      f'{workdir}/checkpoints and nothing was saved after it. Use a new '
      'workdir with a smaller optimizer.learning_rate, or '
      "nonfinite_policy='skip'.")
  assert steps_in(workdir) == [STEPS]
  assert [r['epoch'] for r in read_rows(workdir)] == [1]
  # Intact: the checkpoint of a run that ended after epoch 1.
  trainer.train_and_evaluate(make_config(seed=seed, num_epochs=1), reference,
                             data=data, progress=False)
  harness.assert_same_results(workdir, reference)


def test_skip_policy_counts_skipped_steps_and_goes_on(tmp_path, poisoned):
  seed, data, where = poisoned
  workdir = str(tmp_path / 'run')
  last = trainer.train_and_evaluate(
      make_config(seed=seed, nonfinite_policy='skip'), workdir, data=data,
      progress=False)
  rows = read_rows(workdir)
  assert [r['skipped_steps'] for r in rows] == [
      int(where[e] is not None) for e in (1, 2, 3)] == [0, 1, int(
          where[3] is not None)]
  assert [r['step'] for r in rows] == [STEPS, 2 * STEPS, 3 * STEPS]
  assert last == rows[-1] and steps_in(workdir) == [4, 8, 12]
  for r in rows:
    assert np.isfinite(r['train_loss']) and 0 <= r['train_error'] <= 1
  state = harness.restore_raw(os.path.join(workdir, 'checkpoints'), 12)
  assert all_finite(state)


def test_skip_policy_stops_after_too_many_skips_in_a_row(tmp_path):
  # lr 1e30: step 1 is finite, then the parameters overflow: every step
  # after it is non-finite (measured: tiny_cnn, Padam, these random images).
  workdir = str(tmp_path / 'run')
  config = make_config(nonfinite_policy='skip', max_consecutive_skips=3,
                       **{'optimizer.learning_rate': 1e30})
  with pytest.raises(faults.Diverged) as info:
    trainer.train_and_evaluate(config, workdir, data=random_data(),
                               progress=False)
  assert str(info.value) == (
      'training stopped: 3 steps in a row skipped for a non-finite loss or '
      'gradient at step 4 (epoch 1, step 4 of 4) with '
      "nonfinite_policy='skip' and max_consecutive_skips=3; there is no "
      'checkpoint yet and nothing was saved after it. Use a new workdir with '
      'a smaller optimizer.learning_rate, or a larger max_consecutive_skips.')
  assert steps_in(workdir) == [] and not os.path.exists(
      os.path.join(workdir, 'metrics.jsonl'))


def test_train_py_diverging_exits_3_with_one_message(tmp_path,
                                                     compilation_cache_dir):
  workdir = str(tmp_path / 'run')
  env = harness.env_with_cache(compilation_cache_dir)
  result = subprocess.run(
      [sys.executable, harness.FAULT_RUN, f'--workdir={workdir}',
       *harness.train_flags(extra=['--config.optimizer.learning_rate=1e30'])],
      cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=harness.TIMEOUT_S, check=False)
  assert result.returncode == faults.EXIT_DIVERGED, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and re.fullmatch(
      r"error: training stopped: non-finite loss or gradient at step (\d) "
      r"\(epoch 1, step \1 of 4\) with nonfinite_policy='stop'; there is no "
      r'checkpoint yet and nothing was saved after it\. .*', errors[0]), (
          errors)
  assert 'Traceback' not in result.stderr
  assert harness.checkpoint_dirs(workdir) == {'': []}


# ---------------------------------------------------------------------------
# Sweeps: one member diverges, the other goes on undisturbed.


def sweep_config(learning_rates, **overrides):
  config = make_config(num_epochs=2, **overrides)
  config.sweep = ml_collections.ConfigDict(dict(
      p=(0.25,), learning_rate=learning_rates, seed=(0,), own_batches=False,
      chunk=0))
  return config


def undisturbed(tmp_path_factory, policy):
  """The workdir of a sweep where neither member diverges (once a session)."""
  def build(path):
    sweep_run.run_sweep(sweep_config((0.05, 0.01), nonfinite_policy=policy),
                   os.path.join(path, 'sweep'), data=random_data(),
                   progress=False)
  return os.path.join(harness.once(tmp_path_factory,
                                   f'padax_calm_sweep_{policy}', build),
                      'sweep')


@pytest.mark.parametrize('policy', ['stop', 'skip'])
def test_sweep_member_diverges_alone(tmp_path, tmp_path_factory, policy):
  workdir = str(tmp_path / 'sweep')
  summary = sweep_run.run_sweep(
      sweep_config((0.05, 1e30), nonfinite_policy=policy,
                   max_consecutive_skips=2),
      workdir, data=random_data(), progress=False)
  good, bad = summary
  assert good['name'] == 'p0.25-lr0.05-seed0' and good['epochs'] == 2
  assert (good['diverged_epoch'], good['diverged_step'],
          good['skipped_steps']) == (None, None, 0)
  # lr 1e30: step 1 is finite, step 2 is not (see the single-run test).
  reason = ('non-finite loss or gradient' if policy == 'stop' else
            '2 steps in a row skipped for a non-finite loss or gradient')
  assert (bad['name'], bad['epochs'], bad['diverged_epoch'],
          bad['diverged_step'], bad['diverged_reason']) == (
              'p0.25-lr1e+30-seed0', 2, 1, 2 if policy == 'stop' else 3,
              reason)
  with open(os.path.join(workdir, 'summary.md')) as f:
    text = f.read()
  assert (f'(diverged at epoch 1, step {bad["diverged_step"]}: {reason})'
          in text)
  bad_rows = harness.metrics_files(workdir)[f'members/{bad["name"]}']
  # 'stop': it went on, its parameters overflowed (its loss may stay finite,
  # ~1e28: the gradients gave it away). 'skip': every step after the first
  # was skipped and its state stayed finite.
  assert [r['skipped_steps'] for r in bad_rows] == (
      [0, 0] if policy == 'stop' else [STEPS - 1, STEPS])
  # The good member: bit for bit as in a sweep without the diverging one
  # (the same program: members of a vmap do not interact).
  calm = undisturbed(tmp_path_factory, policy)
  rows = harness.metrics_files(workdir)[f'members/{good["name"]}']
  calm_rows = harness.metrics_files(calm)[f'members/{good["name"]}']
  assert harness.without_timing(rows) == harness.without_timing(calm_rows)
  state = harness.restore_raw(os.path.join(workdir, 'checkpoints',
                                           'chunk-000'), 2 * STEPS)
  calm_state = harness.restore_raw(os.path.join(calm, 'checkpoints',
                                                'chunk-000'), 2 * STEPS)
  leaves = jax.tree.leaves(state)
  assert len(leaves) > 40
  for a, b in zip(leaves, jax.tree.leaves(calm_state)):
    a, b = harness.host_array(a)[0], harness.host_array(b)[0]
    assert a.tobytes() == b.tobytes()
  assert all_finite(jax.tree.map(lambda x: harness.host_array(x)[1],
                                 state)) == (policy == 'skip')
