"""The input pipeline for padax: CIFAR-10/100, or your own images (.npz).

Each dataset is one `DatasetSpec`. The datasets are small (CIFAR: 60k images
of 32x32x3 bytes, ~180 MB), so the whole dataset is loaded once on the host
as uint8 numpy arrays and then held on the accelerator, where the train step
augments and normalises it (`training/augment.py`). `tensorflow_datasets` is
imported lazily: only `source='tfds'` needs it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import logging
import operator
import os
import pickle
import tarfile
import zipfile
import zlib
from typing import Any, Iterator, Sequence

import numpy as np

from training import download
from training import faults

log = logging.getLogger(__name__)

SOURCES = ('download', 'local', 'tfds', 'arrays')

# Number of records requested per `__getitems__` call on a TFDS data source.
_TFDS_READ_CHUNK = 4096


class DataNotFoundError(ValueError):
  """The requested CIFAR data is missing, incomplete or unusable."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split held on the host.

  Attributes:
    images: uint8 (N, H, W, C), NHWC (CIFAR: (N, 32, 32, 3), RGB).
    labels: int32 (N,).
  """
  images: np.ndarray
  labels: np.ndarray

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  def __len__(self) -> int:
    return self.num_examples


@dataclasses.dataclass(frozen=True, eq=False)
class CifarData:
  """Train and test splits of one dataset, its spec (by default the spec of
  `name`) and the training images held out for validation, if any
  (`hold_out_validation`)."""
  train: Split
  test: Split
  num_classes: int
  name: str  # 'cifar10' | 'cifar100' | 'arrays'
  source: str  # human-readable origin of the data
  spec: DatasetSpec | None = None
  validation: Split | None = None

  def __post_init__(self):
    if self.spec is None:
      object.__setattr__(self, 'spec', SPECS[self.name])


# ---------------------------------------------------------------------------
# Canonical layouts; checks of what is read.


@dataclasses.dataclass(frozen=True)
class _PythonLayout:
  """The official "python version" release of one CIFAR dataset."""
  title: str
  folder: str
  archive: str  # On the official site, download.BASE_URL.
  md5: str  # Published with the archive (and checked by torchvision, TFDS).
  size: int  # The archive's size in bytes (as TFDS records it).
  train_files: tuple[str, ...]
  test_files: tuple[str, ...]
  label_key: bytes
  # Archive of the official *binary* release, which TFDS downloads (and looks
  # for in its manual_dir).
  tfds_archive: str

  @property
  def files(self) -> tuple[str, ...]:
    return self.train_files + self.test_files


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset: what the loader, the config check, the augmentation
  (training/augment.py), the steps and the presets read of it."""
  name: str  # The config's `dataset`; 'arrays': your own .npz file.
  num_classes: int  # The labels lie in [0, num_classes).
  image_shape: tuple[int, int, int]  # (H, W, C) of the uint8 images.
  train_examples: int
  test_examples: int
  # Per channel, of the images scaled to [0, 1]: (x - mean) / std.
  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int  # Zero padding of the random training crop.
  flip: bool  # Training images flipped left-right at random.
  layout: _PythonLayout | None = None  # The official files; None: .npz.


# The Padam authors' CIFAR code (torchvision): RandomCrop(32, padding=4),
# RandomHorizontalFlip(), and Normalize with these statistics for both.
_CIFAR = dict(image_shape=(32, 32, 3), train_examples=50_000,
              test_examples=10_000, mean=(0.4914, 0.4822, 0.4465),
              std=(0.2023, 0.1994, 0.2010), crop_padding=4, flip=True)
SPECS = {
    'cifar10': DatasetSpec('cifar10', 10, layout=_PythonLayout(
        title='CIFAR-10',
        folder='cifar-10-batches-py',
        archive='cifar-10-python.tar.gz',
        md5='c58f30108f718f92721af3b95e74349a',
        size=170498071,
        train_files=tuple(f'data_batch_{i}' for i in range(1, 6)),
        test_files=('test_batch',),
        label_key=b'labels',
        tfds_archive='cifar-10-binary.tar.gz',
    ), **_CIFAR),
    'cifar100': DatasetSpec('cifar100', 100, layout=_PythonLayout(
        title='CIFAR-100',
        folder='cifar-100-python',
        archive='cifar-100-python.tar.gz',
        md5='eb9058c3a382ffc7106e4002c42a8d85',
        size=169001437,
        train_files=('train',),
        test_files=('test',),
        label_key=b'fine_labels',
        tfds_archive='cifar-100-binary.tar.gz',
    ), **_CIFAR),
}
CIFAR10 = SPECS['cifar10']
DATASETS = tuple(SPECS)


def _describe_layout(layout: _PythonLayout, where: str = 'DATA_DIR') -> str:
  return (f'{where}/{layout.folder}/ holding {", ".join(layout.files)} '
          f'(or that folder itself), or the official archive '
          f'{where}/{layout.archive} ({download.BASE_URL}/{layout.archive})')


def _check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
  if value not in allowed:
    raise ValueError(f'{key}={value!r} is not allowed; allowed: '
                     f'{", ".join(allowed)}.')


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels[(labels < 0) | (labels >= num_classes)]
    raise ValueError(
        f'{where}: labels must lie in [0, {num_classes - 1}] for this dataset, '
        f'found {bad.size} outside (e.g. {int(bad[0])}); not CIFAR data for '
        'this dataset?')


def _cifar_data(spec: DatasetSpec, splits: dict[str, tuple], source: str
               ) -> CifarData:
  """CifarData of {where: (images, labels)}, train then test, as uint8 and
  int32 arrays; no split may be empty."""
  for where, (_, labels) in splits.items():
    if not len(labels):
      raise DataNotFoundError(f'{where}: the split is empty.')
  train, test = (Split(images=np.ascontiguousarray(images, dtype=np.uint8),
                       labels=np.ascontiguousarray(labels, dtype=np.int32))
                 for images, labels in splits.values())
  return CifarData(train=train, test=test, num_classes=spec.num_classes,
                   name=spec.name, source=source, spec=spec)


# ---------------------------------------------------------------------------
# The python layout or official archive: local, or downloaded once
# (training/download.py).


def _dict_get(obj: dict, key: bytes, where: str) -> Any:
  # The official files have bytes keys when unpickled with encoding='bytes';
  # re-pickled copies sometimes use str keys.
  for k in (key, key.decode()):
    if k in obj:
      return obj[k]
  raise ValueError(
      f'{where}: not a CIFAR python batch file: key {key!r} missing '
      f'(found keys {sorted(map(repr, obj))[:8]}).')


def _unpickle_batch(content: bytes, where: str) -> dict:
  """The dict pickled in one batch file, as written (bytes keys)."""
  if not content:
    raise ValueError(f'{where}: the file is empty (0 bytes); expected a CIFAR '
                     'python batch file.')
  try:
    obj = pickle.load(io.BytesIO(content), encoding='bytes')
  except Exception as e:  # pickle raises many different exception types.
    raise ValueError(
        f'{where}: not a CIFAR python batch file (cannot unpickle it: '
        f'{type(e).__name__}: {e}).') from None
  if not isinstance(obj, dict):
    raise ValueError(
        f'{where}: not a CIFAR python batch file (expected a pickled dict, '
        f'got {type(obj).__name__}).')
  return obj


def batch_arrays(batch: dict, where: str, spec: DatasetSpec
                ) -> tuple[np.ndarray, np.ndarray]:
  """NHWC uint8 images and labels of one python batch file's dict, checked
  against `spec`."""
  layout = spec.layout
  height, width, channels = spec.image_shape
  row = height * width * channels
  try:
    data = np.asarray(_dict_get(batch, b'data', where))
    labels = np.asarray(_dict_get(batch, layout.label_key, where))
  except ValueError as e:  # A ragged list: not one array.
    if 'not a CIFAR python batch file' in str(e):
      raise
    raise ValueError(
        f"{where}: not a CIFAR python batch file: b'data' or "
        f'{layout.label_key!r} is not an array (rows of different lengths?); '
        f'expected uint8 (N, {row}) images and N integer labels.') from None
  if data.size == 0 and labels.size == 0:
    # No images: an empty list unpickles as float64 (0,); the split's check
    # (_cifar_data) says whether the split is empty.
    data, labels = np.zeros((0, row), np.uint8), labels.astype(int)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
    raise ValueError(
        f"{where}: b'data' is {data.dtype} {data.shape}; expected uint8 "
        f'(N, {row}) rows of {height * width} R, {height * width} G, '
        f'{height * width} B values ({height}x{width} CIFAR images).')
  if labels.shape != data.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f'{where}: {layout.label_key!r} is {labels.dtype} {labels.shape}; '
        f'expected {data.shape[0]} integer labels, one per image.')
  _check_labels(labels, spec.num_classes, where)
  images = data.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
  return images, labels


def locate(path: str, layout: _PythonLayout) -> tuple[str, str] | None:
  """('folder' | 'archive', location) of `layout`'s python release at
  `path`: the archive, its folder, or a directory holding either; None if
  there is none."""
  if os.path.isfile(path):
    return 'archive', path
  if (os.path.basename(path) == layout.folder or
      any(os.path.exists(os.path.join(path, f)) for f in layout.files)):
    return 'folder', path
  if os.path.isdir(os.path.join(path, layout.folder)):
    return 'folder', os.path.join(path, layout.folder)
  if os.path.isfile(os.path.join(path, layout.archive)):
    return 'archive', os.path.join(path, layout.archive)
  return None


def read_batches(kind: str, location: str, layout: _PythonLayout
                ) -> dict[str, tuple[str, dict]]:
  """{file name: (where, its unpickled dict)} of the layout's batch files in
  `location`, a folder ('folder') or the official archive ('archive')."""
  if kind == 'folder':
    missing = [f for f in layout.files
               if not os.path.isfile(os.path.join(location, f))]
    if missing:
      raise DataNotFoundError(
          f'Incomplete {layout.title} python layout at {location}: missing '
          f'{", ".join(missing)} (expected {", ".join(layout.files)}).')
    batches = {}
    for name in layout.files:
      path = os.path.join(location, name)
      with open(path, 'rb') as f:
        batches[name] = path, _unpickle_batch(f.read(), path)
    return batches
  official = (f'expected the official {layout.archive} ({layout.size} bytes, '
              f'MD5 {layout.md5})')
  size = os.path.getsize(location)
  if not size:
    raise DataNotFoundError(
        f'{location}: the file is empty (0 bytes); {official}.')
  contents = {}
  member = None
  try:
    for member, f in download.archive_files(location, layout.folder,
                                            layout.files):
      contents[member] = f.read()
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    what = ('not a tar archive, compressed or not' if member is None
            else 'it is cut short or damaged')
    raise DataNotFoundError(
        f'{location}: cannot read the {layout.title} archive ({size} bytes): '
        f"{what} ({faults.first_line(e, with_type=True).rstrip(':')}); "
        f'{official}.'
    ) from None
  batches = {}
  for name, content in contents.items():
    where = f'{location}:{layout.folder}/{name}'
    batches[name] = where, _unpickle_batch(content, where)
  missing = [f'{layout.folder}/{n}' for n in layout.files if n not in batches]
  if missing:
    raise DataNotFoundError(
        f'Incomplete {layout.title} archive {location}: missing members '
        f'{", ".join(missing)}; expected the official {layout.archive}.')
  return batches


def _other_dataset_hint(path: str, dataset: str) -> str:
  for other, layout in ((d, s.layout) for d, s in SPECS.items()):
    if other != dataset and (
        os.path.basename(os.path.normpath(path)) == layout.folder or
        os.path.exists(os.path.join(path, layout.folder)) or
        os.path.exists(os.path.join(path, layout.archive))):
      return f" It seems to hold {layout.title}: did you mean dataset='{other}'?"
  return ''


def _load_local(spec: DatasetSpec, data_dir) -> CifarData:
  layout = spec.layout
  if data_dir is None:
    raise ValueError(
        f"source='local' needs data_dir (--config.data_dir=DATA_DIR): a "
        f'directory containing {_describe_layout(layout)}.')
  path = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  if os.path.islink(path) and not os.path.exists(path):
    try:
      os.stat(path)
    except OSError as e:
      why = e.strerror
    raise DataNotFoundError(
        f'data_dir {path} is a symlink that cannot be followed ({why}: to '
        f"{os.readlink(path)!r}); source='local' expects "
        f'{_describe_layout(layout, path)}.')
  if not os.path.exists(path):
    raise DataNotFoundError(
        f"data_dir {path} does not exist; source='local' expects "
        f'{_describe_layout(layout, path)}.')
  found = locate(path, layout)
  if found is None:
    raise DataNotFoundError(
        f'No {layout.title} data found in {path}: expected '
        f'{_describe_layout(layout, path)}.'
        f'{_other_dataset_hint(path, spec.name)}')
  kind, location = found
  arrays = {name: batch_arrays(batch, where, spec) for name, (where, batch)
            in read_batches(kind, location, layout).items()}
  if kind == 'archive':
    _warn_unless_official(location, layout)

  def concat(names):
    return (np.concatenate([arrays[n][0] for n in names]),
            np.concatenate([arrays[n][1] for n in names]))

  return _cifar_data(
      spec, {f'{location} (train)': concat(layout.train_files),
             f'{location} (test)': concat(layout.test_files)},
      f'local {layout.title} python {kind} {location}')


def _warn_unless_official(path: str, layout: _PythonLayout) -> None:
  """One warning line when the archive at `path` is not the official one."""
  with open(path, 'rb') as f:
    md5 = hashlib.file_digest(
        f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
  if md5 != layout.md5:
    log.warning('%s has MD5 %s, not the official %s of %s: the results may '
                "differ from the official data's.", path, md5, layout.md5,
                layout.archive)


def _load_download(spec: DatasetSpec, data_dir) -> CifarData:
  layout = spec.layout
  try:
    folder = download.fetch(layout, data_dir)
  except download.DownloadError as e:
    raise DataNotFoundError(
        f'{e} To use a copy instead (offline: fetched elsewhere), download '
        f'{download.BASE_URL}/{layout.archive} (MD5 {layout.md5}) and run with '
        '--config.data_source=local --config.data_dir=DATA_DIR, DATA_DIR '
        f'holding {layout.archive} or its extracted {layout.folder}/.'
    ) from None
  data = _load_local(spec, folder)
  return dataclasses.replace(
      data, source=f'{layout.title} from {download.archive_url(layout.archive)}'
                   f', cached in {folder}')


# ---------------------------------------------------------------------------
# TFDS.


def _tensorflow_available() -> bool:
  """Whether TensorFlow is importable (TFDS needs it to prepare datasets)."""
  return importlib.util.find_spec('tensorflow') is not None


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "source='tfds' needs tensorflow_datasets and array_record "
        '(pip install -r requirements/tfds.txt); or use the default '
        "source='download' (--config.data_source=download), or "
        "source='local' (--config.data_source=local "
        '--config.data_dir=DATA_DIR) with DATA_DIR holding the canonical CIFAR '
        f'python layout or the official archive. ({e})') from None
  return tfds


def _tfds_error(spec: DatasetSpec, data_dir, looked_in: str,
                downloads_dir: str, reason: str,
                cause: BaseException | None = None) -> DataNotFoundError:
  layout = spec.layout
  err = DataNotFoundError(
      f'CIFAR dataset {spec.name!r} is not available from TFDS '
      f'(data_dir={None if data_dir is None else os.fspath(data_dir)!r}, '
      f'looked in {looked_in}): {reason}\n'
      'Provide the data in one of these ways:\n'
      "  (1) --config.data_source=download (source='download', the default): "
      f'fetches the official {layout.archive} once (needs internet);\n'
      "  (2) --config.data_source=local --config.data_dir=DATA_DIR "
      f"(source='local') with {_describe_layout(layout)};\n"
      "  (3) for TFDS, install TensorFlow (pip install -r requirements/tfds.txt)"
      " and let TFDS download and prepare it (file_format='array_record', "
      'needs internet), or, offline, also put the official archive '
      f'{layout.tfds_archive} ({download.BASE_URL}/{layout.tfds_archive}) in '
      f"TFDS's manual_dir ({downloads_dir}/manual, i.e. "
      'DATA_DIR/downloads/manual with --config.data_dir=DATA_DIR).')
  err.cause = cause  # Kept for debugging without printing a TFDS traceback.
  return err


def _open_tfds(tfds, spec: DatasetSpec, data_dir):
  return tfds.data_source(
      spec.name, split=['train', 'test'], data_dir=data_dir, download=False,
      builder_kwargs={'file_format': 'array_record'})


def _read_tfds_split(source, spec: DatasetSpec, where: str):
  n = len(source)
  images = np.empty((n,) + spec.image_shape, np.uint8)
  labels = np.empty((n,), np.int64)
  for start in range(0, n, _TFDS_READ_CHUNK):
    keys = list(range(start, min(n, start + _TFDS_READ_CHUNK)))
    examples = source.__getitems__(keys)
    if len(examples) != len(keys):
      raise ValueError(f'{where}: asked for {len(keys)} records, got '
                       f'{len(examples)}.')
    try:
      chunk_images = [np.asarray(ex['image']) for ex in examples]
      chunk_labels = [ex['label'] for ex in examples]
    except (KeyError, TypeError) as e:
      raise ValueError(
          f'{where}: examples must have "image" and "label" features '
          f'({faults.first_line(e, with_type=True)}).') from None
    for i, image in enumerate(chunk_images):
      if image.dtype != np.uint8 or image.shape != spec.image_shape:
        raise ValueError(
            f'{where}: example {start + i} has image {image.dtype} '
            f'{image.shape}; expected uint8 {spec.image_shape}.')
    chunk_labels = np.asarray(chunk_labels)
    if (chunk_labels.shape != (len(keys),) or
        not np.issubdtype(chunk_labels.dtype, np.integer)):
      raise ValueError(f'{where}: labels must be integer scalars, got '
                       f'{chunk_labels.dtype} {chunk_labels.shape[1:]}.')
    images[start:start + len(keys)] = np.stack(chunk_images)
    labels[start:start + len(keys)] = chunk_labels
  _check_labels(labels, spec.num_classes, where)
  return images, labels


def _prepare_tfds(tfds, spec: DatasetSpec, data_dir, manual_dir,
                  open_error):
  """The sources TFDS could not open (`open_error`), once it has prepared the
  dataset; else the DataNotFoundError saying why it cannot."""
  layout = spec.layout
  try:
    builder = tfds.builder(spec.name, data_dir=data_dir,
                           file_format='array_record')
    looked_in = os.fspath(builder.data_dir)
    downloads_dir = os.path.join(os.fspath(builder.data_dir_root), 'downloads')
    prepared = builder.is_prepared()
  except Exception as e:
    root = '<TFDS data_dir>' if data_dir is None else os.fspath(data_dir)
    raise _tfds_error(
        spec, data_dir, root, os.path.join(root, 'downloads'),
        f'TFDS cannot build it ({faults.first_line(e, with_type=True)}).',
        e) from None
  error = functools.partial(_tfds_error, spec, data_dir, looked_in,
                            downloads_dir)
  if prepared:
    raise error(
        'it is prepared there but cannot be opened for random access '
        f'({faults.first_line(open_error, with_type=True)}); it may have '
        'been prepared in another file format (tfds.load writes tfrecord): '
        "prepare it with file_format='array_record' in another data_dir.",
        open_error
    ) from None
  if not _tensorflow_available():
    raise error('it is not prepared there, and TensorFlow, which TFDS needs '
                'to prepare it, is not installed.', open_error) from None
  download_config = None
  if manual_dir is not None:
    manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
    if not os.path.isfile(os.path.join(manual_dir, layout.tfds_archive)):
      raise error(f'manual_dir {manual_dir} does not contain '
                  f'{layout.tfds_archive}.', None) from None
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  try:
    builder.download_and_prepare(file_format='array_record',
                                 download_config=download_config)
    return _open_tfds(tfds, spec, data_dir)
  except Exception as e:
    raise error(f'it is not prepared there and preparing it failed '
                f'({faults.first_line(e, with_type=True)}).', e) from None


def _load_tfds(spec: DatasetSpec, data_dir, manual_dir) -> CifarData:
  tfds = _import_tfds()
  try:
    sources = _open_tfds(tfds, spec, data_dir)
  except Exception as e:  # pylint: disable=broad-except
    sources = _prepare_tfds(tfds, spec, data_dir, manual_dir, e)
  where = f'tfds {spec.name} (data_dir={data_dir})'
  return _cifar_data(
      spec, {f'{where} {split}': _read_tfds_split(source, spec,
                                                  f'{where} {split}')
             for split, source in zip(('train', 'test'), sources)},
      f"tfds {spec.name} array_record (data_dir="
      f"{'TFDS default' if data_dir is None else os.fspath(data_dir)})")


# ---------------------------------------------------------------------------
# Your own images: an .npz file.

ARRAYS = ('train_images', 'train_labels', 'test_images', 'test_labels')


def load_arrays(path: str | os.PathLike | None) -> CifarData:
  """The images and labels of the .npz file at `path` (numpy.savez).

  It holds `ARRAYS`: uint8 images (N, H, W, C), the same (H, W, C) in both
  splits, and N integer labels from 0 per split; the classes are the largest
  training label + 1. Normalisation uses the per-channel mean and standard
  deviation of the training images; training crops at random from the image
  zero-padded by an eighth of its smaller side (as CIFAR's 4 of 32), and
  never flips it (a flip is wrong for digits or text).
  """
  expected = ('allowed: an .npz file (numpy.savez) holding uint8 train_images '
              'and test_images (N, H, W, C) and integer train_labels and '
              'test_labels (N,) from 0')
  if not path:
    raise ValueError("data_source='arrays' needs data_dir "
                     f'(--config.data_dir=FILE.npz); {expected}.')
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  try:
    with open(path, 'rb') as f:
      npz = np.load(f, allow_pickle=False)
      if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError('a single .npy array, not an .npz file')
      found = sorted(npz.files)
      arrays = {name: npz[name] for name in ARRAYS if name in found}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    why = (str(e).strip().splitlines() or [''])[0]
    raise DataNotFoundError(f'data_dir {path} cannot be read '
                            f'({type(e).__name__}: {why}); {expected}.'
                           ) from None
  for name in ARRAYS:
    if name not in arrays:
      raise DataNotFoundError(f'data_dir {path} has no array {name} (it has '
                              f'{", ".join(found) or "none"}); {expected}.')
  def refuse(name, what):
    a = arrays[name]
    raise ValueError(f'data_dir {path}: {name} is {a.dtype} {a.shape}; '
                     f'allowed: {what}.')
  train_shape = arrays['train_images'].shape[1:]
  for split in ('train', 'test'):
    images, labels = arrays[f'{split}_images'], arrays[f'{split}_labels']
    if (images.dtype != np.uint8 or images.ndim != 4 or not images.size or
        (split == 'test' and images.shape[1:] != train_shape)):
      refuse(f'{split}_images', 'uint8 (N, H, W, C), N, H, W, C >= 1' +
             (f', (H, W, C) = {train_shape} as train_images'
              if split == 'test' else ''))
    if (labels.shape != images.shape[:1] or labels.dtype == bool or
        not np.issubdtype(labels.dtype, np.integer)):
      refuse(f'{split}_labels', f'{images.shape[0]} integers (one per image '
             f'of {split}_images), shape ({images.shape[0]},)')
  num_classes = int(arrays['train_labels'].max()) + 1
  for name in ('train_labels', 'test_labels'):
    labels = arrays[name]
    if labels.min() < 0 or labels.max() >= num_classes:
      bad = labels[(labels < 0) | (labels >= num_classes)]
      refuse(name, f'labels in [0, {num_classes - 1}] (the classes are the '
             f'largest train label + 1); found {bad.size} outside, e.g. '
             f'{int(bad[0])}')
  train = arrays['train_images']
  pixels = train.reshape(-1, train.shape[-1])
  # A channel of one value has no spread to divide by: it is only centred.
  std = np.where(pixels.min(0) == pixels.max(0), 255.0,
                 pixels.std(0, dtype=np.float64))
  spec = DatasetSpec(
      'arrays', num_classes, tuple(train.shape[1:]), len(train),
      len(arrays['test_images']),
      tuple(float(m) / 255 for m in pixels.mean(0, dtype=np.float64)),
      tuple(float(s) / 255 for s in std),
      crop_padding=max(1, round(min(train.shape[1:3]) / 8)), flip=False)
  return _cifar_data(spec, {split: (arrays[f'{split}_images'],
                                    arrays[f'{split}_labels'])
                           for split in ('train', 'test')}, f'arrays {path}')


# ---------------------------------------------------------------------------
# Public API: host side.


def load(config) -> CifarData:
  """The data a train or sweep config asks for (train.py, sweep.py).

  Reads `config.dataset`, `config.data_source`, `config.data_dir` ('' for
  the source's default), `config.train_examples` (0: every training image;
  N > 0: the first N, in the order of the official files, which are
  shuffled; the test split stays whole) and `config.validation_examples`
  (0: no validation split, `data.validation` is None; V > 0: V of those
  training images become `data.validation` and are not trained on, see
  `hold_out_validation`). See `load_cifar`.
  """
  data = load_cifar(config.dataset, source=config.data_source,
                    data_dir=config.data_dir or None)
  data = first_train_examples(data, config.get('train_examples', 0))
  return hold_out_validation(data, config.get('validation_examples', 0))


def first_train_examples(data: CifarData, count: int) -> CifarData:
  """`data` with only its first `count` training examples (0: all).

  `count` is an integer >= 0, as configuration.validate checks.
  """
  available = data.train.num_examples
  if count == 0:
    return data
  if count > available:
    raise ValueError(
        f'train_examples={count} is not allowed: {data.source} has '
        f'{available} training images; allowed: 0 (all) to {available}.')
  train = Split(images=data.train.images[:count],
                labels=data.train.labels[:count])
  return dataclasses.replace(
      data, train=train,
      source=f'{data.source}, first {count} of {available} training images')


# The permutation that picks the validation images is drawn with this seed,
# not config.seed: every member of a sweep, whatever its seed, validates on
# the same images.
VALIDATION_SEED = 0


def hold_out_validation(data: CifarData, count: int) -> CifarData:
  """`data` with `count` of its training examples moved to `validation`.

  With N training examples, the held-out ones are those at the first
  `count` indices of numpy.random.default_rng(VALIDATION_SEED)
  .permutation(N), in increasing index order; the others stay in `train`
  in their order. The choice depends on N and `count` only. 0: `data` as
  is (no validation split). `count` is an integer >= 0, as
  configuration.validate checks; ValueError unless it is below N.
  """
  available = data.train.num_examples
  if count == 0:
    return data
  if count >= available:
    raise ValueError(
        f'validation_examples={count} is not allowed: {data.source} has '
        f'{available} training images; allowed: 0 (none) to {available - 1}.')
  held = np.zeros(available, bool)
  held[np.random.default_rng(VALIDATION_SEED).permutation(available)[:count]
      ] = True
  split = lambda rows: Split(images=data.train.images[rows],
                             labels=data.train.labels[rows])
  return dataclasses.replace(
      data, train=split(~held), validation=split(held),
      source=f'{data.source}, {count} of its {available} training images '
             'held out for validation')


def load_cifar(dataset: str, *, source: str = 'download',
               data_dir: str | os.PathLike | None = None,
               manual_dir: str | os.PathLike | None = None) -> CifarData:
  """Loads a whole CIFAR dataset into host memory.

  Args:
    dataset: 'cifar10' or 'cifar100' (CIFAR-100 uses the 100 fine labels).
    source: 'download' fetches the official python archive from the authors'
      site the first time (MD5-checked, training/download.py) and reads the
      cached copy; 'local' reads the canonical CIFAR python layout or the
      official python archive from `data_dir` (an archive whose MD5 is not
      the official one is used with one warning); 'tfds' reads the TFDS
      array_record data source (preparing it first when TensorFlow is
      installed); 'arrays' reads your own images from the .npz file
      `data_dir` instead of `dataset` (`load_arrays`).
    data_dir: for 'download', the cache directory (None:
      `download.default_cache_dir()`); for 'local', the dataset's python
      release (its spec's layout: the folder, the official archive, or a
      directory holding either); for 'tfds', TFDS's data_dir (None: TFDS's
      default). The python layout is pickled: only load files you trust.
    manual_dir: 'tfds' only: a directory holding the official *binary*
      archive (the layout's `tfds_archive`) for TFDS to prepare from without
      downloading (needs TensorFlow).

  Returns:
    CifarData with uint8 NHWC images and int32 labels.

  Raises:
    ValueError: unknown dataset/source, or data that is not CIFAR.
    DataNotFoundError: (a ValueError) the data is missing or incomplete.
    download.Interrupted: SIGTERM or SIGINT during the download (nothing
      kept).
  """
  _check_choice('dataset', dataset, DATASETS)
  _check_choice('source', source, SOURCES)
  if source != 'tfds' and manual_dir is not None:
    raise ValueError("manual_dir is only used with source='tfds'.")
  if source == 'arrays':
    return load_arrays(data_dir)
  loader = {'local': _load_local, 'download': _load_download}.get(source)
  if loader:
    return loader(SPECS[dataset], data_dir)
  return _load_tfds(SPECS[dataset], data_dir, manual_dir)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """Order of the training examples in `epoch`, the same on every host.

  Returns an int32 permutation of range(num_examples) that depends only on
  (seed, epoch, num_examples).
  """
  seed, epoch, num_examples = (operator.index(v) for v in
                               (seed, epoch, num_examples))
  if seed < 0 or epoch < 0 or num_examples < 0:
    raise ValueError(
        'seed, epoch and num_examples must be non-negative, got '
        f'{seed}, {epoch}, {num_examples}.')
  rng = np.random.default_rng([seed, epoch])
  return rng.permutation(num_examples).astype(np.int32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Number of full training batches in one epoch (the remainder is dropped)."""
  num_examples, batch_size = operator.index(num_examples), operator.index(batch_size)
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(
        f'batch_size {batch_size} is larger than the number of training '
        f'examples {num_examples}: an epoch would have no step.')
  return steps


def eval_batches(split: Split, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields the whole split once in order, in batches of exactly batch_size.

  Each batch is {'images': uint8 (B, H, W, C), 'labels': int32 (B,),
  'mask': float32 (B,)}; the last batch is padded with zero images and label
  0, whose mask is 0.
  """
  batch_size = operator.index(batch_size)
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  for start in range(0, len(split.images), batch_size):
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    pad = batch_size - len(images)
    mask = np.ones((batch_size,), np.float32)
    if pad:
      images = np.pad(images, [(0, pad)] + [(0, 0)] * (images.ndim - 1))
      labels = np.pad(labels, (0, pad))
      mask[-pad:] = 0.0
    yield {'images': images, 'labels': labels, 'mask': mask}


_FINGERPRINT_STRIDE = 12


def fingerprint(data: CifarData) -> dict:
  """The identity of `data`, for a workdir to record (its data.json).

  {'dataset', 'train_examples', 'test_examples', 'fingerprint'}, and
  'validation_examples' when `data` has a validation split: the fingerprint
  is a sha256 over, per split (train, test, then validation if any), its
  shape, all its labels and every 12th byte of every image. Any change to
  the number of examples, a label, the order, an image's sampled bytes or
  the validation split changes it; the same arrays from another path or
  source give the same one.
  """
  h = hashlib.sha256()
  splits = (data.train, data.test) + (
      () if data.validation is None else (data.validation,))
  for split in splits:
    images = np.ascontiguousarray(split.images).reshape(split.num_examples, -1)
    h.update(repr(split.images.shape).encode())
    h.update(np.ascontiguousarray(split.labels, dtype='<i4').tobytes())
    h.update(np.ascontiguousarray(images[:, ::_FINGERPRINT_STRIDE]).tobytes())
  identity = {'dataset': data.name,
              'train_examples': data.train.num_examples,
              'test_examples': data.test.num_examples,
              'fingerprint': f'sha256:{h.hexdigest()}'}
  if data.validation is not None:
    identity['validation_examples'] = data.validation.num_examples
  return identity
