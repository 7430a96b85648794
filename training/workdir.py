"""The run's directory: config.json, metrics files, checkpoints and its lock.

Layout (as big_vision / Flax examples): config.json (the full config,
written before training starts), metrics.jsonl (one JSON object per epoch),
metrics.csv (the same rows), data.json (the data trained on),
checkpoints/<step> (training/checkpoints.py), lock (held by the run).

Every file is replaced atomically (tmp file, then rename): a kill leaves the
old or the new version; a failed write (disk full) raises faults.WriteError
and leaves the old one.
"""

import contextlib
import csv
import datetime
import errno
import fcntl
import io
import json
import logging
import os
import re
import secrets
import socket
import stat
import struct
import sys

import jax
from jax.experimental import multihost_utils
import ml_collections

from training import faults
from training import paths
from training import records

# Keys that may differ between a stored config and a resumed run's: extending
# or shortening a run is allowed, anything else is another experiment.
RUN_LENGTH_KEYS = ('num_epochs',)

# Keys added to the config after workdirs were written without them: a stored
# config that lacks one holds a run made with its value here.
ADDED_KEYS = {'nonfinite_policy': 'stop', 'max_consecutive_skips': 10,
              'validation_examples': 0}

LOCK_FILE = 'lock'
# Tmp files of atomic_write: only names of this pattern are ever removed.
_TMP_PREFIX = '.tmp-padax-'
_TMP_NAME = re.compile(r'^\.tmp-padax-[0-9a-f]{16}$')
# The record a run writes into its lock: 'padax lock: pid ...'; a lock of
# before (no 'padax lock: ') is recognised too.
_LOCK_HEADER = 'padax lock: '
_LOCK_RECORD = re.compile(r'^(padax lock: )?pid \d+ on \S+ since \S+: ')
# Opening a file padax writes never follows a symlink, nor blocks on a FIFO.
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _json_flat(config) -> dict:
  """A config as flat JSON values (tuples as lists), as config.json holds it."""
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  return records.flatten(json.loads(json.dumps(config)))


def _write_error(path: str, e: OSError) -> faults.WriteError:
  return faults.WriteError(
      f'{path} could not be written ({e.strerror or e}); its previous '
      'version is intact. Free space or fix the file system, then run the '
      'same command again to resume.')


def atomic_write(path: str, text: str, *, newline=None) -> None:
  """Replaces `path` by `text`; faults.WriteError (path intact) on failure.

  The tmp file is created anew (O_EXCL, never through a symlink, mode 0666 &
  ~umask); a symlink at `path` is refused (ValueError), not replaced.
  """
  if os.path.islink(path):
    raise ValueError(f'{path} is a symlink (to {os.readlink(path)!r}); '
                     f'allowed: the file padax writes there: {_MOVE_AWAY}.')
  tmp = os.path.join(os.path.dirname(path),
                     _TMP_PREFIX + secrets.token_hex(8))
  created = False
  try:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW,
                 0o666)
    created = True
    with os.fdopen(fd, 'w', newline=newline, encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    if created:
      with contextlib.suppress(OSError):
        os.remove(tmp)
    raise _write_error(path, e) from None


def is_padax_lock(text: str) -> bool:
  """Whether `text` (a lock file's content) is a record a run wrote."""
  return bool(_LOCK_RECORD.match(text))


class RunLock:
  """One run per workdir: an exclusive flock on WORKDIR/lock.

  The kernel drops a flock when its process ends, however it ends, so a
  killed run never leaves the workdir locked. The file names the holder
  ('padax lock: pid, host, start time, command'); a clean release empties
  it, so a record found in it when taking the lock is a run that was killed,
  reported as taken over. A lock file that holds anything else, is a
  symlink or not a regular file was not written by padax: refused, its
  content neither shown nor changed. A run that fails before writing its
  config.json removes the lock file (and the directories) it created.
  Multi-host: process 0 holds it, and tells the others whether it could.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir) if workdir else ''
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd = None
    self._created = []  # Directories, then the lock file, this run created.

  def _refusal(self, holder: str) -> ValueError:
    return ValueError(
        f'workdir={self.workdir!r} is in use by another run '
        f'({holder.strip() or "holder unknown"}); allowed: one run per '
        'workdir: wait for it to end, or stop it (SIGTERM saves a checkpoint) '
        'and run this command again to resume.')

  def _holder(self, fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode(errors='replace').strip()
    # Only a record padax wrote is shown.
    return text[len(_LOCK_HEADER):] if text.startswith(_LOCK_HEADER) else (
        text if is_padax_lock(text) else '')

  def check_free(self) -> None:
    """ValueError if a live process holds the lock; creates nothing."""
    if jax.process_index() != 0:
      return
    try:
      fd = os.open(self.path, os.O_RDONLY | _NO_FOLLOW)
    except OSError:
      return  # None, or not a file padax can open: Workdir.check says so.
    try:
      if not stat.S_ISREG(os.fstat(fd).st_mode):
        return
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      raise self._refusal(self._holder(fd)) from None
    finally:
      os.close(fd)

  def _open(self) -> int:
    """The lock file, opened (created if missing) without following a
    symlink; ValueError if it is not a lock padax wrote."""
    missing = []
    path = self.workdir
    while not os.path.lexists(path):
      missing.append(path)
      path = os.path.dirname(path)
    if not os.path.lexists(self.path):
      # A full disk is found before anything is created (a file system
      # with no free block would take the empty lock file, then fail).
      space = os.statvfs(path)
      if (space.f_bfree if os.geteuid() == 0 else space.f_bavail) == 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    for directory in reversed(missing):
      os.mkdir(directory)
      self._created.append(directory)
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NO_FOLLOW,
                   0o666)
      self._created.append(self.path)
      return fd
    except FileExistsError:
      pass
    try:
      fd = os.open(self.path, os.O_RDWR | _NO_FOLLOW)
    except OSError:
      problem = lock_file_problem(self.path, self.workdir)
      if problem:
        raise ValueError(problem) from None
      raise
    problem = lock_file_problem(self.path, self.workdir, fd=fd)
    if problem:
      os.close(fd)
      raise ValueError(problem)
    return fd

  def _undo_created(self) -> None:
    """Removes the lock file and directories this run created, while the
    run has written nothing else (no config.json)."""
    if os.path.lexists(os.path.join(self.workdir, 'config.json')):
      return
    for path in reversed(self._created):
      with contextlib.suppress(OSError):
        if path == self.path:
          os.remove(path)
        else:
          os.rmdir(path)  # Only if empty.
    self._created = []

  def acquire(self) -> None:
    """Takes the lock (creating the workdir); ValueError if held or not
    padax's, faults.WriteError if it cannot be written (nothing left)."""
    error = None
    if jax.process_index() == 0:
      fd = None
      try:
        fd = self._open()
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
          error = self._refusal(self._holder(fd))
        else:
          previous = self._holder(fd)
          if previous:
            logging.warning('Took over the lock of %s from a run that ended '
                            'without releasing it (killed?): %s',
                            self.workdir, previous)
          os.ftruncate(fd, 0)
          os.pwrite(fd, (
              f'{_LOCK_HEADER}pid {os.getpid()} on {socket.gethostname()} '
              f'since {datetime.datetime.now().isoformat(timespec="seconds")}'
              f': {" ".join(sys.argv)[:1000]}\n').encode(), 0)
          os.fsync(fd)
          self._fd, fd = fd, None
      except ValueError as e:
        error = e
      except OSError as e:
        error = faults.WriteError(
            f'{self.path} could not be written ({e.strerror or e}); the run '
            'did not start and nothing was written. Free space or fix the '
            'file system, then run the same command again.')
      finally:
        if fd is not None:
          os.close(fd)
      if error is not None:
        self._undo_created()
    if jax.process_count() > 1:
      held = bool(multihost_utils.broadcast_one_to_all(error is None))
      if not held and error is None:
        error = self._refusal('see process 0')
    if error is not None:
      raise error

  def release(self) -> None:
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)
      except OSError:
        pass  # The kernel drops the flock anyway; the next run takes over.
      self._undo_created()
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
    return False


def lock_file_problem(path: str, workdir: str, fd: int = None) -> str:
  """Why the lock file `path` was not written by padax ('' if it was, or
  is missing). Its content is never quoted."""
  if not os.path.lexists(path):
    return ''
  allowed = f'allowed: the lock file padax writes there: {_MOVE_AWAY}'
  if os.path.islink(path):
    return (f'{path} is a symlink (to {os.readlink(path)!r}); padax does not '
            f'write through one; {allowed}.')
  close = fd is None
  try:
    if fd is None:
      fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)
    mode = os.fstat(fd).st_mode
    text = os.pread(fd, 4096, 0).decode(errors='replace').strip() if (
        stat.S_ISREG(mode)) else ''
    held = False
    if stat.S_ISREG(mode) and not text:
      # A run writing its record this instant: RunLock says it is in use.
      try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
      except BlockingIOError:
        held = True
  except OSError as e:
    return (f'{path} cannot be read ({e.strerror or e}); allowed: a file this '
            'user can read and write: fix its permissions or remove it.')
  finally:
    if close and fd is not None:
      os.close(fd)
  if stat.S_ISDIR(mode):
    return f'{path} is a directory; {allowed}.'
  if not stat.S_ISREG(mode):
    return f'{path} is not a regular file; {allowed}.'
  if text and not is_padax_lock(text):
    return (f'{path} was not written by padax (it holds no padax lock '
            f'record); {allowed}.')
  if not text and not held and not os.path.lexists(
      os.path.join(workdir, 'config.json')):
    return (f'{path} was not written by padax (an empty file in a directory '
            f'without padax\'s config.json); {allowed}.')
  return ''


# What a workdir holds (besides checkpoints/): each must be a file if there.
DATA_FILE = 'data.json'
_RUN_FILES = ('config.json', 'metrics.jsonl', 'metrics.csv', DATA_FILE,
              LOCK_FILE)
# Directories padax writes into (the profile: with --profile), and a
# sweep's files.
_RUN_DIRS = ('checkpoints', 'members', 'profile')
_SWEEP_FILES = ('summary.json', 'summary.md')
# FS_IOC_GETFLAGS and the flags under which a file cannot be replaced.
_GET_FLAGS = 0x80086601
_UNCHANGEABLE_FLAGS = {0x10: 'immutable (chattr +i)',
                       0x20: 'append-only (chattr +a)'}
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


def _check_changeable(path: str) -> None:
  """ValueError if the file `path` is immutable or append-only: padax could
  not replace it, and would find out only at its first write."""
  if not os.path.isfile(path) or os.path.islink(path):
    return
  try:
    fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)
  except OSError:
    return  # The reads that follow say why.
  try:
    flags = struct.unpack('i', fcntl.ioctl(fd, _GET_FLAGS, b'\0' * 4))[0]
  except OSError:
    return  # A file system without these flags.
  finally:
    os.close(fd)
  for flag, name in _UNCHANGEABLE_FLAGS.items():
    if flags & flag:
      raise ValueError(
          f'{path} cannot be replaced: it is {name}; allowed: a file padax '
          f'can replace: clear the flag (chattr -{name[-2]}), or '
          f'{_MOVE_AWAY}.')


def refuse_symlink(path: str, kind: str = 'file') -> None:
  """ValueError if `path`, which padax writes (a `kind`), is a symlink."""
  if os.path.islink(path):
    raise ValueError(
        f'{path} is a symlink (to {os.readlink(path)!r}); padax does not '
        f'write through one; allowed: the {kind} padax writes there: '
        f'{_MOVE_AWAY}.')


def check_profile_dir(path: str) -> None:
  """ValueError unless `path` (WORKDIR/profile, where --profile writes its
  trace) is missing or a directory padax can write into."""
  if not os.path.lexists(path):
    return
  if os.path.islink(path) or not os.path.isdir(path):
    kind = 'a symlink' if os.path.islink(path) else 'not a directory'
    raise ValueError(
        f'{path} is {kind}; allowed with --profile: the directory padax '
        f'writes the trace into: {_MOVE_AWAY}.')
  if not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f'{path} is not writable; allowed: a directory this '
                     'user can write to: fix its permissions.')


def _check_checkpoint_entries(checkpoint_dir: str) -> None:
  """ValueError naming a symlink among the checkpoints (or a sweep's chunk
  folders): pruning or setting aside would act on what it points to."""
  if not os.path.isdir(checkpoint_dir) or os.path.islink(checkpoint_dir):
    return
  folders = [checkpoint_dir]
  for folder in folders:
    for entry in os.scandir(folder):
      if entry.is_symlink():
        raise ValueError(
            f'{entry.path} is a symlink (to {os.readlink(entry.path)!r}); '
            'padax does not follow one among its checkpoints; allowed: the '
            f'checkpoint directories padax writes: {_MOVE_AWAY}.')
      if folder == checkpoint_dir and entry.name.startswith('chunk-'):
        if not entry.is_dir():
          raise ValueError(
              f'{entry.path} is not a directory; allowed: the directory of a '
              f'chunk\'s checkpoints: {_MOVE_AWAY}.')
        folders.append(entry.path)


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
    for name in _RUN_FILES + _SWEEP_FILES:
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
    # Nothing padax writes follows a symlink out of the workdir.
    for name in _RUN_FILES + _SWEEP_FILES + _RUN_DIRS:
      refuse_symlink(os.path.join(self.path, name),
                     'directory' if name in _RUN_DIRS else 'file')
    _check_checkpoint_entries(self.checkpoint_dir)
    for name in _RUN_FILES + _SWEEP_FILES:
      _check_changeable(os.path.join(self.path, name))
    problem = lock_file_problem(lock, self.path)
    if problem:
      raise ValueError(problem)
    if not os.path.lexists(self.config_path):
      found = [n for n in ('metrics.jsonl', 'metrics.csv', DATA_FILE,
                           'checkpoints', 'members', *_SWEEP_FILES, 'profile')
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
      try:
        os.makedirs(self.path, exist_ok=True)
        # Only padax's own tmp files (name and kind): a user's `.tmp-x`
        # stays.
        for entry in os.scandir(self.path):
          if _TMP_NAME.match(entry.name) and entry.is_file(
              follow_symlinks=False):
            os.remove(entry.path)
      except OSError as e:
        raise _write_error(self.path, e) from None
      write_json_if_changed(self.config_path, self.config.to_dict())
      if data_identity is not None:
        write_json_if_changed(self.data_path, data_identity)

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
