"""Paths given on a command line, checked before anything is written there.

`check_output_dir(path, key)` refuses, with one message naming the flag, the
value and what is allowed, a path that cannot become a directory this
process writes to: empty (an unset shell variable), a NUL byte, a name longer
than the file system allows, a dangling symlink or a symlink loop, a file, a
directory below a file, or a directory this user cannot write to. train.py's
and sweep.py's --workdir and report.py's --out use it. JAX-free.
"""

import errno
import os

# Room left in a path for what a run creates inside its workdir, e.g.
# members/<name>/metrics.jsonl or checkpoints/chunk-000/<step>.orbax-checkpoint-tmp-<n>/...
INNER_PATH_ROOM = 200

_ALLOWED = 'a directory, existing or not, that this user can write to'


def _existing_ancestor(path: str) -> str:
  existing = path
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  return existing


def _check_lengths(path: str, key: str, given: str) -> None:
  ancestor = _existing_ancestor(path)
  try:
    name_max = os.pathconf(ancestor, 'PC_NAME_MAX')
    path_max = os.pathconf(ancestor, 'PC_PATH_MAX')
  except (OSError, ValueError):
    name_max, path_max = 255, 4096
  for name in path.split(os.sep):
    if len(os.fsencode(name)) > name_max:
      raise ValueError(
          f'{key}={given!r} is not allowed: its component {name[:40]!r}... is '
          f'{len(os.fsencode(name))} bytes long; allowed: names of at most '
          f'{name_max} bytes (the file system\'s limit).')
  limit = path_max - INNER_PATH_ROOM
  if len(os.fsencode(path)) > limit:
    raise ValueError(
        f'{key}={given[:60]!r}... is not allowed: {len(os.fsencode(path))} '
        f'bytes as an absolute path; allowed: at most {limit} bytes (the file '
        f'system allows {path_max}, and {INNER_PATH_ROOM} are left for the '
        'files created inside).')


def check_output_dir(path, key: str = 'workdir') -> str:
  """The absolute path of `path`; ValueError unless it can be a directory
  this process writes to (see the module docstring). Creates nothing."""
  if path is None or not str(path).strip():
    raise ValueError(
        f'{key}={path!r} is empty (an unset shell variable?); allowed: '
        f'the path of {_ALLOWED}.')
  given = os.fspath(path)
  if '\0' in given:
    raise ValueError(f'{key}={given!r} contains a NUL byte; allowed: the path '
                     f'of {_ALLOWED}.')
  path = os.path.abspath(given)
  _check_lengths(path, key, given)
  try:
    os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise ValueError(
          f'{key}={given!r} is a symlink loop ({path} resolves to itself); '
          f'allowed: {_ALLOWED}.') from None
    if e.errno == errno.ENAMETOOLONG:
      raise ValueError(f'{key}={given[:60]!r}... is too long for the file '
                       f'system; allowed: {_ALLOWED}.') from None
    if e.errno == errno.ENOENT and os.path.islink(path):
      raise ValueError(
          f'{key}={given!r} is a dangling symlink (to {os.readlink(path)!r}, '
          f'which does not exist); allowed: {_ALLOWED}: create the target or '
          'remove the link.') from None
    if e.errno not in (errno.ENOENT, errno.ENOTDIR):
      raise ValueError(f'{key}={given!r} cannot be used ({e.strerror}); '
                       f'allowed: {_ALLOWED}.') from None
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'{key}={path!r} exists and is not a directory; '
                     f'allowed: {_ALLOWED}.')
  existing = _existing_ancestor(path)
  if not os.path.isdir(existing):
    raise ValueError(
        f'{key}={path!r} cannot be created: {existing} is '
        f'{"a broken symlink" if os.path.islink(existing) else "a file"}; '
        f'allowed: {_ALLOWED}.')
  if not os.access(existing, os.W_OK | os.X_OK):
    try:
      read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
    except OSError:
      read_only = False
    why = 'a read-only file system' if read_only else 'permission denied'
    raise ValueError(f'{key}={path!r} is not writable ({existing}: {why}); '
                     f'allowed: {_ALLOWED}.')
  return path
