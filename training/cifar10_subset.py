"""Builds the folder of genuine CIFAR-10 images that a few tests read.

  python -m training.cifar10_subset DIR [--source=PATH] [--examples=1017]

then `export PADAX_TEST_CIFAR10_SUBSET=DIR` before running the tests.

DIR receives the first N images (--examples) of each of the six batch files
of the official CIFAR-10 python release, in their order and with their
labels, in two layouts:

  DIR/cifar-10-batches-py/   the official pickled batches, cut to N images,
                             and batches.meta (the class names)
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
import tempfile

import numpy as np

from training import download
from training import input_pipeline

SPEC = input_pipeline.CIFAR10
FOLDER = SPEC.layout.folder
BIN_FOLDER = 'cifar-10-batches-bin'
META = 'batches.meta'
LABEL_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
               'horse', 'ship', 'truck')
# The tests' expectations (tests/test_input_pipeline.py, the behaviour
# fixture) are of the first 1017 images of each file.
TEST_EXAMPLES = 1017


class SourceError(ValueError):
  """The source is not the CIFAR-10 python release, or too short."""


def cut_batch(batch: dict, examples: int, where: str) -> dict:
  """The batch file's dict with its first `examples` images: `data` and
  every per-image list (labels, filenames) cut, other entries kept."""
  count = len(input_pipeline.batch_arrays(batch, where, SPEC)[1])
  if count < examples:
    raise SourceError(f'--examples={examples}: {where} holds only {count} '
                      f'images; allowed: 1 to {count}.')
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
  source = os.path.abspath(os.path.expanduser(source))
  found = input_pipeline.locate(source, SPEC.layout)
  if found is None:
    raise SourceError(
        f'--source={source!r} holds no CIFAR-10 python release; allowed: the '
        f'official {SPEC.layout.archive}, a folder holding it or its '
        f'{FOLDER}/, or that folder itself (the main job downloads it to '
        f'{os.path.join(download.default_cache_dir(), FOLDER)}).')
  batches = {name: cut_batch(batch, examples, where) for name, (where, batch)
             in input_pipeline.read_batches(*found, SPEC.layout).items()}
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
      pickle.dump({b'num_cases_per_batch': 10000,
                   b'label_names': [name.encode() for name in LABEL_NAMES],
                   b'num_vis': int(np.prod(SPEC.image_shape))}, f)
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
      help=f'the official {SPEC.layout.archive}, a folder holding it or {FOLDER}/, or '
      'that folder (default: the main job\'s download, %(default)s)')
  parser.add_argument('--examples', type=int, default=TEST_EXAMPLES,
                      help='images taken from the start of each batch file '
                      '(default: %(default)s, what the tests expect)')
  args = parser.parse_args(argv)
  try:
    out_dir = build(args.dir, args.source, args.examples)
  except ValueError as e:  # SourceError, or what the reader refuses.
    parser.error(str(e))
  print(f'Wrote {os.path.join(out_dir, FOLDER)} and '
        f'{os.path.join(out_dir, BIN_FOLDER)} ({args.examples} images per '
        f'batch file).\nexport PADAX_TEST_CIFAR10_SUBSET={out_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
