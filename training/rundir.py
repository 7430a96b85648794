"""A run directory: its layout, readers, writers and consistency checks.

Layout (as big_vision / Flax examples): config.json (the full config,
written before training starts), metrics.jsonl (one JSON object per epoch),
metrics.csv (the same rows), data.json (the data trained on),
checkpoints/<step> (training/checkpoints.py; a sweep's: chunk-NNN/<step>),
lock (held by the run: training/run_lock.py), profile/ (with --profile); a
sweep adds members/<name>/ (each a run directory), summary.json|md and,
with successive halving, rungs/epoch-NNN.json (each rung's decision).

Every file is replaced atomically (tmp file, then rename): a kill leaves the
old or the new version; a failed write (disk full) raises faults.WriteError
and leaves the old one. Whether a directory, its checkpoints and its metrics
tell one story is checked here before anything is written, and so is when a
checkpoint is due. JAX-free: report.py reads runs with it.
"""

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import secrets
import stat
import struct

from training import faults
from training import paths
from training import records

CONFIG_FILE = 'config.json'
METRICS_JSONL = 'metrics.jsonl'
METRICS_CSV = 'metrics.csv'
DATA_FILE = 'data.json'
LOCK_FILE = 'lock'
CHECKPOINTS_DIR = 'checkpoints'
MEMBERS_DIR = 'members'
PROFILE_DIR = 'profile'
RUNGS_DIR = 'rungs'
SUMMARY_JSON = 'summary.json'
SUMMARY_MD = 'summary.md'
# What a run directory holds: each must be a file (or a directory) if there.
_RUN_FILES = (CONFIG_FILE, METRICS_JSONL, METRICS_CSV, DATA_FILE, LOCK_FILE)
_RUN_DIRS = (CHECKPOINTS_DIR, MEMBERS_DIR, PROFILE_DIR, RUNGS_DIR)
_SWEEP_FILES = (SUMMARY_JSON, SUMMARY_MD)

# Keys that may differ between a stored config and a resumed run's: extending
# or shortening a run is allowed, anything else is another experiment.
RUN_LENGTH_KEYS = ('num_epochs',)
# Keys added to the config after workdirs were written without them: a stored
# config that lacks one holds a run made with its value here.
ADDED_KEYS = {'nonfinite_policy': 'stop', 'max_consecutive_skips': 10,
              'validation_examples': 0}
# Keys that say where the data is, not what it is: once a run recorded its
# data (data.json), the data's identity is compared, not its path.
DATA_LOCATION_KEYS = ('data_dir',)

# Tmp files of atomic_write: only names of this pattern are ever removed.
_TMP_PREFIX = '.tmp-padax-'
_TMP_NAME = re.compile(r'^\.tmp-padax-[0-9a-f]{16}$')
# The record a run writes into its lock: 'padax lock: pid ...'; a lock of
# before (no 'padax lock: ') is recognised too.
LOCK_HEADER = 'padax lock: '
_LOCK_RECORD = re.compile(r'^(padax lock: )?pid \d+ on \S+ since \S+: ')
# Opening a file padax writes never follows a symlink, nor blocks on a FIFO.
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# FS_IOC_GETFLAGS and the flags under which a file cannot be replaced.
_GET_FLAGS = 0x80086601
_UNCHANGEABLE_FLAGS = {0x10: 'immutable (chattr +i)',
                       0x20: 'append-only (chattr +a)'}
MOVE_AWAY = 'move it away, or use a new workdir'

# Orbax's per-checkpoint metadata file, and the key of the step padax records
# in it (a name can be changed; a checkpoint's own record cannot).
METADATA_FILE = '_CHECKPOINT_METADATA'
STEP_METADATA_KEY = 'padax_step'
UNREADABLE_PREFIX = 'unreadable-'


def chunk_dir(workdir: str, index: int) -> str:
  """Where a sweep's chunk `index` keeps its checkpoints."""
  return os.path.join(workdir, CHECKPOINTS_DIR, f'chunk-{index:03d}')


def rung_path(workdir: str, epoch: int) -> str:
  """Where a halving sweep records its decision at `epoch`."""
  return os.path.join(workdir, RUNGS_DIR, f'epoch-{epoch:03d}.json')


def checkpoint_due(epoch: int, config, last_epoch: int = None) -> bool:
  """Whether the end of `epoch` is checkpointed: every
  config.checkpoint_every_epochs epochs and at the last (num_epochs)."""
  last_epoch = config.num_epochs if last_epoch is None else last_epoch
  return epoch % config.checkpoint_every_epochs == 0 or epoch == last_epoch


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
                     f'allowed: the file padax writes there: {MOVE_AWAY}.')
  tmp = os.path.join(os.path.dirname(path),
                     _TMP_PREFIX + secrets.token_hex(8))
  created = False
  try:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW,
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


def prepare_dir(path: str) -> None:
  """Makes the directory `path` (if missing) and removes the tmp files of
  atomic_writes a kill interrupted there; faults.WriteError if it cannot."""
  try:
    os.makedirs(path, exist_ok=True)
    # Only padax's own tmp files (name and kind): a user's `.tmp-x` stays.
    for entry in os.scandir(path):
      if _TMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
        os.remove(entry.path)
  except OSError as e:
    raise _write_error(path, e) from None


def write_json_if_changed(path: str, value) -> None:
  """atomic_write of `value` as JSON, unless `path` already holds it."""
  try:
    with open(path, encoding='utf-8') as f:
      if json.load(f) == json.loads(json.dumps(value)):
        return
  except (OSError, ValueError):
    pass
  atomic_write(path, json.dumps(value, indent=2, sort_keys=True))


def read_json_object(path: str) -> dict:
  """The JSON object in `path`; ValueError naming the file and what is
  wrong."""
  if os.path.isdir(path):
    raise ValueError(f'{path} is a directory; allowed: the JSON file padax '
                     f'writes there: {MOVE_AWAY}.')
  try:
    with open(path, encoding='utf-8') as f:
      value = json.loads(f.read())
  except OSError as e:
    raise ValueError(f'{path} cannot be read ({e.strerror or e}); allowed: '
                     f'a readable file: fix its permissions, or '
                     f'{MOVE_AWAY}.') from None
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text (byte {e.start}: {e.reason});'
                     f' allowed: the JSON padax writes: {MOVE_AWAY}.'
                     ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e.msg} at line {e.lineno} '
                     f'column {e.colno}); allowed: the JSON padax writes: '
                     f'{MOVE_AWAY}.') from None
  if not isinstance(value, dict):
    raise ValueError(
        f'{path} holds a JSON {type(value).__name__} '
        f'({json.dumps(value)[:40]}), not an object; allowed: the JSON '
        f'object padax writes: {MOVE_AWAY}.')
  return value


def read_stored_config(workdir: str) -> dict:
  """WORKDIR/config.json ({} when there is none, or not a file:
  Workdir.check says so)."""
  path = os.path.join(workdir, CONFIG_FILE)
  return read_json_object(path) if os.path.isfile(path) else {}


def read_rows(path: str, strict: bool = True) -> list:
  """The metrics rows of `path` ([] if missing); ValueError naming the file
  and line of what is not a row.

  strict (a run resuming): objects of epochs 1, 2, ... in order, each with
  its integer step. Else (a report): objects with an integer epoch, sorted by
  epoch, the last row of an epoch winning.
  """
  if not os.path.lexists(path):
    return []
  if os.path.isdir(path):
    raise ValueError(f'{path} is a directory; allowed: the metrics file padax '
                     f'writes: {MOVE_AWAY}.')
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} cannot be read as text ({e}); allowed: the '
                     f'metrics file padax writes: {MOVE_AWAY}.') from None
  rows = {}
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(
          f'{path}: line {number} is not valid JSON ({e.msg} at column '
          f'{e.colno}: {line[:40]!r}); allowed: one JSON object per epoch, '
          f'as padax writes them: repair or remove the line, or '
          f'{MOVE_AWAY}.') from None
    epoch = row.get('epoch') if isinstance(row, dict) else None
    if not strict and isinstance(epoch, float) and epoch.is_integer():
      epoch = int(epoch)
    # type() is int: JSON's true and false are no epoch or step.
    if strict and not (type(epoch) is int and type(row.get('step')) is int):
      raise ValueError(
          f'{path}: line {number} ({line[:40]}) is not a metrics row; '
          'allowed: a JSON object with an integer "epoch" and "step" (and '
          f'the columns {", ".join(records.COLUMNS[2:5])}, ...): repair or '
          f'remove the line, or {MOVE_AWAY}.')
    if type(epoch) is not int:
      raise ValueError(
          f'{path}: line {number} ({line[:40]}) has no integer "epoch" (got '
          f'{epoch!r}); allowed: one JSON object per epoch with the keys '
          f'{", ".join(records.COLUMNS)}.')
    if strict and epoch != len(rows) + 1:
      raise ValueError(
          f'{path}: line {number} is the row of epoch {epoch}, where '
          f'epoch {len(rows) + 1} was due; allowed: the rows of epochs 1, 2, '
          f'... in order, as padax writes them: repair the file, or '
          f'{MOVE_AWAY}.')
    rows[epoch] = dict(row, epoch=epoch)
  return [rows[e] for e in sorted(rows)]


def _csv_epochs(path: str) -> int:
  """The number of epoch rows of a metrics.csv (ValueError if unreadable)."""
  if not os.path.lexists(path):
    return 0
  try:
    with open(path, newline='', encoding='utf-8') as f:
      return sum(1 for row in csv.DictReader(f) if row.get('epoch'))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f'{path} cannot be read as CSV ({e}); allowed: the '
                     f'metrics file padax writes: {MOVE_AWAY}.') from None


class CheckpointReadError(ValueError):
  """No checkpoint of the directory reads back."""


def read_custom_metadata(path: str, step: int) -> dict:
  """The custom metadata of the checkpoint directory `path` (named `step`);
  ValueError saying why if it is missing, damaged or records another step.

  Orbax reads a damaged metadata file as none at all (a log line): its loop
  state would silently start afresh.
  """
  file = os.path.join(path, METADATA_FILE)
  try:
    with open(file, encoding='utf-8') as f:
      text = f.read()
  except FileNotFoundError:
    raise ValueError(f'its {METADATA_FILE} is missing') from None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'its {METADATA_FILE} cannot be read ({e})') from None
  try:
    metadata = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'its {METADATA_FILE} is not valid JSON ({e.msg} at '
                     f'line {e.lineno} column {e.colno})') from None
  custom = metadata.get('custom_metadata') if isinstance(metadata,
                                                         dict) else None
  if custom is None:
    custom = {}
  if not isinstance(metadata, dict) or not isinstance(custom, dict):
    raise ValueError(f'its {METADATA_FILE} is not the JSON object Orbax '
                     'writes')
  recorded = custom.get(STEP_METADATA_KEY, step)
  # JSON's true is no step.
  if isinstance(recorded, bool) or recorded != step:
    raise ValueError(f'its name says step {step} but its metadata records '
                     f'step {recorded!r}')
  return custom


def stored_steps(directory: str) -> tuple:
  """(steps of the checkpoints, steps set aside as unreadable) found in
  `directory`, by their names, without opening them; ([], []) if none."""
  try:
    names = os.listdir(directory)
  except OSError:
    return [], []
  steps = sorted(int(n) for n in names if n.isdigit())
  aside = sorted(int(m.group(1)) for m in (
      re.match(rf'^{UNREADABLE_PREFIX}(\d+)(-\d+)?$', n) for n in names) if m)
  return steps, aside


def check_usable(directory: str) -> None:
  """CheckpointReadError when `directory` holds checkpoints and the
  metadata of every one is damaged or disagrees with its name: there is
  nothing to resume from."""
  steps, _ = stored_steps(directory)
  bad = {}
  for step in steps:
    try:
      read_custom_metadata(os.path.join(directory, str(step)), step)
    except ValueError as e:
      bad[step] = str(e)
  if steps and len(bad) == len(steps):
    raise CheckpointReadError(
        f'none of the checkpoints in {directory} can be used ('
        + '; '.join(f'{os.path.join(directory, str(s))}: {bad[s]}'
                    for s in sorted(bad)) +
        '); allowed: checkpoints whose name, stored step and metadata agree:'
        ' restore their names or files, or move the directory away to start '
        'afresh.')


def is_padax_lock(text: str) -> bool:
  """Whether `text` (a lock file's content) is a record a run wrote."""
  return bool(_LOCK_RECORD.match(text))


def lock_file_problem(path: str, workdir: str, fd: int = None) -> str:
  """Why the lock file `path` was not written by padax ('' if it was, or
  is missing). Its content is never quoted."""
  if not os.path.lexists(path):
    return ''
  allowed = f'allowed: the lock file padax writes there: {MOVE_AWAY}'
  if os.path.islink(path):
    return (f'{path} is a symlink (to {os.readlink(path)!r}); padax does not '
            f'write through one; {allowed}.')
  close = fd is None
  try:
    if fd is None:
      fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
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
      os.path.join(workdir, CONFIG_FILE)):
    return (f'{path} was not written by padax (an empty file in a directory '
            f'without padax\'s config.json); {allowed}.')
  return ''


def _check_changeable(path: str) -> None:
  """ValueError if the file `path` is immutable or append-only: padax could
  not replace it, and would find out only at its first write."""
  if not os.path.isfile(path) or os.path.islink(path):
    return
  try:
    fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
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
          f'{MOVE_AWAY}.')


def refuse_symlink(path: str, kind: str = 'file') -> None:
  """ValueError if `path`, which padax writes (a `kind`), is a symlink."""
  if os.path.islink(path):
    raise ValueError(
        f'{path} is a symlink (to {os.readlink(path)!r}); padax does not '
        f'write through one; allowed: the {kind} padax writes there: '
        f'{MOVE_AWAY}.')


def check_profile_dir(path: str) -> None:
  """ValueError unless `path` (WORKDIR/profile, where --profile writes its
  trace) is missing or a directory padax can write into."""
  if not os.path.lexists(path):
    return
  if os.path.islink(path) or not os.path.isdir(path):
    kind = 'a symlink' if os.path.islink(path) else 'not a directory'
    raise ValueError(
        f'{path} is {kind}; allowed with --profile: the directory padax '
        f'writes the trace into: {MOVE_AWAY}.')
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
            f'checkpoint directories padax writes: {MOVE_AWAY}.')
      if folder == checkpoint_dir and entry.name.startswith('chunk-'):
        if not entry.is_dir():
          raise ValueError(
              f'{entry.path} is not a directory; allowed: the directory of a '
              f'chunk\'s checkpoints: {MOVE_AWAY}.')
        folders.append(entry.path)


def _data_summary(identity: dict) -> str:
  return (f'{identity.get("dataset")}: {identity.get("train_examples")} train '
          f'and {identity.get("test_examples")} test examples, fingerprint '
          f'{str(identity.get("fingerprint"))[:19]}')


def _json_flat(config) -> dict:
  """A config as flat JSON values (tuples as lists), as config.json holds it."""
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  return records.flatten(json.loads(json.dumps(config)))


class Workdir:
  """Owns the files of one run. Nothing is written before `prepare()`.

  writer: whether this process writes the files (process 0 of a multi-host
  run; the others only check).
  """

  def __init__(self, path: str, config, writer: bool = True):
    self.given = path
    self.config = config
    self.writer = writer
    # The metrics rows found by check().
    self.rows = []
    self._set_path(os.path.abspath(path) if path else '')

  def _set_path(self, path: str) -> None:
    self.path = path
    self.config_path = os.path.join(self.path, CONFIG_FILE)
    self.jsonl_path = os.path.join(self.path, METRICS_JSONL)
    self.csv_path = os.path.join(self.path, METRICS_CSV)
    self.data_path = os.path.join(self.path, DATA_FILE)
    self.checkpoint_dir = os.path.join(self.path, CHECKPOINTS_DIR)

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
                         f'there: {MOVE_AWAY}.')
    if os.path.lexists(self.checkpoint_dir):
      if not os.path.isdir(self.checkpoint_dir):
        raise ValueError(
            f'{self.checkpoint_dir} is not a directory; allowed: the '
            f'directory of the run\'s checkpoints: {MOVE_AWAY}.')
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
      found = [n for n in _RUN_FILES[1:4] + (CHECKPOINTS_DIR, MEMBERS_DIR)
               + _SWEEP_FILES + (PROFILE_DIR,)
               if os.path.lexists(os.path.join(self.path, n))]
      if found:
        raise ValueError(
            f'workdir={self.path!r} holds {", ".join(found)} but no '
            'config.json: it is not a padax workdir (another tool\'s?), or '
            'its config.json was removed; allowed: a new or empty directory, '
            'or a padax workdir: use another workdir.')
      return
    self._check_config(read_json_object(self.config_path),
                       data_file or self.data_path)
    self.rows = read_rows(self.jsonl_path)
    csv_rows = _csv_epochs(self.csv_path)
    if csv_rows > len(self.rows):
      raise ValueError(
          f'{self.csv_path} has the rows of {csv_rows} epochs but '
          f'{self.jsonl_path} only {len(self.rows)}: resuming would overwrite '
          f'the rows of epochs {len(self.rows) + 1}-{csv_rows}; allowed: '
          'restore metrics.jsonl, or move both metrics files (and '
          'checkpoints/) away to start over, or use a new workdir.')

  def _check_config(self, stored: dict, data_file: str) -> None:
    """ValueError unless the stored config is the requested one but for the
    run length (and, where data.json records the data, its location)."""
    stored = _json_flat(stored)
    requested = _json_flat(self.config)
    ignore = ()
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
          f'records {_data_summary(stored)}; the data now{where} has '
          f'{_data_summary(identity)}; allowed: the data the run was trained '
          'on (the same data at a path spelled differently is fine), or a '
          'new workdir for other data.')

  def prepare(self, data_identity: dict = None) -> None:
    """Writes config.json (when new or changed) and, given the data's
    identity, data.json; removes tmp files of writes a kill interrupted."""
    if not self.writer:
      return
    prepare_dir(self.path)
    write_json_if_changed(self.config_path, self.config.to_dict())
    if data_identity is not None:
      write_json_if_changed(self.data_path, data_identity)

  def write_metrics(self, rows: list) -> None:
    """Rewrites both metrics files with `rows` (atomically)."""
    if not self.writer:
      return
    atomic_write(self.jsonl_path,
                 ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=records.columns(rows),
                            extrasaction='ignore')
    writer.writeheader()
    writer.writerows(records.csv_row(r) for r in rows)
    atomic_write(self.csv_path, table.getvalue(), newline='')


def check_history(config, shape, member_dirs: list,
                  checkpoint_dir: str, stopped_at: list = None) -> None:
  """Refuses (ValueError) checkpoints, metrics and config that do not tell
  one story: resuming would rewrite history.

  shape: the run_shape.RunShape of this config and data. member_dirs:
  checked Workdirs, whose state the checkpoints in `checkpoint_dir` hold.
  Resuming must lose no row: the rows are at the steps this data gives; a
  checkpoint's epochs have their rows; after the newest checkpoint, only the
  rows a kill before its next checkpoint leaves; num_epochs is not below the
  epochs done. stopped_at: per member, the rung epoch a halving sweep
  stopped it at (None: live); its rows end there.
  """
  check_usable(checkpoint_dir)
  steps, aside = stored_steps(checkpoint_dir)
  newest = steps[-1] if steps else 0
  completed = shape.epochs_done(newest)
  saved_epochs = {shape.epochs_done(s) for s in steps + aside
                  if not shape.steps_into_epoch(s)}
  where = (f'{checkpoint_dir} holds step {newest} (epoch {completed})' if steps
           else f'{checkpoint_dir} holds no checkpoint')
  done = completed
  for d, stop in zip(member_dirs, stopped_at or [None] * len(member_dirs)):
    rows = d.rows
    last = rows[-1]['epoch'] if rows else 0
    # A stopped member's rows end at its rung.
    owed = completed if stop is None else min(stop, completed)
    done = max(done, last)
    for row in rows:
      if row['step'] != shape.end_step(row['epoch']):
        raise ValueError(
            f'{d.jsonl_path}: the row of epoch {row["epoch"]} ends at step '
            f'{row["step"]}, but this data ({shape.train_examples} training'
            f' examples, batch_size {shape.batch_size}: '
            f'{shape.steps_per_epoch} steps per epoch) puts it at step '
            f'{shape.end_step(row["epoch"])}: the run was trained on '
            'other data; allowed: the data it was trained on, or a new '
            'workdir.')
    if owed > last:
      has = f'rows up to epoch {last}' if rows else 'no rows'
      raise ValueError(
          f'{d.jsonl_path} has {has} but {where}: the rows of epochs '
          f'{last + 1}-{owed} are '
          'missing and resuming would not redo them; allowed: restore '
          f'{os.path.basename(d.jsonl_path)}, or move {checkpoint_dir} away '
          'too to start over, or use a new workdir.')
    # The epochs between whose checkpoints were due (before the last row's).
    lost = [e for e in range(owed + 1, last)
            if checkpoint_due(e, config, last) and e not in saved_epochs]
    if lost:
      raise ValueError(
          f'{where} but {d.jsonl_path} has rows up to epoch {last}, and the '
          f'checkpoint of epoch {lost[-1]} is gone: resuming would start '
          f'over from epoch {owed + 1} and rewrite the rows of epochs '
          f'{owed + 1}-{last}; allowed: restore the checkpoints, or move '
          'the metrics files away too to start over, or use a new workdir.')
  if config.num_epochs < done:
    raise ValueError(
        f'num_epochs={config.num_epochs} is below the {done} epochs done in '
        f'{os.path.dirname(checkpoint_dir.rstrip(os.sep))} ({where}; metrics '
        f'up to epoch {max([0] + [len(d.rows) for d in member_dirs])}); '
        f'allowed: num_epochs >= {done}, or a new workdir for a shorter run.')
