"""Fetches a dataset's official archive once: checked, extracted, cached.

`fetch(layout)` returns the folder of the layout's python release in a cache
directory, downloading the archive the first time, checking its published
MD5, and moving the extracted folder into place with one rename: complete,
or not there at all. Whatever fails (no network, a wrong checksum, a cut
connection, a stall, SIGTERM, Ctrl-C) leaves no partial file and no
directory the call created. Plain `urllib`, not TFDS's download manager,
which needs TensorFlow for CIFAR and retries an unreachable host for
minutes: here a failure is one `DownloadError` within seconds.

Bounds of a download:
* Size: the archive's size caps it; a Content-Length other than that size
  is refused before anything is written, and the transfer stops as soon as
  more bytes arrive than the size allows.
* Progress: at least MIN_PROGRESS_BYTES must arrive in each successive
  window of PROGRESS_WINDOW_S seconds (a silent connection fails at the
  window's end, a trickle at its first byte after it), and the whole
  download within (size / MIN_PROGRESS_BYTES + 1) windows.
* Signals: SIGTERM and SIGINT (in the main thread) remove the partial
  download and raise `Interrupted`, a KeyboardInterrupt.
* Stale partials: a download stages in `CACHE/.FOLDER.partial-*` under an
  exclusive `flock`; every `fetch` removes the partials of its folder that no
  running download holds (left by SIGKILL or a power cut).

For a mirror or for tests, the PADAX_CIFAR_* environment variables override
the URL, the MD5, the size and the progress bound (see `fetch`).
"""

from __future__ import annotations

import contextlib
import fcntl
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

from training import faults

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
    base_url: where the archive lies by its official name (None:
      PADAX_CIFAR_BASE_URL, else the official site).
    connect_timeout: seconds for DNS, connection and response headers.
    min_progress: (bytes, seconds): at least `bytes` in each window of
      `seconds` (None: PADAX_CIFAR_MIN_PROGRESS, 'BYTES/SECONDS', else
      MIN_PROGRESS_BYTES per PROGRESS_WINDOW_S).

  Raises:
    DownloadError: naming the URL and the reason; nothing is left behind.
    Interrupted: SIGTERM or SIGINT arrived; nothing is left behind.
    ValueError: a bad PADAX_CIFAR_SIZE or PADAX_CIFAR_MIN_PROGRESS.
  """
  cache_dir = os.path.abspath(os.path.expanduser(
      os.fspath(cache_dir) if cache_dir else default_cache_dir()))
  target = os.path.join(cache_dir, layout.folder)
  _reclaim_stale_partials(cache_dir, layout.folder)
  if os.path.isdir(target):
    return target
  size_override = _env_size()
  transfer = _Transfer(
      archive_url(layout.archive, base_url), size_override or layout.size,
      exact=size_override is not None or not os.environ.get(MD5_ENV),
      md5=os.environ.get(MD5_ENV) or layout.md5,
      min_progress=_min_progress(min_progress))
  with transfer:
    with _open(transfer.url, connect_timeout, transfer.window_s) as response:
      transfer.check_length(response.headers.get('Content-Length'))
      _download(response, transfer, layout, cache_dir, target)
  return target


def _download(response, transfer, layout, cache_dir, target) -> None:
  """Saves, checks and extracts `response` into `target` (fetch's body)."""
  created = _missing_dirs(cache_dir)
  staging = lock = None
  done = False
  try:
    try:
      os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
      raise DownloadError(f'cannot create the cache directory {e.filename} '
                          f'({e.strerror or e}).') from None
    with transfer.deferred():  # The staging folder and its lock, or neither.
      staging, lock = _stage(cache_dir, layout.folder)
    path = os.path.join(staging, layout.archive)
    _save(response, path, transfer)
    _extract(path, layout.folder, layout.files,
             os.path.join(staging, layout.folder), transfer.url)
    try:
      os.rename(os.path.join(staging, layout.folder), target)
    except OSError:
      if not os.path.isdir(target):  # Else another process was first.
        raise
    transfer.cached_in = target
    done = True
  finally:
    # Failing, a signal here must not replace the error being raised.
    with transfer.deferred(then_raise=done):
      if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)
      for directory in [] if done else created:
        try:
          os.rmdir(directory)
        except OSError:
          break


class _Transfer:
  """One download: its URL, the size expected, the bytes received so far.

  Within it (main thread only), the first SIGTERM or SIGINT raises
  `Interrupted`; in `deferred()` a signal waits until the block is done, so
  that the staging folder is created, or removed, whole.
  """

  def __init__(self, url: str, size: int, *, exact: bool, md5: str,
               min_progress: tuple[int, float]):
    self.url, self.md5, self.exact = url, md5, exact
    self.min_bytes, self.window_s = min_progress
    self.cap = size  # No more bytes than this are accepted.
    self.expected = size if exact else None  # The exact size, when known.
    self.received = 0
    self.cached_in = self.signal_name = None
    self._raised = self._deferring = False
    self._previous = {}

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

  def _handle(self, signum, frame):
    del frame
    self.signal_name = self.signal_name or signal.Signals(signum).name
    if not (self._raised or self._deferring):
      self._raise()

  def _raise(self):
    self._raised = True
    if self.cached_in:
      raise Interrupted(
          f'interrupted ({self.signal_name}) right after the download of '
          f'{self.url}; its data is cached in {self.cached_in}.')
    raise Interrupted(
        f'interrupted ({self.signal_name}) during the download of '
        f'{self.url}, after {self.progress()}; nothing kept (the next run '
        'downloads it again).')

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
  """(path, locked descriptor) of a new staging folder in
  `cache_dir`, locked against `_reclaim_stale_partials`."""
  for _ in range(3):
    try:
      path = tempfile.mkdtemp(prefix=_partial_prefix(folder), dir=cache_dir)
    except OSError as e:
      raise DownloadError(f'cannot write in the cache directory {cache_dir} '
                          f'({e.strerror or e}).') from None
    lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    # Waits only while another fetch, which found the folder unlocked,
    # removes it: then the folder is gone and a new one is made.
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.fstat(lock).st_nlink:
      return path, lock
    os.close(lock)
  raise DownloadError(f'cannot keep a staging folder in {cache_dir}: another '
                      'process removes them.')


def _reclaim_stale_partials(cache_dir: str, folder: str) -> None:
  """Removes the staging folders of `folder` that no process holds: those of
  a download that was killed (SIGKILL, power cut)."""
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
  return faults.first_line(e, with_type=True).rstrip(':')


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


def _save(response, path: str, transfer: _Transfer) -> None:
  """Streams the response to `path` within the bounds of a download (see
  the module's docstring), then checks its length and MD5."""
  url, md5 = transfer.url, transfer.md5
  min_bytes, window_s = transfer.min_bytes, transfer.window_s
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
