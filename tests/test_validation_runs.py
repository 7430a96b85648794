"""Runs with a validation split (config.validation_examples): the rows, the
files and the reports that gain val_loss, val_error and val_top5_error, and
the refusal to resume a workdir with another split.

The split itself (which images, refusals of bad counts) is pinned in
tests/test_input_pipeline.py. Runs here are tiny_cnn on a small CIFAR-10
written to a temporary folder, one or two epochs.
"""

import csv
import json
import logging
import math
import os
import time

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quick
import models
from reporting import runs as runs_lib
from reporting import sweep_summary
from reporting import tables
from sweeps import run as sweep_run
from sweeps import spec
from sweeps.configs import cpu_subset
from sweeps.configs import cpu_subset_tuning
from tests.fault_harness import compilation_cache_dir  # pylint: disable=unused-import
from tests.fault_harness import restore_raw
from tests.helpers import snapshot
from tests.helpers import write_cifar10
from tests.sweep_helpers import small_data
from tests.sweep_helpers import sweep_config
from training import configuration
from training import input_pipeline
from training import loop
from training import records
from training import rundir
from training import trainer

pytestmark = pytest.mark.usefixtures('compilation_cache_dir')

NUM_TRAIN, NUM_TEST, BATCH = 165, 64, 32
# Not a multiple of the eval batch: the last validation batch is padded.
VALIDATION = 37
STEPS_PER_EPOCH = (NUM_TRAIN - VALIDATION) // BATCH
BASE_COLUMNS = ('epoch', 'step', 'lr', 'p', 'train_loss', 'train_error',
                'test_loss', 'test_error', 'test_top5_error', 'epoch_seconds',
                'images_per_second', 'skipped_steps')
VAL_COLUMNS = ('val_loss', 'val_error', 'val_top5_error')


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
  return write_cifar10(str(tmp_path_factory.mktemp('cifar')), NUM_TRAIN,
                       NUM_TEST)


def train_config(cifar_dir, **overrides):
  config = quick.get_config()
  values = dict(model='tiny_cnn', data_source='local', data_dir=cifar_dir,
                batch_size=BATCH, eval_batch_size=NUM_TEST, num_epochs=2,
                checkpoint_every_epochs=1, keep_checkpoints=5)
  for key, value in {**values, **overrides}.items():
    config[key] = value
  config.optimizer.lr_milestones = ()
  return config


def read_csv(workdir):
  """(rows as dicts, the header) of metrics.csv."""
  with open(os.path.join(workdir, 'metrics.csv'), newline='') as f:
    reader = csv.DictReader(f)
    return list(reader), reader.fieldnames


def held_out(cifar_dir, count):
  """The validation images and labels as hold_out_validation documents
  them: the training images at the first `count` indices of
  default_rng(0).permutation(N), in index order."""
  full = input_pipeline.load_cifar('cifar10', source='local',
                                   data_dir=cifar_dir)
  rows = np.sort(np.random.default_rng(0).permutation(NUM_TRAIN)[:count])
  return full.train.images[rows], full.train.labels[rows]


def reference_metrics(state, images, labels):
  """val_loss, val_error, val_top5_error of a checkpointed tiny_cnn state,
  computed here with the model's apply and numpy: the mean cross entropy,
  and the fraction of images whose label is not the arg max (not among the
  5 largest logits)."""
  model = models.create_model('tiny_cnn', 10)
  spec = input_pipeline.CIFAR10
  x = (images.astype(np.float32) / 255.0 - np.float32(spec.mean)) / np.float32(
      spec.std)
  logits = np.asarray(model.apply(
      {'params': state['params'], 'batch_stats': state['batch_stats']},
      jnp.asarray(x), train=False), np.float64)
  log_probs = np.asarray(nn.log_softmax(logits))
  loss = -log_probs[np.arange(len(labels)), labels].mean()
  rank = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(1)
  return loss, float(np.mean(rank > 0)), float(np.mean(rank > 4))


@pytest.mark.slow
def test_train_run_rows_gain_validation_columns(tmp_path, cifar_dir,
                                                 caplog, monkeypatch):
  workdir = str(tmp_path / 'run')
  config = train_config(cifar_dir, validation_examples=VALIDATION)
  trained = []  # The images of every training batch.
  batches = loop.epoch_batches

  def record_batches(*args, **kwargs):
    for batch in batches(*args, **kwargs):
      trained.extend(image.tobytes() for image in np.asarray(batch['images']))
      yield batch

  monkeypatch.setattr(loop, 'epoch_batches', record_batches)
  with caplog.at_level(logging.INFO):
    last = trainer.train_and_evaluate(config, workdir, progress=False)
  rows = rundir.read_rows(os.path.join(workdir, rundir.METRICS_JSONL))
  # Each epoch trains on every image but the held-out ones, once (N - V is
  # a multiple of the batch size; the random images are all distinct).
  images, _ = held_out(cifar_dir, VALIDATION)
  everything = input_pipeline.load_cifar('cifar10', source='local',
                                         data_dir=cifar_dir).train.images
  assert len({image.tobytes() for image in everything}) == NUM_TRAIN
  kept = {image.tobytes() for image in everything} - {
      image.tobytes() for image in images}
  assert len(kept) == NUM_TRAIN - VALIDATION
  assert sorted(trained) == sorted(2 * list(kept))
  assert f'| val err {rows[-1]["val_error"]:.4f}' in caplog.text
  assert [r['epoch'] for r in rows] == [1, 2]
  assert rows[-1] == last
  assert rows[-1]['step'] == 2 * STEPS_PER_EPOCH  # Trained on N - V images.
  for r in rows:
    assert set(r) == set(BASE_COLUMNS + VAL_COLUMNS), r
    for key in VAL_COLUMNS:
      assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
    assert 0.0 <= r['val_top5_error'] <= r['val_error'] <= 1.0, r
    assert r['val_loss'] > 0
    # A count of the held-out images over their number.
    assert r['val_error'] * VALIDATION == pytest.approx(
        round(r['val_error'] * VALIDATION), abs=1e-9)

  csv_rows, header = read_csv(workdir)
  assert header == list(BASE_COLUMNS[:9] + VAL_COLUMNS + BASE_COLUMNS[9:])
  assert [float(c['val_error']) for c in csv_rows] == [
      r['val_error'] for r in rows]

  # Epoch 2's row against the checkpoint of epoch 2, evaluated here.
  state = restore_raw(os.path.join(workdir, 'checkpoints'),
                      2 * STEPS_PER_EPOCH)
  loss, error, top5_error = reference_metrics(
      state, *held_out(cifar_dir, VALIDATION))
  assert rows[-1]['val_error'] == pytest.approx(error, abs=1e-12)
  assert rows[-1]['val_top5_error'] == pytest.approx(top5_error, abs=1e-12)
  assert rows[-1]['val_loss'] == pytest.approx(loss, rel=1e-4)

  # report.py's table shows the validation error.
  [run] = runs_lib.load_runs([workdir])
  table = tables.table_markdown([run], [1, 2])
  assert 'Validation top-1 error (%)' in table
  assert f'{100 * rows[-1]["val_error"]:.2f}' in table.split(
      'Validation top-1')[1]


@pytest.mark.slow
@pytest.mark.parametrize('first, second', [(VALIDATION, 0), (0, VALIDATION),
                                           (VALIDATION, VALIDATION + 1)])
def test_resume_with_another_validation_split_is_refused(tmp_path, cifar_dir,
                                                         first, second):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(
      train_config(cifar_dir, num_epochs=1, validation_examples=first),
      workdir, progress=False)
  _, header = read_csv(workdir)
  assert header == list(BASE_COLUMNS if first == 0 else
                        BASE_COLUMNS[:9] + VAL_COLUMNS + BASE_COLUMNS[9:])
  before = snapshot(workdir)
  time.sleep(0.01)  # A rewrite would show in the mtimes.
  with pytest.raises(ValueError) as info:
    trainer.train_and_evaluate(
        train_config(cifar_dir, num_epochs=2, validation_examples=second),
        workdir, progress=False)
  assert 'validation_examples' in str(info.value)
  assert str(second) in str(info.value), str(info.value)
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_sweep_rows_and_summary_gain_validation_columns(tmp_path, caplog):
  count = 16
  data = input_pipeline.hold_out_validation(small_data(), count)
  config = sweep_config(learning_rate=(0.05, 0.01))
  config.validation_examples = count
  config.num_epochs = 1
  workdir = str(tmp_path / 'sweep')
  with caplog.at_level(logging.INFO):
    sweep_run.run_sweep(config, workdir, data=data, progress=False)
  with open(os.path.join(workdir, 'summary.json')) as f:
    members = json.load(f)['members']
  assert len(members) == 2
  best = min(members, key=lambda m: m['final_val_error'])
  assert (f'| val error min {best["final_val_error"]:.4f} ({best["name"]})'
          in caplog.text)
  for member in members:
    member_dir = os.path.join(workdir, 'members', member['name'])
    [row] = rundir.read_rows(os.path.join(member_dir, rundir.METRICS_JSONL))
    assert set(VAL_COLUMNS) <= set(row), row
    assert 0.0 <= row['val_top5_error'] <= row['val_error'] <= 1.0
    _, header = read_csv(member_dir)
    assert header[9:12] == list(VAL_COLUMNS)
    assert member['final_val_error'] == row['val_error']
    assert member['best_val_error'] == row['val_error']
    assert member['best_val_epoch'] == 1
  with open(os.path.join(workdir, 'summary.md')) as f:
    markdown = f.read()
  assert '| final val error | best val error | best val epoch |' in markdown


def test_summary_and_table_without_validation_are_as_before():
  rows = [dict(epoch=e, step=e, test_error=0.5 / e, test_top5_error=0.1,
               train_loss=1.0, skipped_steps=0) for e in (1, 2)]
  member = sweep_summary.summarize_member('m', {'p': 0.25}, rows)
  assert not any('val' in key for key in member)
  with_val = sweep_summary.summarize_member(
      'm', {'p': 0.25},
      [dict(r, val_error=v) for r, v in zip(rows, (0.25, 0.5))])
  assert (with_val['final_val_error'], with_val['best_val_error'],
          with_val['best_val_epoch']) == (0.5, 0.25, 1)
  run = runs_lib.Run('r', 'r', {}, rows)
  assert 'Validation' not in tables.table_markdown([run], [1, 2])
  assert records.columns(rows) == BASE_COLUMNS


def test_tuning_preset_is_the_cpu_preset_with_a_validation_split():
  tuning, base = cpu_subset_tuning.get_config(), cpu_subset.get_config()
  assert tuning.validation_examples > 0 and base.validation_examples == 0
  assert len(spec.grid_members(tuning)) == 9
  configuration.validate(spec.train_config(tuning),
                         num_devices=tuning.cpu_devices)
  # Data of the preset's size (the first train_examples images of CIFAR-10,
  # all 10,000 test images), split as its config asks: nothing refused.
  blank = lambda n: input_pipeline.Split(np.zeros((n, 32, 32, 3), np.uint8),
                                         np.zeros(n, np.int32))
  data = input_pipeline.hold_out_validation(
      input_pipeline.CifarData(blank(tuning.train_examples), blank(10000), 10,
                               'cifar10', 'blank'),
      tuning.validation_examples)
  configuration.check_against_data(tuning, data,
                                   num_devices=tuning.cpu_devices)
  assert data.validation.num_examples == tuning.validation_examples
  tuning.validation_examples = 0
  assert tuning.to_dict() == base.to_dict()
