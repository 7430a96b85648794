"""The run's directory: config.json, metrics files, checkpoints and its lock.

Layout (as big_vision / Flax examples):
  config.json        the full config, written before training starts
  metrics.jsonl      one JSON object per epoch
  metrics.csv        the same rows as CSV
  checkpoints/<step> Orbax checkpoints of the whole TrainState
                     (training/checkpoints.py)
  lock               held (flock) by the run using the workdir

Every file is replaced atomically (written to a tmp file, then renamed), so a
run killed at any moment leaves the old or the new version, never half of
one; a write that fails (disk full) raises faults.WriteError and leaves the
old version.
"""

import csv
import datetime
import fcntl
import io
import json
import logging
import os
import socket
import sys
import tempfile

import jax
from jax.experimental import multihost_utils
import ml_collections

from training import checkpoints
from training import faults
from training import records

# Keys that may differ between a stored config and a resumed run's: extending
# or shortening a run is allowed, anything else is another experiment.
RUN_LENGTH_KEYS = ('num_epochs',)

# Keys added to the config after workdirs were written without them: a stored
# config that lacks one holds a run made with its value here.
ADDED_KEYS = {'nonfinite_policy': 'stop', 'max_consecutive_skips': 10}

LOCK_FILE = 'lock'
_TMP_PREFIX = '.tmp-'


def _json_flat(config) -> dict:
  """A config as flat JSON values (tuples as lists), as config.json holds it."""
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  return records.flatten(json.loads(json.dumps(config)))


def config_conflicts(stored: dict, requested: dict) -> list:
  """Keys (dotted) whose values differ, ignoring the run length."""
  a, b = {**ADDED_KEYS, **_json_flat(stored)}, _json_flat(requested)
  return sorted(k for k in set(a) | set(b)
                if k not in RUN_LENGTH_KEYS and a.get(k) != b.get(k))


def atomic_write(path: str, text: str, *, newline=None) -> None:
  """Replaces `path` by `text`; faults.WriteError (path intact) on failure."""
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=_TMP_PREFIX)
    with os.fdopen(fd, 'w', newline=newline) as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    raise faults.WriteError(
        f'{path} could not be written ({e.strerror or e}); its previous '
        'version is intact. Free space or fix the file system, then run the '
        'same command again to resume.') from None


def _why_not_writable(path: str) -> str:
  try:
    if os.statvfs(path).f_flag & os.ST_RDONLY:
      return 'a read-only file system'
  except OSError:
    pass
  return 'permission denied'


def check_writable(path: str, key: str = 'workdir') -> None:
  """ValueError unless `path` can be created or written by this process."""
  path = os.path.abspath(path)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(
        f'{key}={path!r} cannot be created: {existing} is a file; allowed: a '
        'directory, existing or not, that this user can write to.')
  for directory in (existing, os.path.join(path, 'checkpoints')):
    if os.path.isdir(directory) and not os.access(directory,
                                                  os.W_OK | os.X_OK):
      raise ValueError(
          f'{key}={path!r} is not writable ({directory}: '
          f'{_why_not_writable(directory)}); allowed: a directory, existing '
          'or not, that this user can write to.')


class WorkdirInUse(ValueError):
  """Another live process holds the workdir's lock."""


class RunLock:
  """One run per workdir: an exclusive flock on WORKDIR/lock.

  The kernel drops a flock when its process ends, however it ends, so a
  killed run never leaves the workdir locked. The file names the holder
  (pid, host, start time); a clean release empties it, so a name found in it
  when taking the lock is a run that was killed, reported as taken over.
  Multi-host: process 0 holds it, and tells the others whether it could.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd = None

  def _refusal(self, holder: str) -> WorkdirInUse:
    return WorkdirInUse(
        f'workdir={self.workdir!r} is in use by another run '
        f'({holder.strip() or "holder unknown"}); allowed: one run per '
        'workdir: wait for it to end, or stop it (SIGTERM saves a checkpoint) '
        'and run this command again to resume.')

  def check_free(self) -> None:
    """WorkdirInUse if a live process holds the lock; creates nothing."""
    if jax.process_index() != 0 or not os.path.exists(self.path):
      return
    fd = os.open(self.path, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      raise self._refusal(os.pread(fd, 4096, 0).decode(errors='replace')
                         ) from None
    finally:
      os.close(fd)

  def acquire(self) -> None:
    """Takes the lock (creating the workdir); WorkdirInUse if held."""
    error = None
    if jax.process_index() == 0:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        error = self._refusal(os.pread(fd, 4096, 0).decode(errors='replace'))
        os.close(fd)
      else:
        self._fd = fd
        previous = os.pread(fd, 4096, 0).decode(errors='replace').strip()
        if previous:
          logging.warning('Took over the lock of %s from a run that ended '
                          'without releasing it (killed?): %s', self.workdir,
                          previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (
            f'pid {os.getpid()} on {socket.gethostname()} since '
            f'{datetime.datetime.now().isoformat(timespec="seconds")}: '
            f'{" ".join(sys.argv)[:1000]}\n').encode(), 0)
        os.fsync(fd)
    if jax.process_count() > 1:
      held = bool(multihost_utils.broadcast_one_to_all(error is None))
      if not held and error is None:
        error = self._refusal('see process 0')
    if error is not None:
      raise error

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
    return False


class Workdir:
  """Owns the files of one run. Nothing is written before `prepare()`."""

  def __init__(self, path: str, config: ml_collections.ConfigDict):
    self.path = os.path.abspath(path)
    self.config = config
    self.config_path = os.path.join(self.path, 'config.json')
    self.jsonl_path = os.path.join(self.path, 'metrics.jsonl')
    self.csv_path = os.path.join(self.path, 'metrics.csv')
    self.checkpoint_dir = os.path.join(self.path, 'checkpoints')

  def check(self) -> None:
    """Refuses a workdir that cannot be written or holds another experiment."""
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ValueError(f'workdir={self.path!r} exists and is not a directory; '
                       'allowed: a directory, existing or not.')
    check_writable(self.path)
    if os.path.exists(self.config_path):
      with open(self.config_path) as f:
        stored = json.load(f)
      conflicts = config_conflicts(stored, self.config.to_dict())
      if conflicts:
        details = '; '.join(
            f'{k}: stored {_json_flat(stored).get(k)!r}, requested '
            f'{_json_flat(self.config).get(k)!r}' for k in conflicts)
        raise ValueError(
            f'workdir={self.path!r} holds a run with a different config '
            f'({details}). Only {", ".join(RUN_LENGTH_KEYS)} may change on '
            'resume; use a new workdir for a new experiment.')

  def prepare(self) -> None:
    """Writes config.json; removes tmp files of writes a kill interrupted."""
    if jax.process_index() == 0:
      os.makedirs(self.path, exist_ok=True)
      for name in os.listdir(self.path):
        if name.startswith(_TMP_PREFIX):
          os.remove(os.path.join(self.path, name))
      atomic_write(self.config_path,
                    json.dumps(self.config.to_dict(), indent=2, sort_keys=True))

  def checkpoint_store(self, keep: int) -> checkpoints.CheckpointStore:
    return checkpoints.CheckpointStore(self.checkpoint_dir, keep)

  def read_metrics(self) -> list:
    if not os.path.exists(self.jsonl_path):
      return []
    with open(self.jsonl_path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def write_metrics(self, rows: list) -> None:
    """Rewrites both metrics files with `rows` (atomically, from process 0)."""
    if jax.process_index() != 0:
      return
    atomic_write(self.jsonl_path,
                  ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=records.COLUMNS)
    writer.writeheader()
    for r in rows:
      writer.writerow({k: r.get(k) for k in records.COLUMNS})
    atomic_write(self.csv_path, table.getvalue(), newline='')
