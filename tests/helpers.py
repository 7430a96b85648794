"""Helpers the tests share (tests import this, never another test file)."""

import hashlib
import os

from training import records


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
      st = os.stat(full)
      digest = None
      if name in files:
        with open(full, 'rb') as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      out[os.path.relpath(full, path)] = (st.st_mtime_ns, st.st_size, digest)
  out['.'] = os.stat(path).st_mtime_ns
  return out
