"""Test helpers: genuine CIFAR-10 images from the environment, official-format
archives built from arrays, and mocked TFDS CIFAR.

Genuine images: `cifar10_subset_path()` is the folder named by the
environment variable PADAX_TEST_CIFAR10_SUBSET (None when unset); tests take
it through conftest.py's `cifar10_subset` fixture, which skips without it.

Archives: `write_python_layout` and `write_python_archive` write the official
CIFAR python layout / `.tar.gz` from arrays (tests of loading and download).

Mocked TFDS: `mock_cifar` serves small random splits to
`load_cifar(..., source='tfds')`.

Usage (from any test in tests/)::

  from tests.data_fixtures import mock_cifar

  with mock_cifar(num_train=64, num_test=24) as expected:
    data = input_pipeline.load_cifar('cifar10', source='tfds')
  # data.train.images == expected.train_images, etc.

Why not plain `tfds.testing.mock_data(num_examples=n)`: in
tensorflow-datasets 4.9.10 it does mock `tfds.data_source`, but
* `__getitems__` (batched reads, which `load_cifar` uses) is broken: the mock
  assigns it on a MagicMock, which only binds the dunder methods it knows, so
  the patched function is called without `self` and raises TypeError;
* every split gets the same `num_examples` and the same examples;
* with no metadata files the split names are unknown, so `split=None` yields
  an empty dict (load_cifar asks for ['train', 'test'] explicitly).
So `mock_cifar` keeps `tfds.testing.mock_data` (it patches the builder,
data_dir, download_and_prepare and GCS access) with
`policy=MockPolicy.USE_CODE` and supplies its own `as_data_source_fn`: list-like
sources with `__len__`, `__getitem__` and `__getitems__`, one size per split,
returning examples with CIFAR's TFDS features (id, image, label[, coarse_label]).
TensorFlow is not needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import tarfile
from typing import Iterator, Optional
from unittest import mock

import numpy as np

_NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}

SUBSET_ENV = 'PADAX_TEST_CIFAR10_SUBSET'

# Names in the official python releases.
CIFAR10_FOLDER = 'cifar-10-batches-py'
CIFAR10_FILES = tuple(f'data_batch_{i}' for i in range(1, 6)) + ('test_batch',)
CIFAR10_ARCHIVE = 'cifar-10-python.tar.gz'


def cifar10_subset_path() -> Optional[str]:
  """$PADAX_TEST_CIFAR10_SUBSET, checked to hold the python and binary
  layouts (a wrong path is an error, not a skip); None when unset."""
  path = os.environ.get(SUBSET_ENV)
  if not path:
    return None
  for folder in (CIFAR10_FOLDER, 'cifar-10-batches-bin'):
    if not os.path.isdir(os.path.join(path, folder)):
      raise FileNotFoundError(
          f'{SUBSET_ENV}={path!r} has no {folder}/: expected a folder of '
          'genuine CIFAR-10 images in the python and binary layouts.')
  return path


def write_python_layout(root, n_per_file: int = 3, seed: int = 0) -> str:
  """Writes a small random cifar-10-batches-py/ under `root` (the official
  pickled batches: bytes keys, uint8 (N, 3072) data); returns its path."""
  folder = os.path.join(root, CIFAR10_FOLDER)
  os.makedirs(folder)
  rng = np.random.default_rng(seed)
  for name in CIFAR10_FILES:
    data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n_per_file).tolist()
    with open(os.path.join(folder, name), 'wb') as f:
      pickle.dump({b'batch_label': b'synthetic', b'labels': labels,
                   b'data': data}, f)
  return folder


def write_python_archive(folder, path) -> str:
  """Packs a cifar-10-batches-py/ folder as the official .tar.gz does."""
  with tarfile.open(path, 'w:gz', compresslevel=1) as tar:
    tar.add(folder, arcname=CIFAR10_FOLDER)
  return str(path)


@dataclasses.dataclass(frozen=True, eq=False)
class MockedCifar:
  """The arrays the mocked TFDS data sources serve."""
  dataset: str
  train_images: np.ndarray  # uint8 (num_train, 32, 32, 3) unless image_shape given
  train_labels: np.ndarray  # int64 (num_train,)
  test_images: np.ndarray
  test_labels: np.ndarray


class _ListSource:
  """Random-access source shaped like a TFDS ArrayRecordDataSource."""

  def __init__(self, split: str, images: np.ndarray, labels: np.ndarray,
               with_coarse_label: bool):
    self._split = split
    self._images = images
    self._labels = labels
    self._with_coarse_label = with_coarse_label

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(index)
    example = {
        'id': f'{self._split}_{index:05d}',
        'image': self._images[index].copy(),
        'label': np.int64(self._labels[index]),
    }
    if self._with_coarse_label:
      example['coarse_label'] = np.int64(self._labels[index] // 5)
    return example

  def __getitems__(self, indices) -> list[dict]:
    return [self[i] for i in indices]

  def __repr__(self) -> str:
    return f'_ListSource(split={self._split!r}, len={len(self)})'


@contextlib.contextmanager
def mock_cifar(num_train: int = 64, num_test: int = 32, *,
               dataset: str = 'cifar10', seed: int = 0,
               image_shape: tuple[int, ...] = (32, 32, 3),
               label_offset: int = 0) -> Iterator[MockedCifar]:
  """Mocks TFDS so `tfds.data_source(dataset, ...)` serves small random splits.

  Args:
    num_train: size of the 'train' split.
    num_test: size of the 'test' split.
    dataset: 'cifar10' or 'cifar100'; other TFDS names raise inside the mock.
    seed: seed of the random images and labels.
    image_shape: shape of each image (change it to test validation).
    label_offset: added to every label (e.g. num_classes, to test validation).

  Yields:
    MockedCifar with the arrays the mocked splits hold.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  num_classes = _NUM_CLASSES[dataset]
  rng = np.random.default_rng(seed)

  def make(n):
    images = rng.integers(0, 256, (n,) + tuple(image_shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, (n,)) + label_offset
    return images, labels

  (train_images, train_labels), (test_images, test_labels) = (
      make(num_train), make(num_test))
  expected = MockedCifar(dataset, train_images, train_labels, test_images,
                         test_labels)
  sources = {
      'train': (train_images, train_labels),
      'test': (test_images, test_labels),
  }

  def as_data_source(builder, split=None, decoders=None,
                     deserialize_method=None, **kwargs):
    del decoders, deserialize_method, kwargs
    if builder.name != dataset:
      raise ValueError(f'mock_cifar mocks {dataset!r}, not {builder.name!r}.')

    def one(name):
      if name not in sources:
        raise ValueError(f'mock_cifar only serves whole splits {list(sources)}, '
                         f'got {name!r}.')
      return _ListSource(name, *sources[name],
                         with_coarse_label=(dataset == 'cifar100'))

    if split is None:
      return {name: one(name) for name in sources}
    if isinstance(split, str):
      return one(split)
    if isinstance(split, dict):
      return {k: one(v) for k, v in split.items()}
    return type(split)(one(s) for s in split)

  # With GCS mocked away, DatasetInfo.initialize_from_bucket finds no files
  # and returns, but only after leaving an empty mkdtemp('tfds') in /tmp for
  # every builder made: a no-op here does the same without the litter.
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source), \
      mock.patch.object(tfds.core.DatasetInfo, 'initialize_from_bucket',
                        lambda self: None):
    yield expected
