"""Fetches an official CIFAR archive once: checked, extracted, cached.

`fetch(...)` returns the folder of a dataset's canonical python layout in a
cache directory. The first call downloads the official archive, checks its
published MD5, extracts the layout's files and moves the folder into place
with one rename: the folder is there complete, or not at all. Whatever fails
(no network, a wrong checksum, a cut connection, a stall, SIGTERM, Ctrl-C)
leaves nothing behind: no partial file, and no directory that the call
created.

Plain `urllib`, not TFDS's download manager: TFDS needs TensorFlow to prepare
CIFAR, retries an unreachable host for minutes, and leaves empty folders on
every failed attempt; here the connection gets a few seconds
(`CONNECT_TIMEOUT_S`, DNS included) and a failure is one `DownloadError`.

Bounds of a download:
* Size: the archive's known size caps it. A Content-Length other than that
  size is refused before anything is written, and the transfer stops as soon
  as more bytes arrive than the size allows (a body without Content-Length
  included).
* Progress: at least `MIN_PROGRESS_BYTES` must arrive in each successive
  window of `PROGRESS_WINDOW_S` seconds. A connection silent for a whole
  window fails then; a trickle fails at the first byte after its window
  ends, so within two windows. Hence an overall deadline of
  (size / MIN_PROGRESS_BYTES + 1) windows, which is enforced too.
* Messages give the bytes actually received (and the size expected).
* Signals: SIGTERM and SIGINT during `fetch` (in the main thread) remove the
  partial download and raise `Interrupted`, a KeyboardInterrupt (train.py:
  exit status 130, one line).
* Stale partials: a download stages in `CACHE/.FOLDER.partial-*` and holds an
  exclusive `flock` on that folder while it runs. SIGKILL (or a power cut)
  leaves the folder behind; every `fetch` removes the partials of its folder
  whose lock it can take, never one that a running download holds.

Overrides, for a mirror or for tests: the `base_url`, `md5`, `size` and
`min_progress` arguments, or the environment variables
`PADAX_CIFAR_BASE_URL` (a URL under which the archives lie by their official
names), `PADAX_CIFAR_MD5` (the expected MD5 of the archive, replacing the
published one; the official size then only caps the download),
`PADAX_CIFAR_SIZE` (the archive's size in bytes) and
`PADAX_CIFAR_MIN_PROGRESS` ('BYTES/SECONDS': at least BYTES in each window
of SECONDS).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import math
import os
import shutil
import signal
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Sequence

try:
  import fcntl
except ImportError:  # Not POSIX: no flock, stale partials stay.
  fcntl = None

BASE_URL = 'https://www.cs.toronto.edu/~kriz'
BASE_URL_ENV = 'PADAX_CIFAR_BASE_URL'
MD5_ENV = 'PADAX_CIFAR_MD5'
SIZE_ENV = 'PADAX_CIFAR_SIZE'
MIN_PROGRESS_ENV = 'PADAX_CIFAR_MIN_PROGRESS'
# Seconds to resolve the host, connect and get the response headers.
CONNECT_TIMEOUT_S = 5.0
# The minimum progress: at least MIN_PROGRESS_BYTES in each window of
# PROGRESS_WINDOW_S seconds (a slow link still gets the official archive in
# under three hours; a stalled one is given up after a minute).
MIN_PROGRESS_BYTES = 1 << 20
PROGRESS_WINDOW_S = 60.0
_CHUNK = 1 << 20
_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)


class DownloadError(OSError):
  """The archive could not be fetched, or is not the expected archive."""


class Interrupted(KeyboardInterrupt):
  """SIGTERM or SIGINT arrived during `fetch`; the partial download is gone.

  A KeyboardInterrupt, so that whatever stops on Ctrl-C stops on it; its
  message says what was interrupted and what was kept.
  """


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/padax/datasets (~/.cache/padax/datasets)."""
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(cache_home, 'padax', 'datasets')


def archive_url(archive: str, base_url: str | None = None) -> str:
  base = base_url or os.environ.get(BASE_URL_ENV) or BASE_URL
  return f'{base.rstrip("/")}/{archive}'


def _partial_prefix(folder: str) -> str:
  """Name prefix of the staging folders of `folder`'s downloads."""
  return f'.{folder}.partial-'


def fetch(layout, cache_dir: str | os.PathLike | None = None, *,
          base_url: str | None = None,
          connect_timeout: float = CONNECT_TIMEOUT_S,
          min_progress: tuple[int, float] | None = None) -> str:
  """Path of `cache_dir/layout.folder`, downloading and extracting it if
  absent.

  Args:
    layout: a dataset's official release (input_pipeline.DatasetSpec's
      layout): its `archive` name, the `folder` it holds, the `files` of that
      folder to extract, the archive's published `md5` (PADAX_CIFAR_MD5
      replaces it) and `size` in bytes (PADAX_CIFAR_SIZE replaces it; with
      PADAX_CIFAR_MD5 alone it is only the most the download may bring).
    cache_dir: where the folder is kept (None: `default_cache_dir()`).
    base_url: where the archive lies (None: PADAX_CIFAR_BASE_URL, else the
      official site).
    connect_timeout: seconds for DNS, connection and response headers.
    min_progress: (bytes, seconds): at least `bytes` in each window of
      `seconds` (None: PADAX_CIFAR_MIN_PROGRESS, else MIN_PROGRESS_BYTES
      per PROGRESS_WINDOW_S).

  Raises:
    DownloadError: naming the URL and the reason; nothing is left behind.
    Interrupted: SIGTERM or SIGINT arrived; nothing is left behind.
    ValueError: a bad PADAX_CIFAR_SIZE or PADAX_CIFAR_MIN_PROGRESS.
  """
  cache_dir = os.path.abspath(os.path.expanduser(
      os.fspath(cache_dir) if cache_dir else default_cache_dir()))
  archive, folder, files = layout.archive, layout.folder, layout.files
  target = os.path.join(cache_dir, folder)
  _reclaim_stale_partials(cache_dir, folder)
  if os.path.isdir(target):
    return target
  url = archive_url(archive, base_url)
  size_override = _env_size()
  exact = size_override is not None or not os.environ.get(MD5_ENV)
  md5 = os.environ.get(MD5_ENV) or layout.md5
  transfer = _Transfer(url, size_override or layout.size, exact)
  min_bytes, window_s = _min_progress(min_progress)
  with _SignalGuard(transfer) as guard:
    response = _open(url, connect_timeout, window_s)
    with response:
      transfer.check_length(response.headers.get('Content-Length'))
      _download(response, transfer, guard, archive, folder, files, md5,
                cache_dir, target, min_bytes, window_s)
  return target


def _download(response, transfer, guard, archive, folder, files, md5,
              cache_dir, target, min_bytes, window_s) -> None:
  """Saves, checks and extracts `response` into `target` (fetch's body)."""
  created = _missing_dirs(cache_dir)
  staging = lock = None
  try:
    try:
      os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
      raise DownloadError(f'cannot create the cache directory {e.filename} '
                          f'({e.strerror or e}).') from None
    with guard.deferred():  # The staging folder and its lock, or neither.
      staging, lock = _stage(cache_dir, folder)
    path = os.path.join(staging, archive)
    _save(response, path, md5, transfer, min_bytes, window_s)
    _extract(path, folder, files, os.path.join(staging, folder), transfer.url)
    try:
      os.rename(os.path.join(staging, folder), target)
    except OSError:
      if not os.path.isdir(target):  # Else another process was first.
        raise
    transfer.cached_in = target
  except BaseException:
    with guard.deferred(then_raise=False):
      _unstage(staging, lock)
      for directory in created:
        try:
          os.rmdir(directory)
        except OSError:
          break
    raise
  with guard.deferred():
    _unstage(staging, lock)


class _Transfer:
  """One download: its URL, the size expected, the bytes received so far."""

  def __init__(self, url: str, size: int, exact: bool):
    self.url = url
    self.cap = size  # No more bytes than this are accepted.
    self.expected = size if exact else None  # The exact size, when known.
    self.exact = exact
    self.received = 0
    self.cached_in = None

  def progress(self) -> str:
    if self.expected is None:
      return f'{self.received} bytes'
    return f'{self.received} of {self.expected} bytes'

  def check_length(self, header) -> None:
    """Refuses a Content-Length that the archive cannot have."""
    if not header or not header.strip().isdigit():
      return
    length = int(header)
    if self.exact and length != self.cap:
      raise DownloadError(
          f'cannot download {self.url}: the server announces {length} bytes '
          f'(Content-Length), the archive has {self.cap}; refused before '
          'downloading.')
    if length > self.cap:
      raise DownloadError(
          f'cannot download {self.url}: the server announces {length} bytes '
          f'(Content-Length), more than the {self.cap} bytes of the official '
          f'archive ({SIZE_ENV} sets the size of another); refused before '
          'downloading.')
    self.expected = length

  def interrupted(self, signal_name: str) -> Interrupted:
    if self.cached_in:
      return Interrupted(
          f'interrupted ({signal_name}) right after the download of '
          f'{self.url}; its data is cached in {self.cached_in}.')
    return Interrupted(
        f'interrupted ({signal_name}) during the download of {self.url}, '
        f'after {self.progress()}; nothing kept (the next run downloads it '
        'again).')


class _SignalGuard:
  """Within it (main thread only), the first SIGTERM or SIGINT raises
  `Interrupted`; in `deferred()` a signal waits until the block is done, so
  that the staging folder is created, or removed, whole."""

  def __init__(self, transfer: _Transfer):
    self.transfer = transfer
    self.signal_name = None
    self._raised = False
    self._deferring = False
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.signal_name = self.signal_name or signal.Signals(signum).name
    if not (self._raised or self._deferring):
      self._raise()

  def _raise(self):
    self._raised = True
    raise self.transfer.interrupted(self.signal_name)

  @contextlib.contextmanager
  def deferred(self, then_raise: bool = True):
    """Signals in the block are held; with `then_raise`, the first of them
    raises at its end (without, a caller already failing goes on)."""
    self._deferring = True
    try:
      yield
    finally:
      self._deferring = False
    if then_raise and self.signal_name and not self._raised:
      self._raise()

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in _SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, exc_type, exc, tb):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    return False


def _env_size() -> int | None:
  text = os.environ.get(SIZE_ENV)
  if not text:
    return None
  if not text.strip().isdigit() or int(text) <= 0:
    raise ValueError(f'{SIZE_ENV}={text!r} is not allowed; allowed: the '
                     'archive\'s size in bytes, a positive integer.')
  return int(text)


def _min_progress(value: tuple[int, float] | None) -> tuple[int, float]:
  """(bytes, seconds) of `value`, else of PADAX_CIFAR_MIN_PROGRESS, else the
  defaults; ValueError naming the bad value."""
  where = 'min_progress'
  if value is None:
    text = os.environ.get(MIN_PROGRESS_ENV)
    if not text:
      return MIN_PROGRESS_BYTES, PROGRESS_WINDOW_S
    where = MIN_PROGRESS_ENV
    value = text.split('/')
  try:
    min_bytes, seconds = value
    min_bytes, seconds = int(min_bytes), float(seconds)
    good = min_bytes > 0 and 0 < seconds < math.inf
  except (TypeError, ValueError):
    good = False
  if not good:
    shown = text if where == MIN_PROGRESS_ENV else value
    raise ValueError(
        f'{where}={shown!r} is not allowed; allowed: BYTES/SECONDS, a '
        'positive integer and a positive number of seconds (at least BYTES '
        f'must arrive in each window of SECONDS), e.g. '
        f'{MIN_PROGRESS_BYTES}/{PROGRESS_WINDOW_S:g}.')
  return min_bytes, seconds


def _stage(cache_dir: str, folder: str):
  """(path, locked descriptor or None) of a new staging folder in
  `cache_dir`, locked against `_reclaim_stale_partials`."""
  for _ in range(3):
    try:
      path = tempfile.mkdtemp(prefix=_partial_prefix(folder), dir=cache_dir)
    except OSError as e:
      raise DownloadError(f'cannot write in the cache directory {cache_dir} '
                          f'({e.strerror or e}).') from None
    if fcntl is None:
      return path, None
    lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    # Waits only while another fetch, which found the folder unlocked,
    # removes it: then the folder is gone and a new one is made.
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.fstat(lock).st_nlink:
      return path, lock
    os.close(lock)
  raise DownloadError(f'cannot keep a staging folder in {cache_dir}: another '
                      'process removes them.')


def _unstage(path, lock) -> None:
  if path is not None:
    shutil.rmtree(path, ignore_errors=True)
  if lock is not None:
    os.close(lock)


def _reclaim_stale_partials(cache_dir: str, folder: str) -> None:
  """Removes the staging folders of `folder` that no process holds: those of
  a download that was killed (SIGKILL, power cut)."""
  if fcntl is None:
    return
  try:
    names = sorted(os.listdir(cache_dir))
  except OSError:
    return
  for name in names:
    if not name.startswith(_partial_prefix(folder)):
      continue
    path = os.path.join(cache_dir, name)
    try:
      lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
      continue
    try:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        continue  # A download in progress holds it.
      shutil.rmtree(path, ignore_errors=True)
      log.info('Removed %s, the partial download of a process that was '
               'killed.', path)
    finally:
      os.close(lock)


def _missing_dirs(path: str) -> list:
  """`path` and those of its parents that do not exist, deepest first."""
  missing = []
  while not os.path.isdir(path) and path not in missing:
    missing.append(path)
    path = os.path.dirname(path)
  return missing


def _reason(e: BaseException) -> str:
  if isinstance(e, urllib.error.HTTPError):
    return f'HTTP {e.code} {e.reason}'
  if isinstance(e, urllib.error.URLError):
    return str(e.reason)
  # tarfile lists each compression it tried on a line of its own.
  lines = str(e).strip().splitlines()
  return f'{type(e).__name__}: {lines[0].rstrip(":") if lines else ""}'


def _open(url: str, timeout: float, read_timeout: float):
  """The HTTP response for `url`, or DownloadError within `timeout` seconds.

  urlopen's own timeout does not bound name resolution, which can hang for
  much longer offline: the request runs in a daemon thread and is abandoned
  (its late response closed) at the deadline, or when a signal interrupts
  the wait. Each later read of the response waits `read_timeout` at most.
  """
  outcome = {}
  guard = threading.Lock()
  abandoned = []

  def request():
    try:
      response = urllib.request.urlopen(url, timeout=read_timeout)
    except Exception as e:  # pylint: disable=broad-except
      outcome['error'] = e
      return
    with guard:
      if abandoned:
        response.close()
      else:
        outcome['response'] = response

  def abandon():
    with guard:
      abandoned.append(True)
      if 'response' in outcome:
        outcome.pop('response').close()

  thread = threading.Thread(target=request, name='padax-download',
                            daemon=True)
  thread.start()
  try:
    thread.join(timeout)
  except BaseException:
    abandon()
    raise
  if thread.is_alive():
    thread.join(0.05)
    if 'response' not in outcome:
      abandon()
      raise DownloadError(f'cannot download {url}: no answer within '
                          f'{timeout:g} s (offline?).')
  if 'error' in outcome:
    raise DownloadError(
        f'cannot download {url}: {_reason(outcome["error"])}.') from None
  return outcome['response']


def _save(response, path: str, md5: str, transfer: _Transfer,
          min_bytes: int, window_s: float) -> None:
  """Streams the response to `path` within the bounds of a download (see
  the module's docstring), then checks its length and MD5."""
  url = transfer.url
  digest = hashlib.md5(usedforsecurity=False)
  start = time.monotonic()
  # At the minimum rate the whole archive takes this long, plus a window.
  deadline = start + (math.ceil(transfer.cap / min_bytes) + 1) * window_s
  window_start, window_bytes = start, 0
  log.info('Downloading %s (%s) to %s', url,
           'size unknown' if transfer.expected is None
           else f'{transfer.expected / 2**20:.0f} MiB',
           os.path.dirname(os.path.dirname(path)))
  try:
    f = open(path, 'wb')
  except OSError as e:
    raise DownloadError(f'cannot write {path}: {e.strerror or e}.') from None
  with f:
    while True:
      try:
        # One system call at most: every byte that arrived is counted.
        chunk = response.read1(_CHUNK)
      except TimeoutError:
        raise DownloadError(
            f'download of {url} stalled: nothing arrived for {window_s:g} s, '
            f'after {transfer.progress()}; given up.') from None
      except (OSError, http.client.HTTPException) as e:
        raise DownloadError(
            f'download of {url} broke off after {transfer.progress()} '
            f'({_reason(e)}).') from None
      if not chunk:
        break
      transfer.received += len(chunk)
      if transfer.received > transfer.cap:
        raise DownloadError(
            f'download of {url} refused: {transfer.received} bytes arrived, '
            f'more than the {transfer.cap} of the archive; nothing kept.')
      try:
        f.write(chunk)
      except OSError as e:
        raise DownloadError(
            f'cannot write {path}: {e.strerror or e}.') from None
      digest.update(chunk)
      now = time.monotonic()
      if now - window_start >= window_s:
        if transfer.received - window_bytes < min_bytes:
          raise DownloadError(
              f'download of {url} too slow: '
              f'{transfer.received - window_bytes} bytes in '
              f'{now - window_start:.1f} s, fewer than {min_bytes} per '
              f'{window_s:g} s ({MIN_PROGRESS_ENV}), after '
              f'{transfer.progress()}; given up.')
        window_start, window_bytes = now, transfer.received
      if now > deadline:
        raise DownloadError(
            f'download of {url} too slow: {now - start:.0f} s, longer than '
            f'the {deadline - start:g} s of {min_bytes} bytes per '
            f'{window_s:g} s, after {transfer.progress()}; given up.')
  if transfer.expected is not None and transfer.received != transfer.expected:
    raise DownloadError(f'download of {url} broke off after '
                        f'{transfer.progress()}.')
  if digest.hexdigest() != md5:
    raise DownloadError(
        f'{url} is not the expected archive: its MD5 is {digest.hexdigest()}, '
        f'expected {md5} ({transfer.received} bytes received); refused.')
  log.info('Downloaded %s: %.0f MiB in %.0f s, MD5 checked', url,
           transfer.received / 2**20, time.monotonic() - start)


def archive_files(path: str, folder: str, files: Sequence[str]):
  """Yields (name, file object) for each regular file `folder/<name>` of the
  archive at `path`, name in `files`: no other path is trusted.

  Streamed in archive order: a .tar.gz has no index, so random access would
  decompress the archive again for every member.
  """
  wanted = {f'{folder}/{name}': name for name in files}
  with tarfile.open(path, mode='r:*') as tar:
    for member in tar:
      name = wanted.get(member.name.removeprefix('./'))
      if name is not None and member.isfile():
        yield name, tar.extractfile(member)


def _extract(path: str, folder: str, files: Sequence[str], destination: str,
             url: str) -> None:
  """Writes the archive's `folder/<file>` members into `destination`."""
  os.mkdir(destination)
  found = set()
  try:
    for name, source in archive_files(path, folder, files):
      with open(os.path.join(destination, name), 'wb') as out:
        shutil.copyfileobj(source, out, _CHUNK)
      found.add(name)
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DownloadError(f'cannot extract {url}: {_reason(e)}.') from None
  missing = [f'{folder}/{name}' for name in files if name not in found]
  if missing:
    raise DownloadError(f'{url} lacks {", ".join(missing)}.')
