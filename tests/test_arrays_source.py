"""Your own images: data_source='arrays', an .npz file, through train.py and
sweep.py, and the one-line refusal of each malformed file."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import quick
from tests.helpers import snapshot
from training import augment
from training import configuration
from training import input_pipeline as ip

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_TEST, SHAPE, CLASSES = 64, 32, (28, 28, 1), 5


def _arrays(seed=0, **changes):
  rng = np.random.default_rng(seed)
  arrays = {
      'train_images': rng.integers(0, 256, (NUM_TRAIN, *SHAPE), np.uint8),
      # Every class present, the largest (CLASSES - 1) included.
      'train_labels': np.arange(NUM_TRAIN) % CLASSES,
      'test_images': rng.integers(0, 256, (NUM_TEST, *SHAPE), np.uint8),
      'test_labels': rng.integers(0, CLASSES, NUM_TEST),
  }
  arrays.update(changes)
  return {k: v for k, v in arrays.items() if v is not None}


def _write(folder, name='data.npz', **changes):
  path = os.path.join(str(folder), name)
  np.savez(path, **_arrays(**changes))
  return path


def _run(script, config, workdir, data_file, *extra):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, script), f'--config={ROOT}/{config}',
       f'--workdir={workdir}', '--config.data_source=arrays',
       f'--config.data_dir={data_file}',
       '--config.num_epochs=1', '--config.batch_size=16',
       '--config.eval_batch_size=16', '--config.cpu_devices=1',
       '--config.train_examples=0', '--progress=false', *extra],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_train_py_and_sweep_py_train_on_own_images(tmp_path):
  data_file = _write(tmp_path)
  done = _run('train.py', 'configs/quick.py', tmp_path / 'run', data_file,
              '--config.optimizer.lr_milestones=(1,)')
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / 'run' / 'data.json') as f:
    assert json.load(f) | {'fingerprint': None} == {
        'dataset': 'arrays', 'train_examples': NUM_TRAIN,
        'test_examples': NUM_TEST, 'fingerprint': None}
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    [row] = [json.loads(line) for line in f]
  assert row['epoch'] == 1 and row['step'] == NUM_TRAIN // 16
  # 5 classes: every label is among the top 5.
  assert row['test_top5_error'] == 0.0
  assert row['test_error'] * NUM_TEST == round(row['test_error'] * NUM_TEST)

  done = _run('sweep.py', 'sweeps/configs/cpu_subset.py', tmp_path / 'sweep',
              data_file, '--config.sweep.p=(0.125,)',
              '--config.sweep.learning_rate=(0.1,0.01)')
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / 'sweep' / 'summary.json') as f:
    summary = json.load(f)
  assert sorted(m['learning_rate'] for m in summary['members']) == [0.01, 0.1]
  for name in ('p0.125-lr0.1-seed0', 'p0.125-lr0.01-seed0'):
    with open(tmp_path / 'sweep' / 'members' / name / 'metrics.jsonl') as f:
      assert [json.loads(line)['test_top5_error'] for line in f] == [0.0]
  with open(tmp_path / 'sweep' / 'summary.md') as f:
    assert f'on {data_file},' in f.read()


def test_spec_comes_from_the_file(tmp_path):
  images = np.zeros((4, 6, 10, 2), np.uint8)
  images[:2, ..., 0] = 255  # channel 0: half 0, half 1 -> mean 0.5, std 0.5
  images[..., 1] = 51  # channel 1: constant 0.2 -> std 0, divided by 1
  path = os.path.join(str(tmp_path), 'x.npz')
  np.savez(path, train_images=images, train_labels=np.array([0, 6, 2, 6]),
           test_images=images[:3], test_labels=np.array([6, 0, 1], np.uint8))
  data = ip.load_cifar('cifar10', source='arrays', data_dir=path)
  spec = data.spec
  assert (spec.num_classes, data.num_classes) == (7, 7)
  assert spec.image_shape == (6, 10, 2)
  assert (spec.train_examples, spec.test_examples) == (4, 3)
  np.testing.assert_allclose(spec.mean, (0.5, 0.2))
  np.testing.assert_allclose(spec.std, (0.5, 1.0))
  assert spec.crop_padding == 1 and not spec.flip  # round(6 / 8)
  assert data.test.labels.dtype == np.int32
  np.testing.assert_array_equal(data.test.labels, [6, 0, 1])
  # The CIFAR spec keeps the authors' statistics, crop and flip.
  assert ip.SPECS['cifar10'].mean == (0.4914, 0.4822, 0.4465)
  assert ip.SPECS['cifar100'].num_classes == 100


def test_augmentation_follows_the_spec():
  images = np.arange(8 * 5 * 7 * 1, dtype=np.uint8).reshape(8, 5, 7, 1)
  base = ip.DatasetSpec('t', 2, (5, 7, 1), 8, 8, (0.0,), (1.0,),
                        crop_padding=0, flip=False)
  key = jax.random.key(3)
  np.testing.assert_array_equal(augment.augment(key, images, base), images)
  flipped = np.asarray(augment.augment(
      key, images, ip.DatasetSpec(**{**base.__dict__, 'flip': True})))
  kinds = [(f == i).all() or (f == i[:, ::-1]).all()
           for f, i in zip(flipped, images)]
  assert all(kinds)
  assert any((f != i).any() for f, i in zip(flipped, images))
  out = augment.normalize(images, ip.DatasetSpec(
      **{**base.__dict__, 'mean': (0.5,), 'std': (0.25,)}))
  np.testing.assert_allclose(out, (images / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_train_examples_bound_is_the_datasets():
  config = quick.get_config()
  config.train_examples = 60_000
  with pytest.raises(ValueError, match='train_examples=60000'):
    configuration.validate(config)
  config.data_source = 'arrays'
  configuration.validate(config)  # An .npz file may hold more: read first.


# (arrays to change, fragments of the error).
MALFORMED = {
    'missing array': (dict(test_labels=None),
                      ('has no array test_labels', 'train_images')),
    'float images': (dict(train_images=np.zeros((64, *SHAPE), np.float32)),
                     ('train_images is float32', 'uint8 (N, H, W, C)')),
    '3-d images': (dict(train_images=np.zeros((64, 28, 28), np.uint8)),
                   ('train_images is uint8 (64, 28, 28)',
                    'uint8 (N, H, W, C)')),
    'no train images': (dict(train_images=np.zeros((0, *SHAPE), np.uint8),
                             train_labels=np.zeros(0, int)),
                        ('train_images is uint8 (0, 28, 28, 1)',
                         'N, H, W, C >= 1')),
    'other test shape': (dict(test_images=np.zeros((32, 28, 28, 3), np.uint8)),
                         ('test_images is uint8 (32, 28, 28, 3)',
                          '(H, W, C) = (28, 28, 1) as train_images')),
    'float labels': (dict(train_labels=np.zeros(64, np.float32)),
                     ('train_labels is float32', '64 integers')),
    'bool labels': (dict(test_labels=np.zeros(32, bool)),
                    ('test_labels is bool', '32 integers')),
    'labels per image': (dict(test_labels=np.zeros(31, int)),
                         ('test_labels is int64 (31,)', 'shape (32,)')),
    'negative label': (dict(train_labels=np.arange(64) % 5 - 1),
                       ('train_labels', 'labels in [0, 3]', 'e.g. -1')),
    'test label beyond train classes': (
        dict(test_labels=np.full(32, 5)),
        ('test_labels', 'labels in [0, 4]', 'largest train label + 1',
         'found 32 outside, e.g. 5')),
    'object array': (dict(train_labels=np.array([[1], [2, 3]], object)),
                     ('cannot be read', 'allow_pickle')),
}


@pytest.mark.parametrize('case', MALFORMED)
def test_malformed_file_is_refused(tmp_path, case):
  changes, fragments = MALFORMED[case]
  path = _write(tmp_path, **changes)
  with pytest.raises(ValueError) as info:
    ip.load_arrays(path)
  message = str(info.value)
  assert '\n' not in message
  for fragment in (f'data_dir {path}', 'allowed: ') + fragments:
    assert fragment in message, (fragment, message)


@pytest.mark.parametrize('content, fragment', [
    (b'not a zip', 'cannot be read'), (None, 'No such file'),
    (b'npy', 'a single .npy array')])
def test_unreadable_file_is_refused(tmp_path, content, fragment):
  path = str(tmp_path / 'data.npz')
  if content == b'npy':
    with open(path, 'wb') as f:
      np.save(f, np.zeros(3, np.uint8))
  elif content is not None:
    with open(path, 'wb') as f:
      f.write(content)
  with pytest.raises(ip.DataNotFoundError) as info:
    ip.load_arrays(path)
  assert f'data_dir {path} cannot be read' in str(info.value)
  assert fragment in str(info.value) and 'allowed: an .npz file' in str(
      info.value)


def test_no_file_named_is_refused():
  with pytest.raises(ValueError, match='needs data_dir'):
    ip.load_arrays('')


@pytest.mark.parametrize('script, config', [
    ('train.py', 'configs/quick.py'),
    ('sweep.py', 'sweeps/configs/cpu_subset.py')])
def test_scripts_refuse_a_malformed_file_in_one_line(tmp_path, script, config):
  path = _write(tmp_path, test_labels=np.full(32, 7))
  before = snapshot(str(tmp_path))
  done = _run(script, config, tmp_path / 'W', path)
  errors = [l for l in done.stderr.splitlines() if l.startswith('error:')]
  assert done.returncode == 2, done.stderr[-3000:]
  assert errors == [
      f'error: data_dir {path}: test_labels is int64 (32,); allowed: labels '
      'in [0, 4] (the classes are the largest train label + 1); found 32 '
      'outside, e.g. 7.'], done.stderr[-3000:]
  assert 'Traceback' not in done.stderr
  assert snapshot(str(tmp_path)) == before


def test_train_py_refuses_a_validation_split_of_every_image(tmp_path):
  path = _write(tmp_path)
  before = snapshot(str(tmp_path))
  done = _run('train.py', 'configs/quick.py', tmp_path / 'W', path,
              f'--config.validation_examples={NUM_TRAIN}')
  assert done.returncode == 2, done.stderr[-3000:]
  errors = [l for l in done.stderr.splitlines() if l.startswith('error:')]
  assert errors == [
      f'error: validation_examples={NUM_TRAIN} is not allowed: arrays {path} '
      f'has {NUM_TRAIN} training images; allowed: 0 (none) to '
      f'{NUM_TRAIN - 1}.'], done.stderr[-3000:]
  assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize('model', ['vgg16', 'wrn16_4'])
def test_models_built_for_32_pixels_refuse_smaller_images(tmp_path, model):
  data = ip.load_arrays(_write(tmp_path))
  config = quick.get_config()
  config.model, config.batch_size, config.eval_batch_size = model, 16, 16
  with pytest.raises(ValueError, match=(
      rf"model='{model}' is not allowed for the \(28, 28, 1\) images of "
      r'arrays .*; allowed: images of at least 32x32')):
    configuration.check_against_data(config, data)
  config.model = 'resnet18'
  configuration.check_against_data(config, data)
