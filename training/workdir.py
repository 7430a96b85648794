"""The run's directory: config.json, metrics files, checkpoints and its lock.

Layout (as big_vision / Flax examples): config.json (the full config,
written before training starts), metrics.jsonl (one JSON object per epoch),
metrics.csv (the same rows), data.json (the data trained on),
checkpoints/<step> (training/checkpoints.py), lock (held by the run).

Every file is replaced atomically (tmp file, then rename): a kill leaves the
old or the new version; a failed write (disk full) raises faults.WriteError
and leaves the old one.
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
from training import paths
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


def atomic_write(path: str, text: str, *, newline=None) -> None:
  """Replaces `path` by `text`; faults.WriteError (path intact) on failure."""
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=_TMP_PREFIX)
    # mkstemp makes 0600 files; give the mode open() would (0666 - umask),
    # the umask read by setting it, then putting it back.
    umask = os.umask(0o022)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
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


class RunLock:
  """One run per workdir: an exclusive flock on WORKDIR/lock.

  The kernel drops a flock when its process ends, however it ends, so a
  killed run never leaves the workdir locked. The file names the holder
  (pid, host, start time); a clean release empties it, so a name found in it
  when taking the lock is a run that was killed, reported as taken over.
  Multi-host: process 0 holds it, and tells the others whether it could.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir) if workdir else ''
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd = None

  def _refusal(self, holder: str) -> ValueError:
    return ValueError(
        f'workdir={self.workdir!r} is in use by another run '
        f'({holder.strip() or "holder unknown"}); allowed: one run per '
        'workdir: wait for it to end, or stop it (SIGTERM saves a checkpoint) '
        'and run this command again to resume.')

  def check_free(self) -> None:
    """ValueError if a live process holds the lock; creates nothing."""
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
    """Takes the lock (creating the workdir); ValueError if held."""
    error = None
    if jax.process_index() == 0:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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


# What a workdir holds (besides checkpoints/): each must be a file if there.
DATA_FILE = 'data.json'
_RUN_FILES = ('config.json', 'metrics.jsonl', 'metrics.csv', DATA_FILE,
              LOCK_FILE)
# Keys that say where the data is, not what it is: once a run recorded its
# data (data.json), the data's identity is compared, not its path.
DATA_LOCATION_KEYS = ('data_dir',)

_MOVE_AWAY = 'move it away, or use a new workdir'


def read_json(path: str):
  """The JSON value in `path`; ValueError naming the file and what is wrong."""
  if os.path.isdir(path):
    raise ValueError(f'{path} is a directory; allowed: the JSON file padax '
                     f'writes there: {_MOVE_AWAY}.')
  try:
    with open(path, encoding='utf-8') as f:
      return json.loads(f.read())
  except OSError as e:
    raise ValueError(f'{path} cannot be read ({e.strerror or e}); allowed: '
                     f'a readable file: fix its permissions, or '
                     f'{_MOVE_AWAY}.') from None
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text (byte {e.start}: {e.reason});'
                     f' allowed: the JSON padax writes: {_MOVE_AWAY}.'
                     ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e.msg} at line {e.lineno} '
                     f'column {e.colno}); allowed: the JSON padax writes: '
                     f'{_MOVE_AWAY}.') from None


def read_json_object(path: str) -> dict:
  value = read_json(path)
  if not isinstance(value, dict):
    raise ValueError(
        f'{path} holds a JSON {type(value).__name__} '
        f'({json.dumps(value)[:40]}), not an object; allowed: the JSON '
        f'object padax writes: {_MOVE_AWAY}.')
  return value


def read_rows(path: str) -> list:
  """The metrics rows of `path`: objects of epochs 1, 2, ... in order, each
  with its integer step. ValueError naming the file and line otherwise."""
  if not os.path.lexists(path):
    return []
  if os.path.isdir(path):
    raise ValueError(f'{path} is a directory; allowed: the metrics file padax '
                     f'writes: {_MOVE_AWAY}.')
  rows = []
  try:
    entries = records.read_json_lines(path)
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} cannot be read as text ({e}); allowed: the '
                     f'metrics file padax writes: {_MOVE_AWAY}.') from None
  except records.JsonLineError as e:
    raise ValueError(
        f'{path}: line {e.number} is not valid JSON ({e.error.msg} at column '
        f'{e.error.colno}: {e.line[:40]!r}); allowed: one JSON object per '
        f'epoch, as padax writes them: repair or remove the line, or '
        f'{_MOVE_AWAY}.') from None
  for number, line, row in entries:
    # type() is int: JSON's true and false are no epoch or step.
    if not (isinstance(row, dict) and
            all(type(row.get(k)) is int for k in ('epoch', 'step'))):
      raise ValueError(
          f'{path}: line {number} ({line[:40]}) is not a metrics row; '
          'allowed: a JSON object with an integer "epoch" and "step" (and '
          f'the columns {", ".join(records.COLUMNS[2:5])}, ...): repair or '
          f'remove the line, or {_MOVE_AWAY}.')
    if row['epoch'] != len(rows) + 1:
      raise ValueError(
          f'{path}: line {number} is the row of epoch {row["epoch"]}, where '
          f'epoch {len(rows) + 1} was due; allowed: the rows of epochs 1, 2, '
          f'... in order, as padax writes them: repair the file, or '
          f'{_MOVE_AWAY}.')
    rows.append(row)
  return rows


def _csv_epochs(path: str) -> int:
  """The number of epoch rows of a metrics.csv (ValueError if unreadable)."""
  if not os.path.lexists(path):
    return 0
  try:
    with open(path, newline='', encoding='utf-8') as f:
      return sum(1 for row in csv.DictReader(f) if row.get('epoch'))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f'{path} cannot be read as CSV ({e}); allowed: the '
                     f'metrics file padax writes: {_MOVE_AWAY}.') from None


def data_summary(identity: dict) -> str:
  return (f'{identity.get("dataset")}: {identity.get("train_examples")} train '
          f'and {identity.get("test_examples")} test examples, fingerprint '
          f'{str(identity.get("fingerprint"))[:19]}')


class Workdir:
  """Owns the files of one run. Nothing is written before `prepare()`."""

  def __init__(self, path: str, config: ml_collections.ConfigDict):
    self.given = path
    self.config = config
    # The metrics rows found by check().
    self.rows = []
    self._set_path(os.path.abspath(path) if path else '')

  def _set_path(self, path: str) -> None:
    self.path = path
    self.config_path = os.path.join(self.path, 'config.json')
    self.jsonl_path = os.path.join(self.path, 'metrics.jsonl')
    self.csv_path = os.path.join(self.path, 'metrics.csv')
    self.data_path = os.path.join(self.path, DATA_FILE)
    self.checkpoint_dir = os.path.join(self.path, 'checkpoints')

  def check(self, data_file: str = None) -> None:
    """Refuses a workdir that cannot be written, holds another experiment or
    another tool's files, or whose files padax cannot read (ValueError naming
    the file, what is wrong and what is allowed). Writes nothing.

    data_file: the data.json recording the run's data (default: its own; a
    sweep member's: the sweep's); where there is one, data_dir may change.
    """
    self._set_path(paths.check_output_dir(self.given))
    for name in _RUN_FILES:
      path = os.path.join(self.path, name)
      if os.path.lexists(path) and not os.path.isfile(path):
        kind = ('a directory' if os.path.isdir(path) else
                'a broken symlink' if os.path.islink(path) else
                'not a regular file')
        raise ValueError(f'{path} is {kind}; allowed: the file padax writes '
                         f'there: {_MOVE_AWAY}.')
    if os.path.lexists(self.checkpoint_dir):
      if not os.path.isdir(self.checkpoint_dir):
        raise ValueError(
            f'{self.checkpoint_dir} is not a directory; allowed: the '
            f'directory of the run\'s checkpoints: {_MOVE_AWAY}.')
      if not os.access(self.checkpoint_dir, os.W_OK | os.X_OK):
        raise ValueError(
            f'{self.checkpoint_dir} is not writable; allowed: a directory '
            'this user can write to: fix its permissions.')
    lock = os.path.join(self.path, LOCK_FILE)
    if os.path.isfile(lock) and not os.access(lock, os.R_OK | os.W_OK):
      raise ValueError(f'{lock} is not writable; allowed: a file this user '
                       'can write to: fix its permissions or remove it.')
    if not os.path.lexists(self.config_path):
      found = [n for n in ('metrics.jsonl', 'metrics.csv', DATA_FILE,
                           'checkpoints', 'members', 'summary.json')
               if os.path.lexists(os.path.join(self.path, n))]
      if found:
        raise ValueError(
            f'workdir={self.path!r} holds {", ".join(found)} but no '
            'config.json: it is not a padax workdir (another tool\'s?), or '
            'its config.json was removed; allowed: a new or empty directory, '
            'or a padax workdir: use another workdir.')
      return
    stored = _json_flat(read_json_object(self.config_path))
    requested = _json_flat(self.config)
    ignore = ()
    data_file = data_file or self.data_path
    if os.path.lexists(data_file):
      read_json_object(data_file)
      ignore = DATA_LOCATION_KEYS
    a, b = {**ADDED_KEYS, **stored}, dict(requested)
    for flat in (a, b):
      # The same directory, however spelled (trailing /, relative, ~).
      if flat.get('data_dir'):
        flat['data_dir'] = os.path.realpath(
            os.path.expanduser(flat['data_dir']))
    # Keys whose values differ, but for the run length and `ignore`'s (a
    # dotted key or its leaf).
    conflicts = sorted(k for k in set(a) | set(b)
                       if k not in RUN_LENGTH_KEYS and
                       k.rpartition('.')[2] not in ignore and
                       a.get(k) != b.get(k))
    if conflicts:
      details = '; '.join(f'{k}: stored {stored.get(k)!r}, requested '
                          f'{requested.get(k)!r}' for k in conflicts)
      raise ValueError(
          f'workdir={self.path!r} holds a run with a different config '
          f'({details}). Only {", ".join(RUN_LENGTH_KEYS)} may change on '
          'resume; use a new workdir for a new experiment.')
    self.rows = read_rows(self.jsonl_path)
    csv_rows = _csv_epochs(self.csv_path)
    if csv_rows > len(self.rows):
      raise ValueError(
          f'{self.csv_path} has the rows of {csv_rows} epochs but '
          f'{self.jsonl_path} only {len(self.rows)}: resuming would overwrite '
          f'the rows of epochs {len(self.rows) + 1}-{csv_rows}; allowed: '
          'restore metrics.jsonl, or move both metrics files (and '
          'checkpoints/) away to start over, or use a new workdir.')

  def check_data(self, identity: dict, where: str = '') -> None:
    """ValueError unless `identity` (input_pipeline.fingerprint) is the data
    recorded in data.json (if any); `where` says where the data is now."""
    if not os.path.isfile(self.data_path):
      return
    stored = read_json_object(self.data_path)
    keys = sorted(set(stored) | set(identity))
    if any(stored.get(k) != identity.get(k) for k in keys):
      raise ValueError(
          f'workdir={self.path!r} was trained on other data: {self.data_path} '
          f'records {data_summary(stored)}; the data now{where} has '
          f'{data_summary(identity)}; allowed: the data the run was trained '
          'on (the same data at a path spelled differently is fine), or a '
          'new workdir for other data.')

  def prepare(self, data_identity: dict = None) -> None:
    """Writes config.json (when new or changed) and, given the data's
    identity, data.json; removes tmp files of writes a kill interrupted."""
    if jax.process_index() == 0:
      os.makedirs(self.path, exist_ok=True)
      for name in os.listdir(self.path):
        if name.startswith(_TMP_PREFIX):
          os.remove(os.path.join(self.path, name))
      write_json_if_changed(self.config_path, self.config.to_dict())
      if data_identity is not None:
        write_json_if_changed(self.data_path, data_identity)

  def checkpoint_store(self, keep: int) -> checkpoints.CheckpointStore:
    return checkpoints.CheckpointStore(self.checkpoint_dir, keep)

  def read_metrics(self) -> list:
    return read_rows(self.jsonl_path)

  def write_metrics(self, rows: list) -> None:
    """Rewrites both metrics files with `rows` (atomically, from process 0)."""
    if jax.process_index() != 0:
      return
    atomic_write(self.jsonl_path,
                  ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=records.COLUMNS,
                            extrasaction='ignore')
    writer.writeheader()
    writer.writerows(records.csv_row(r) for r in rows)
    atomic_write(self.csv_path, table.getvalue(), newline='')



def write_json_if_changed(path: str, value) -> None:
  """atomic_write of `value` as JSON, unless `path` already holds it."""
  try:
    with open(path, encoding='utf-8') as f:
      if json.load(f) == json.loads(json.dumps(value)):
        return
  except (OSError, ValueError):
    pass
  atomic_write(path, json.dumps(value, indent=2, sort_keys=True))
