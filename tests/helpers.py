"""Helpers the tests share (tests import this, never another test file)."""

import hashlib
import os
import pickle
import socket

import numpy as np

from training import records


def free_port() -> int:
  """A TCP port on localhost free now (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def without_timing(rows):
  """Metrics rows without the columns that measure the machine."""
  return [{k: v for k, v in r.items() if k not in records.TIMING_COLUMNS}
          for r in rows]


def snapshot(path):
  """Every file and folder under `path`: mtime, and a digest of each file."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(root, name)
      st = os.lstat(full)
      digest = None
      if os.path.islink(full):
        digest = 'symlink to ' + os.readlink(full)
      elif name in files:
        with open(full, 'rb') as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      out[os.path.relpath(full, path)] = (st.st_mtime_ns, st.st_size,
                                          st.st_mode, digest)
  out['.'] = os.stat(path).st_mtime_ns
  return out


CIFAR10_TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))


def write_cifar10(folder, num_train, num_test, seed=0, *, change=None):
  """A small CIFAR-10 in the canonical python layout: `folder`/
  cifar-10-batches-py/{data_batch_1..5,test_batch}, random images and labels
  drawn from `seed`. change(dict of file name: batch dict) may alter the
  batches before they are pickled. Returns `folder`."""
  rng = np.random.default_rng(seed)
  layout = os.path.join(folder, 'cifar-10-batches-py')
  os.makedirs(layout, exist_ok=True)
  sizes = [len(part) for part in np.array_split(np.arange(num_train), 5)]
  batches = {}
  for name, n in [*zip(CIFAR10_TRAIN_FILES, sizes), ('test_batch', num_test)]:
    batches[name] = {b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     b'labels': [int(v) for v in rng.integers(0, 10, n)]}
  if change is not None:
    change(batches)
  for name, batch in batches.items():
    with open(os.path.join(layout, name), 'wb') as f:
      pickle.dump(batch, f)
  return folder
