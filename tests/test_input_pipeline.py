"""Tests of training/input_pipeline.py."""

import functools
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap

import jax
import numpy as np
import pytest

import ml_collections

from configs import default as default_config
from tests.data_fixtures import CIFAR10_FILES
from tests.data_fixtures import mock_cifar
from tests.data_fixtures import write_python_archive
from tests.data_fixtures import write_python_layout as write_cifar10_layout
from training import augment
from training import configuration
from training import input_pipeline as ip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The device-side functions as the train step calls them for CIFAR-10.
cifar_augment = functools.partial(augment.augment, dataset=ip.CIFAR10)
cifar_normalize = functools.partial(augment.normalize, dataset=ip.CIFAR10)
# Images per file of the genuine subset ($PADAX_TEST_CIFAR10_SUBSET).
SUBSET_PER_FILE = 1017


# ---------------------------------------------------------------------------
# Helpers.


def read_bin_layout(folder, name):
  """Independent reader of the official binary layout (label byte + 3072)."""
  raw = np.fromfile(os.path.join(folder, name), dtype=np.uint8)
  records = raw.reshape(-1, 1 + 3072)
  labels = records[:, 0].astype(np.int64)
  # Channel planes (R, G, B) of 32x32 row-major pixels -> NHWC.
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels


def write_batch(path, data, labels, label_key=b'labels'):
  with open(path, 'wb') as f:
    pickle.dump({b'batch_label': b'synthetic', label_key: list(labels),
                 b'data': data}, f)


def expect_error(exc_type, fn, *fragments):
  with pytest.raises(exc_type) as info:
    fn()
  message = str(info.value)
  for fragment in fragments:
    assert str(fragment) in message, (fragment, message)
  return info.value


# ---------------------------------------------------------------------------
# Local loading.


def test_load_shared_subset_python_layout(cifar10_subset):
  data = ip.load_cifar('cifar10', source='local', data_dir=cifar10_subset)
  assert data.name == 'cifar10' and data.num_classes == 10
  assert 'cifar-10-batches-py' in data.source
  for split, n in ((data.train, 5 * SUBSET_PER_FILE), (data.test, SUBSET_PER_FILE)):
    assert split.images.shape == (n, 32, 32, 3)
    assert split.images.dtype == np.uint8
    assert split.images.flags.c_contiguous
    assert split.labels.shape == (n,) and split.labels.dtype == np.int32
    assert split.labels.min() == 0 and split.labels.max() == 9
    assert len(split) == n

  # Cross-check against the binary layout of the same images.
  subset_bin = os.path.join(cifar10_subset, 'cifar-10-batches-bin')
  bin_train = [read_bin_layout(subset_bin, f'data_batch_{i}.bin')
               for i in range(1, 6)]
  bin_images = np.concatenate([b[0] for b in bin_train])
  bin_labels = np.concatenate([b[1] for b in bin_train])
  np.testing.assert_array_equal(data.train.images, bin_images)
  np.testing.assert_array_equal(data.train.labels, bin_labels)
  test_images, test_labels = read_bin_layout(subset_bin, 'test_batch.bin')
  np.testing.assert_array_equal(data.test.images, test_images)
  np.testing.assert_array_equal(data.test.labels, test_labels)
  # A few spot checks by hand: image 1017 is the first of data_batch_2.
  np.testing.assert_array_equal(data.train.images[SUBSET_PER_FILE],
                                bin_train[1][0][0])
  assert data.train.labels[SUBSET_PER_FILE] == bin_train[1][1][0]
  # Images are not constant / not all equal (sanity of the transposition).
  assert data.train.images[0].std() > 10
  assert not np.array_equal(data.train.images[0], data.train.images[1])


def test_load_subset_folder_itself_and_official_archive(tmp_path,
                                                       cifar10_subset):
  subset_py = os.path.join(cifar10_subset, 'cifar-10-batches-py')
  reference = ip.load_cifar('cifar10', source='local', data_dir=subset_py)
  archive = tmp_path / 'cifar-10-python.tar.gz'
  write_python_archive(subset_py, archive)
  for data_dir in (tmp_path, archive):
    data = ip.load_cifar('cifar10', source='local', data_dir=str(data_dir))
    assert 'archive' in data.source and str(archive) in data.source
    for a, b in ((data.train, reference.train), (data.test, reference.test)):
      np.testing.assert_array_equal(a.images, b.images)
      np.testing.assert_array_equal(a.labels, b.labels)


def test_load_cifar100_python_layout(tmp_path):
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir()
  rng = np.random.default_rng(1)
  data_by_split = {}
  for name, n in (('train', 7), ('test', 5)):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    fine = rng.integers(0, 100, n)
    fine[0] = 99
    with open(folder / name, 'wb') as f:
      pickle.dump({b'data': data, b'fine_labels': fine.tolist(),
                   b'coarse_labels': (fine // 5).tolist()}, f)
    data_by_split[name] = (data, fine)
  loaded = ip.load_cifar('cifar100', source='local', data_dir=str(tmp_path))
  assert loaded.num_classes == 100 and loaded.name == 'cifar100'
  for split, name in ((loaded.train, 'train'), (loaded.test, 'test')):
    data, fine = data_by_split[name]
    np.testing.assert_array_equal(split.labels, fine)
    # image[i, y, x, c] == data[i, c * 1024 + y * 32 + x]
    for i, y, x, c in ((0, 0, 0, 0), (1, 5, 31, 2), (2, 31, 7, 1)):
      assert split.images[i, y, x, c] == data[i, c * 1024 + y * 32 + x]


# ---------------------------------------------------------------------------
# TFDS (mocked: no TensorFlow, no network).


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100'])
def test_load_tfds_mocked(dataset, tmp_path):
  with mock_cifar(num_train=37, num_test=11, dataset=dataset) as expected:
    data = ip.load_cifar(dataset, source='tfds', data_dir=str(tmp_path))
  assert data.name == dataset and data.num_classes == ip.SPECS[dataset].num_classes
  assert 'tfds' in data.source
  assert data.train.images.shape == (37, 32, 32, 3)
  assert data.test.images.shape == (11, 32, 32, 3)
  assert data.train.labels.dtype == np.int32
  np.testing.assert_array_equal(data.train.images, expected.train_images)
  np.testing.assert_array_equal(data.train.labels, expected.train_labels)
  np.testing.assert_array_equal(data.test.images, expected.test_images)
  np.testing.assert_array_equal(data.test.labels, expected.test_labels)


def test_load_tfds_mocked_reads_in_chunks(monkeypatch):
  monkeypatch.setattr(ip, '_TFDS_READ_CHUNK', 8)
  with mock_cifar(num_train=20, num_test=3) as expected:
    data = ip.load_cifar('cifar10', source='tfds')
  np.testing.assert_array_equal(data.train.images, expected.train_images)


def test_load_tfds_validates_content():
  with mock_cifar(4, 2, image_shape=(28, 28, 1)):
    expect_error(ValueError, lambda: ip.load_cifar('cifar10', source='tfds'),
                 'tfds cifar10', 'train', '(28, 28, 1)', '(32, 32, 3)')
  with mock_cifar(4, 2, label_offset=10):
    expect_error(ValueError, lambda: ip.load_cifar('cifar10', source='tfds'),
                 'tfds cifar10', '[0, 9]')


def _common_message_parts(dataset, data_dir):
  return (dataset, repr(str(data_dir)), '--config.data_source=download',
          '--config.data_source=local --config.data_dir=DATA_DIR',
          'cifar-10-python.tar.gz', 'cifar-10-batches-py',
          'pip install -r requirements/tfds.txt', 'manual_dir',
          'cifar-10-binary.tar.gz', 'DATA_DIR/downloads/manual')


def test_tfds_not_prepared_without_tensorflow(tmp_path, monkeypatch):
  monkeypatch.setattr(ip, '_tensorflow_available', lambda: False)
  data_dir = tmp_path / 'tfds'
  err = expect_error(
      ip.DataNotFoundError,
      lambda: ip.load_cifar('cifar10', source='tfds', data_dir=str(data_dir)),
      *_common_message_parts('cifar10', data_dir),
      'not prepared', 'TensorFlow', 'is not installed',
      str(data_dir / 'cifar10'))
  assert isinstance(err, ValueError)
  # One clear error: no chained TFDS traceback is printed.
  assert err.__cause__ is None and err.__suppress_context__
  assert not data_dir.exists()


def test_tfds_prepare_failure_is_wrapped(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  calls = []

  def fake_download_and_prepare(self, **kwargs):
    calls.append(kwargs)
    raise ConnectionError('Failed to resolve www.cs.toronto.edu')

  monkeypatch.setattr(ip, '_tensorflow_available', lambda: True)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      fake_download_and_prepare)
  data_dir = tmp_path / 'tfds'
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  # manual_dir without the archive: refused before trying to prepare.
  expect_error(ip.DataNotFoundError,
               lambda: ip.load_cifar('cifar10', source='tfds',
                                     data_dir=str(data_dir),
                                     manual_dir=str(manual_dir)),
               str(manual_dir), 'does not contain cifar-10-binary.tar.gz')
  assert not calls
  (manual_dir / 'cifar-10-binary.tar.gz').write_bytes(b'placeholder')
  err = expect_error(
      ip.DataNotFoundError,
      lambda: ip.load_cifar('cifar10', source='tfds', data_dir=str(data_dir),
                            manual_dir=str(manual_dir)),
      *_common_message_parts('cifar10', data_dir),
      'preparing it failed', 'ConnectionError', 'www.cs.toronto.edu')
  assert err.__cause__ is None and isinstance(err.cause, ConnectionError)
  (kwargs,) = calls
  assert kwargs['file_format'] == 'array_record'
  assert os.fspath(kwargs['download_config'].manual_dir) == str(manual_dir)


def test_tfds_missing_package(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  expect_error(ImportError, lambda: ip.load_cifar('cifar10', source='tfds'),
               'tensorflow_datasets', 'requirements/tfds.txt',
               '--config.data_source=local --config.data_dir=DATA_DIR')


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize('kwargs, message', [
    (dict(dataset='mnist'),
     "dataset='mnist' is not allowed; allowed: cifar10, cifar100."),
    (dict(dataset='CIFAR10'),
     "dataset='CIFAR10' is not allowed; allowed: cifar10, cifar100."),
    (dict(dataset='cifar10', source='gcs'),
     "source='gcs' is not allowed; allowed: download, local, tfds, arrays."),
])
def test_unknown_dataset_or_source(kwargs, message):
  error = expect_error(ValueError, lambda: ip.load_cifar(**kwargs))
  assert str(error) == message


def test_local_needs_data_dir():
  expect_error(ValueError, lambda: ip.load_cifar('cifar10', source='local'),
               '--config.data_dir=DATA_DIR', 'cifar-10-batches-py')


def test_local_missing_dir(tmp_path):
  missing = tmp_path / 'nope'
  expect_error(ip.DataNotFoundError,
               lambda: ip.load_cifar('cifar10', source='local',
                                     data_dir=str(missing)),
               str(missing), 'does not exist', 'cifar-10-batches-py',
               'cifar-10-python.tar.gz')


def test_local_dir_without_cifar(tmp_path):
  (tmp_path / 'something.txt').write_text('hello')
  expect_error(ip.DataNotFoundError,
               lambda: ip.load_cifar('cifar10', source='local',
                                     data_dir=str(tmp_path)),
               str(tmp_path), 'No CIFAR-10 data', 'cifar-10-batches-py')


def test_local_wrong_dataset_hint(tmp_path):
  write_cifar10_layout(tmp_path)
  expect_error(ip.DataNotFoundError,
               lambda: ip.load_cifar('cifar100', source='local',
                                     data_dir=str(tmp_path)),
               'cifar-100-python', "did you mean dataset='cifar10'")


def test_local_incomplete_dir(tmp_path):
  folder = write_cifar10_layout(tmp_path)
  os.remove(os.path.join(folder, 'data_batch_3'))
  for data_dir in (tmp_path, folder):
    expect_error(ip.DataNotFoundError,
                 lambda: ip.load_cifar('cifar10', source='local',
                                       data_dir=str(data_dir)),
                 'Incomplete', folder, 'data_batch_3')


def test_local_synthetic_layout_loads(tmp_path):
  write_cifar10_layout(tmp_path, n_per_file=3)
  data = ip.load_cifar('cifar10', source='local', data_dir=str(tmp_path))
  assert data.train.images.shape == (15, 32, 32, 3)
  assert data.test.images.shape == (3, 32, 32, 3)


@pytest.mark.parametrize('corruption, fragments', [
    ('shape', ('data_batch_2', '(4, 100)', '(N, 3072)')),
    ('dtype', ('data_batch_2', 'float32', 'uint8')),
    ('labels', ('data_batch_2', '[0, 9]', '10')),
    ('num_labels', ('data_batch_2', 'labels', 'one per image')),
    ('garbage', ('data_batch_2', 'cannot unpickle')),
    ('not_dict', ('data_batch_2', 'pickled dict')),
    ('no_data_key', ('data_batch_2', "b'data'", 'missing')),
])
def test_local_not_cifar(tmp_path, corruption, fragments):
  folder = write_cifar10_layout(tmp_path)
  path = os.path.join(folder, 'data_batch_2')
  labels = [1, 2, 3, 4]
  data = np.zeros((4, 3072), np.uint8)
  if corruption == 'shape':
    write_batch(path, np.zeros((4, 100), np.uint8), labels)
  elif corruption == 'dtype':
    write_batch(path, data.astype(np.float32), labels)
  elif corruption == 'labels':
    write_batch(path, data, [1, 2, 10, 4])
  elif corruption == 'num_labels':
    write_batch(path, data, [1, 2, 3])
  elif corruption == 'garbage':
    with open(path, 'wb') as f:
      f.write(b'this is not a pickle')
  elif corruption == 'not_dict':
    with open(path, 'wb') as f:
      pickle.dump([1, 2, 3], f)
  elif corruption == 'no_data_key':
    with open(path, 'wb') as f:
      pickle.dump({b'labels': labels}, f)
  expect_error(ValueError,
               lambda: ip.load_cifar('cifar10', source='local',
                                     data_dir=str(tmp_path)),
               *fragments)


def test_local_bad_archives(tmp_path):
  folder = write_cifar10_layout(tmp_path / 'src')
  partial = tmp_path / 'partial'
  partial.mkdir()
  with tarfile.open(partial / 'cifar-10-python.tar.gz', 'w:gz') as tar:
    for name in CIFAR10_FILES[:-1]:  # no test_batch
      tar.add(os.path.join(folder, name), arcname=f'cifar-10-batches-py/{name}')
  expect_error(ip.DataNotFoundError,
               lambda: ip.load_cifar('cifar10', source='local',
                                     data_dir=str(partial)),
               'Incomplete', str(partial / 'cifar-10-python.tar.gz'),
               'cifar-10-batches-py/test_batch')
  garbage = tmp_path / 'garbage'
  garbage.mkdir()
  (garbage / 'cifar-10-python.tar.gz').write_bytes(b'\x1f\x8b not really gzip')
  expect_error(ip.DataNotFoundError,
               lambda: ip.load_cifar('cifar10', source='local',
                                     data_dir=str(garbage)),
               str(garbage / 'cifar-10-python.tar.gz'), 'cannot read')


def test_manual_dir_only_for_tfds(tmp_path):
  expect_error(ValueError,
               lambda: ip.load_cifar('cifar10', source='local',
                                     data_dir=str(tmp_path),
                                     manual_dir=str(tmp_path)),
               'manual_dir', "source='tfds'")


# ---------------------------------------------------------------------------
# load(config): the one mapping from a config to its data.


def _config(**changes):
  config = default_config.get_config()
  config.update(changes)
  return config


def test_default_config_downloads():
  config = default_config.get_config()
  assert config.data_source == 'download' and config.data_dir == ''
  assert config.train_examples == 0
  assert config.data_source in ip.SOURCES


def test_load_reads_the_data_keys(tmp_path):
  write_cifar10_layout(tmp_path, n_per_file=4)
  full = ip.load(_config(data_source='local', data_dir=str(tmp_path)))
  assert full.train.num_examples == 20 and full.test.num_examples == 4
  part = ip.load(_config(data_source='local', data_dir=str(tmp_path),
                         train_examples=7))
  np.testing.assert_array_equal(part.train.images, full.train.images[:7])
  np.testing.assert_array_equal(part.train.labels, full.train.labels[:7])
  np.testing.assert_array_equal(part.test.images, full.test.images)
  assert 'first 7 of 20 training images' in part.source
  # A config without the key (built by hand) trains on everything.
  bare = ml_collections.ConfigDict({'dataset': 'cifar10',
                                    'data_source': 'local',
                                    'data_dir': str(tmp_path)})
  assert ip.load(bare).train.num_examples == 20


@pytest.mark.parametrize('count, fragments', [
    (21, ('train_examples=21', '20 training images', '0 (all) to 20')),
    (-1, ('train_examples=-1', 'an integer >= 0')),
    (2.5, ('train_examples=2.5', 'an integer')),
])
def test_load_refuses_bad_train_examples(tmp_path, count, fragments):
  # What train.py and sweep.py do: validate the config, then load.
  write_cifar10_layout(tmp_path, n_per_file=4)
  config = ml_collections.ConfigDict(dict(
      _config(data_source='local', data_dir=str(tmp_path)).to_dict(),
      train_examples=count))

  def validate_and_load():
    configuration.validate(config)
    ip.load(config)

  expect_error(ValueError, validate_and_load, *fragments)


# ---------------------------------------------------------------------------
# The validation split (config.validation_examples).


def _rows(split):
  return [image.tobytes() + bytes([label]) for image, label
          in zip(split.images, split.labels)]


@pytest.mark.parametrize('train_examples', [0, 12])
def test_validation_split_is_held_out_of_training(tmp_path, train_examples):
  write_cifar10_layout(tmp_path, n_per_file=4)
  local = dict(data_source='local', data_dir=str(tmp_path),
               train_examples=train_examples)
  full = ip.load(_config(**local))
  data = ip.load(_config(validation_examples=5, **local))
  n = full.train.num_examples
  # The documented rule: the first 5 indices of a permutation drawn with
  # numpy's default_rng(0), whatever config.seed.
  held = set(np.random.default_rng(0).permutation(n)[:5].tolist())
  rows = _rows(full.train)
  assert _rows(data.validation) == [rows[i] for i in sorted(held)]
  assert _rows(data.train) == [rows[i] for i in range(n) if i not in held]
  assert not set(_rows(data.validation)) & set(_rows(data.train))
  assert _rows(data.test) == _rows(full.test)
  other_seed = ip.load(_config(validation_examples=5, seed=7, **local))
  assert _rows(other_seed.validation) == _rows(data.validation)
  assert _rows(other_seed.train) == _rows(data.train)


def test_validation_split_changes_the_fingerprint_and_none_keeps_it(tmp_path):
  write_cifar10_layout(tmp_path, n_per_file=4)
  local = dict(data_source='local', data_dir=str(tmp_path))
  without = ip.load(_config(**local))
  assert without.validation is None
  assert ip.fingerprint(without) == ip.fingerprint(
      ip.load_cifar('cifar10', source='local', data_dir=str(tmp_path)))
  assert set(ip.fingerprint(without)) == {'dataset', 'train_examples',
                                          'test_examples', 'fingerprint'}
  three, four = (ip.fingerprint(ip.load(_config(validation_examples=v,
                                                **local))) for v in (3, 4))
  assert three['validation_examples'] == 3 and three['train_examples'] == 17
  fingerprints = {three['fingerprint'], four['fingerprint'],
                  ip.fingerprint(without)['fingerprint']}
  assert len(fingerprints) == 3


@pytest.mark.parametrize('changes, fragments', [
    (dict(validation_examples=20), (
        'validation_examples=20 is not allowed', '20 training images',
        'allowed: 0 (none) to 19.')),
    (dict(validation_examples=6, train_examples=6), (
        'validation_examples=6 is not allowed', '6 training images',
        'allowed: 0 (none) to 5.')),
    (dict(validation_examples=-1), (
        'validation_examples=-1 is not allowed; allowed: an integer >= 0.',)),
    (dict(validation_examples=2.5), (
        'validation_examples=2.5 is not allowed', 'allowed: an integer')),
])
def test_load_refuses_bad_validation_examples(tmp_path, changes, fragments):
  write_cifar10_layout(tmp_path, n_per_file=4)
  config = ml_collections.ConfigDict(dict(
      _config(data_source='local', data_dir=str(tmp_path)).to_dict(),
      **changes))

  def validate_and_load():
    configuration.validate(config)
    ip.load(config)

  error = expect_error(ValueError, validate_and_load, *fragments)
  assert '\n' not in str(error)


# ---------------------------------------------------------------------------
# Device-side functions.


def test_normalize_matches_numpy():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  images[0, 0, 0] = (0, 128, 255)
  mean = np.array([0.4914, 0.4822, 0.4465], np.float32)
  std = np.array([0.2023, 0.1994, 0.2010], np.float32)
  expected = (images.astype(np.float32) / 255.0 - mean) / std
  for fn in (cifar_normalize, jax.jit(cifar_normalize)):
    out = fn(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)


def _crop_candidates(images, pad=4):
  """Yields ((dy, dx, flip), candidates (N, 32, 32, 3)) for all 9x9x2 crops."""
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, w = images.shape[1:3]
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[:, dy:dy + h, dx:dx + w]
      yield (dy, dx, False), crop
      yield (dy, dx, True), crop[:, :, ::-1]


def _identify_crops(images, out):
  """For each example, the list of (dy, dx, flip) reproducing out[i]."""
  matches = [[] for _ in range(len(images))]
  for params, candidates in _crop_candidates(images):
    equal = np.all(candidates == out, axis=(1, 2, 3))
    for i in np.flatnonzero(equal):
      matches[i].append(params)
  return matches


@pytest.mark.slow
def test_augment_is_a_padded_crop_plus_flip():
  rng = np.random.default_rng(0)
  # Values >= 1 so zero padding is distinguishable from image content.
  images = rng.integers(1, 256, (512, 32, 32, 3), dtype=np.uint8)
  key = jax.random.key(42)
  out = np.asarray(jax.jit(cifar_augment)(key, images))
  assert out.dtype == np.uint8 and out.shape == images.shape
  matches = _identify_crops(images, out)
  assert all(len(m) == 1 for m in matches), 'every output must be one crop'
  params = np.array([m[0] for m in matches])
  # Crops and flips vary across examples and cover the whole range.
  assert set(params[:, 0]) == set(range(9))
  assert set(params[:, 1]) == set(range(9))
  assert 0.4 < params[:, 2].mean() < 0.6
  assert len({tuple(p) for p in params}) > 100
  # Padding is zero: a shifted crop has exactly zero rows/cols at the border.
  i = int(np.flatnonzero((params[:, 0] == 0) & (params[:, 1] == 8))[0])
  assert np.all(out[i, :4] == 0)
  assert (out[i] == 0).sum() == (4 * 32 + 28 * 4) * 3
  # Same key -> same result, eager or jitted; another key -> different.
  np.testing.assert_array_equal(np.asarray(cifar_augment(key, images)), out)
  other = np.asarray(jax.jit(cifar_augment)(jax.random.key(43), images))
  assert not np.array_equal(other, out)


def test_augment_raw_keys_and_vmap():
  rng = np.random.default_rng(1)
  images = rng.integers(1, 256, (2, 6, 32, 32, 3), dtype=np.uint8)
  keys = jax.random.split(jax.random.key(0), 2)
  jitted = jax.jit(cifar_augment)
  batched = np.asarray(jax.jit(jax.vmap(cifar_augment))(keys, images))
  for k in range(2):
    np.testing.assert_array_equal(
        batched[k], np.asarray(jitted(keys[k], images[k])))
  # Raw uint32 keys (the jax.random.PRNGKey format) work too.
  raw_key = jax.random.key_data(jax.random.key(3))
  assert raw_key.dtype == np.uint32
  raw = np.asarray(jitted(raw_key, images[0]))
  assert all(len(m) == 1 for m in _identify_crops(images[0], raw))


_SHARDED_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import functools
    from training import augment
    from training import input_pipeline
    cifar_augment = functools.partial(augment.augment,
                                      dataset=input_pipeline.CIFAR10)

    devices = jax.devices('cpu')
    if len(devices) < 4:
      sys.exit(3)
    images = np.load(sys.argv[1])
    key = jax.random.key(int(sys.argv[3]))
    mesh = Mesh(np.array(devices[:4]), ('data',))
    batch = NamedSharding(mesh, P('data'))
    replicated = NamedSharding(mesh, P())
    sharded_fn = jax.jit(cifar_augment, in_shardings=(replicated, batch),
                         out_shardings=batch)
    sharded = sharded_fn(key, jax.device_put(images, batch))
    assert len(sharded.sharding.device_set) == 4, sharded.sharding
    assert len(sharded.addressable_shards) == 4
    single = jax.jit(cifar_augment)(key, jax.device_put(images, devices[0]))
    np.savez(sys.argv[2], sharded=np.asarray(sharded),
             single=np.asarray(single))
''')


@pytest.mark.slow
def test_augment_independent_of_sharding(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.integers(1, 256, (32, 32, 32, 3), dtype=np.uint8)
  np.save(tmp_path / 'images.npy', images)
  seed = 7
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run(
      [sys.executable, '-c', _SHARDED_SCRIPT, str(tmp_path / 'images.npy'),
       str(tmp_path / 'out.npz'), str(seed)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
  if result.returncode == 3:
    pytest.skip('could not simulate 4 CPU devices with XLA_FLAGS')
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / 'out.npz')
  reference = np.asarray(cifar_augment(jax.random.key(seed), images))
  np.testing.assert_array_equal(out['single'], reference)
  np.testing.assert_array_equal(out['sharded'], reference)


# ---------------------------------------------------------------------------
# Host-side batching helpers.


def test_epoch_permutation():
  a = ip.epoch_permutation(0, 3, 1000)
  assert a.dtype == np.int32 and a.shape == (1000,)
  np.testing.assert_array_equal(np.sort(a), np.arange(1000))
  np.testing.assert_array_equal(a, ip.epoch_permutation(0, 3, 1000))
  assert not np.array_equal(a, ip.epoch_permutation(0, 4, 1000))
  assert not np.array_equal(a, ip.epoch_permutation(1, 3, 1000))
  assert not np.array_equal(a, np.arange(1000))
  # Stated recipe (so any host with the same numpy reproduces it).
  np.testing.assert_array_equal(
      a, np.random.default_rng([0, 3]).permutation(1000))
  with pytest.raises(ValueError, match='non-negative'):
    ip.epoch_permutation(-1, 0, 10)


def test_steps_per_epoch():
  assert ip.steps_per_epoch(50000, 128) == 390
  assert ip.steps_per_epoch(5085, 5085) == 1
  assert ip.steps_per_epoch(256, 128) == 2
  with pytest.raises(ValueError, match='batch_size'):
    ip.steps_per_epoch(10, 0)
  with pytest.raises(ValueError, match='larger than'):
    ip.steps_per_epoch(10, 11)


@pytest.mark.parametrize('n, batch_size', [(10, 4), (12, 4), (3, 8), (1, 1)])
def test_eval_batches_cover_split_once(n, batch_size):
  rng = np.random.default_rng(n)
  split = ip.Split(images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                   labels=np.arange(n, dtype=np.int32))
  batches = list(ip.eval_batches(split, batch_size))
  assert len(batches) == -(-n // batch_size)
  for b in batches:
    assert b['images'].shape == (batch_size, 32, 32, 3)
    assert b['images'].dtype == np.uint8
    assert b['labels'].shape == (batch_size,) and b['labels'].dtype == np.int32
    assert b['mask'].shape == (batch_size,)
  mask = np.concatenate([b['mask'] for b in batches]).astype(bool)
  labels = np.concatenate([b['labels'] for b in batches])
  images = np.concatenate([b['images'] for b in batches])
  assert mask.sum() == n and mask[:n].all() and not mask[n:].any()
  np.testing.assert_array_equal(labels[mask], split.labels)
  np.testing.assert_array_equal(images[mask], split.images)
  assert not images[~mask].any() and not labels[~mask].any()
  with pytest.raises(ValueError, match='batch_size'):
    next(ip.eval_batches(split, 0))
