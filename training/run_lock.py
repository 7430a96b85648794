"""One run per workdir: `RunLock`, an exclusive flock on WORKDIR/lock.

The lock file's format and whether one was written by padax: training/rundir.py.
"""

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import socket
import stat
import sys

import jax
from jax.experimental import multihost_utils

from training import faults
from training import rundir


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
    self.path = os.path.join(self.workdir, rundir.LOCK_FILE)
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
    if text.startswith(rundir.LOCK_HEADER):
      return text[len(rundir.LOCK_HEADER):]
    return text if rundir.is_padax_lock(text) else ''

  def check_free(self) -> None:
    """ValueError if a live process holds the lock; creates nothing."""
    if jax.process_index() != 0:
      return
    try:
      fd = os.open(self.path, os.O_RDONLY | rundir.NO_FOLLOW)
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
      fd = os.open(self.path,
                   os.O_RDWR | os.O_CREAT | os.O_EXCL | rundir.NO_FOLLOW, 0o666)
      self._created.append(self.path)
      return fd
    except FileExistsError:
      pass
    try:
      fd = os.open(self.path, os.O_RDWR | rundir.NO_FOLLOW)
    except OSError:
      problem = rundir.lock_file_problem(self.path, self.workdir)
      if problem:
        raise ValueError(problem) from None
      raise
    problem = rundir.lock_file_problem(self.path, self.workdir, fd=fd)
    if problem:
      os.close(fd)
      raise ValueError(problem)
    return fd

  def _undo_created(self) -> None:
    """Removes the lock file and directories this run created, while the
    run has written nothing else (no config.json)."""
    if os.path.lexists(os.path.join(self.workdir, rundir.CONFIG_FILE)):
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
          since = datetime.datetime.now().isoformat(timespec='seconds')
          os.pwrite(fd, (
              f'{rundir.LOCK_HEADER}pid {os.getpid()} on '
              f'{socket.gethostname()} since {since}: '
              f'{" ".join(sys.argv)[:1000]}\n').encode(), 0)
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
