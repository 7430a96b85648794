"""Builds the folder of genuine CIFAR-10 images that a few tests read.

  python -m training.cifar10_subset DIR [--source=PATH] [--examples=1017]

then `export PADAX_TEST_CIFAR10_SUBSET=DIR` before running the tests.

DIR receives the first N images (--examples) of each of the six batch files
of the official CIFAR-10 python release, in their order and with their
labels, in two layouts:

  DIR/cifar-10-batches-py/   the official pickled batches, cut to N images
                             (and batches.meta)
  DIR/cifar-10-batches-bin/  the official binary layout of the same images:
                             data_batch_1.bin ... data_batch_5.bin and
                             test_batch.bin hold N records of one label byte
                             and 3072 pixel bytes (the python layout's row:
                             the R, G, B planes, row-major), and
                             batches.meta.txt the class names, one a line

The source is the CIFAR-10 the main job downloaded
(~/.cache/padax/datasets/cifar-10-batches-py/, training/download.py) or
--source: the official cifar-10-python.tar.gz, a folder holding it or its
cifar-10-batches-py/, or that folder itself. The default N, 1017, is what
the tests expect (5085 training and 1017 test images). DIR's two folders
must not exist yet; they appear complete or not at all. The python layout is
pickled: only read files you trust.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tarfile
import tempfile

import numpy as np

from training import download

FOLDER = 'cifar-10-batches-py'
BIN_FOLDER = 'cifar-10-batches-bin'
ARCHIVE = 'cifar-10-python.tar.gz'
BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6)) + ('test_batch',)
META = 'batches.meta'
LABEL_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
               'horse', 'ship', 'truck')
# The tests' expectations (tests/test_input_pipeline.py, the behaviour
# fixture) are of the first 1017 images of each file.
TEST_EXAMPLES = 1017
IMAGE_BYTES = 3 * 32 * 32


class SourceError(ValueError):
  """The source is not the CIFAR-10 python release, or too short."""


def locate_source(path: str) -> tuple[str, str]:
  """('folder' | 'archive', location) of the python release at `path`."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(path):
    return 'archive', path
  if os.path.isfile(os.path.join(path, BATCHES[0])):
    return 'folder', path
  if os.path.isdir(os.path.join(path, FOLDER)):
    return 'folder', os.path.join(path, FOLDER)
  if os.path.isfile(os.path.join(path, ARCHIVE)):
    return 'archive', os.path.join(path, ARCHIVE)
  raise SourceError(
      f'--source={path!r} holds no CIFAR-10 python release; allowed: the '
      f'official {ARCHIVE}, a folder holding it or its {FOLDER}/, or that '
      'folder itself (the main job downloads it to '
      f'{os.path.join(download.default_cache_dir(), FOLDER)}).')


def read_source(kind: str, location: str) -> dict[str, bytes]:
  """{file name: bytes} of the six batch files and, where present,
  batches.meta (the main job's cache does not keep it)."""
  wanted = BATCHES + (META,)
  if kind == 'folder':
    files = {}
    for name in wanted:
      path = os.path.join(location, name)
      if os.path.isfile(path):
        with open(path, 'rb') as f:
          files[name] = f.read()
  else:
    try:
      files = {name: f.read()
               for name, f in download.archive_files(location, FOLDER, wanted)}
    except (OSError, EOFError, tarfile.TarError) as e:
      raise SourceError(f'--source={location!r} is not a readable {ARCHIVE} '
                        f'({type(e).__name__}: {e}).') from None
  missing = [n for n in BATCHES if n not in files]
  if missing:
    raise SourceError(f'--source={location!r} lacks {", ".join(missing)} of '
                      f'{FOLDER}/; allowed: the complete python release.')
  return files


def cut_batch(raw: bytes, examples: int, where: str) -> dict:
  """The batch file's dict with its first `examples` images: `data` and
  every per-image list (labels, filenames) cut, other entries kept."""
  try:
    batch = pickle.loads(raw, encoding='bytes')
  except Exception:  # pylint: disable=broad-except
    batch = None  # pickle raises many different exception types.
  data = np.asarray(batch.get(b'data')) if isinstance(batch, dict) else None
  if (data is None or data.dtype != np.uint8 or data.ndim != 2 or
      data.shape[1] != IMAGE_BYTES):
    raise SourceError(f'{where} is not a CIFAR-10 python batch file '
                      "(expected a dict whose b'data' is uint8 (N, 3072)).")
  count = data.shape[0]
  if count < examples:
    raise SourceError(f'--examples={examples}: {where} holds only {count} '
                      f'images; allowed: 1 to {count}.')
  labels = np.asarray(batch.get(b'labels', []))
  if (labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer)
      or labels.min() < 0 or labels.max() > 9):
    raise SourceError(f"{where}: b'labels' is not {count} labels in 0..9.")
  return {key: value[:examples]
          if hasattr(value, '__len__') and not isinstance(value, bytes)
          and len(value) == count else value
          for key, value in batch.items()}


def binary_records(batch: dict) -> bytes:
  """The official binary layout of a (cut) python batch: per image its label
  byte, then its 3072 pixel bytes as in the python layout's row."""
  labels = np.asarray(batch[b'labels'], dtype=np.uint8)[:, None]
  return np.concatenate([labels, batch[b'data']], axis=1).tobytes()


def build(out_dir: str, source: str, examples: int = TEST_EXAMPLES) -> str:
  """Writes out_dir/cifar-10-batches-py/ and out_dir/cifar-10-batches-bin/;
  returns out_dir. Everything is read and checked before anything is
  written; both folders are moved into place at the end."""
  if examples < 1:
    raise SourceError(f'--examples={examples}; allowed: a positive number of '
                      'images per batch file.')
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  for folder in (FOLDER, BIN_FOLDER):
    if os.path.lexists(os.path.join(out_dir, folder)):
      raise SourceError(f'{os.path.join(out_dir, folder)} exists; allowed: '
                        'an output folder without it (nothing is replaced).')
  kind, location = locate_source(source)
  files = read_source(kind, location)
  batches = {name: cut_batch(files[name], examples,
                             f'{location}:{name}' if kind == 'archive'
                             else os.path.join(location, name))
             for name in BATCHES}
  meta = files.get(META) or pickle.dumps(
      {b'num_cases_per_batch': 10000,
       b'label_names': [name.encode() for name in LABEL_NAMES],
       b'num_vis': IMAGE_BYTES})
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix='.cifar10-subset.partial-',
                                   dir=out_dir) as staging:
    python_dir = os.path.join(staging, FOLDER)
    bin_dir = os.path.join(staging, BIN_FOLDER)
    os.mkdir(python_dir)
    os.mkdir(bin_dir)
    for name, batch in batches.items():
      with open(os.path.join(python_dir, name), 'wb') as f:
        pickle.dump(batch, f)
      with open(os.path.join(bin_dir, f'{name}.bin'), 'wb') as f:
        f.write(binary_records(batch))
    with open(os.path.join(python_dir, META), 'wb') as f:
      f.write(meta)
    with open(os.path.join(bin_dir, 'batches.meta.txt'), 'w',
              encoding='ascii', newline='\n') as f:
      f.write(''.join(name + '\n' for name in LABEL_NAMES))
    os.rename(python_dir, os.path.join(out_dir, FOLDER))
    os.rename(bin_dir, os.path.join(out_dir, BIN_FOLDER))
  return out_dir


class _OneLineErrors(argparse.ArgumentParser):

  def error(self, message):
    self.exit(2, f'error: {message}\n')


def main(argv=None) -> int:
  parser = _OneLineErrors(
      prog='python -m training.cifar10_subset',
      description=__doc__.split('\n\n', 1)[0],
      epilog='Then: export PADAX_TEST_CIFAR10_SUBSET=DIR')
  parser.add_argument('dir', metavar='DIR', help='the folder to write into')
  parser.add_argument(
      '--source', default=download.default_cache_dir(),
      help=f'the official {ARCHIVE}, a folder holding it or {FOLDER}/, or '
      'that folder (default: the main job\'s download, %(default)s)')
  parser.add_argument('--examples', type=int, default=TEST_EXAMPLES,
                      help='images taken from the start of each batch file '
                      '(default: %(default)s, what the tests expect)')
  args = parser.parse_args(argv)
  try:
    out_dir = build(args.dir, args.source, args.examples)
  except SourceError as e:
    parser.error(str(e))
  print(f'Wrote {os.path.join(out_dir, FOLDER)} and '
        f'{os.path.join(out_dir, BIN_FOLDER)} ({args.examples} images per '
        f'batch file).\nexport PADAX_TEST_CIFAR10_SUBSET={out_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
