"""Fetches an official CIFAR archive once: checked, extracted, cached.

`fetch(...)` returns the folder of a dataset's canonical python layout in a
cache directory. The first call downloads the official archive, checks its
published MD5, extracts the layout's files and moves the folder into place
with one rename: the folder is there complete, or not at all. Whatever fails
(no network, a wrong checksum, a cut connection, Ctrl-C) leaves nothing
behind: no partial file, and no directory that the call created.

Plain `urllib`, not TFDS's download manager: TFDS needs TensorFlow to prepare
CIFAR, retries an unreachable host for minutes, and leaves empty folders on
every failed attempt; here the connection gets a few seconds
(`CONNECT_TIMEOUT_S`, DNS included) and a failure is one `DownloadError`.

Overrides, for a mirror or for tests: the `base_url` and `md5` arguments, or
the environment variables `PADAX_CIFAR_BASE_URL` (a URL under which the
archives lie by their official names) and `PADAX_CIFAR_MD5` (the expected MD5
of the archive, replacing the published one).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Sequence

BASE_URL = 'https://www.cs.toronto.edu/~kriz'
BASE_URL_ENV = 'PADAX_CIFAR_BASE_URL'
MD5_ENV = 'PADAX_CIFAR_MD5'
# Seconds to resolve the host, connect and get the response headers.
CONNECT_TIMEOUT_S = 5.0
# Seconds without a byte before a download counts as broken.
READ_TIMEOUT_S = 60.0
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


class DownloadError(OSError):
  """The archive could not be fetched, or is not the expected archive."""


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/padax/datasets (~/.cache/padax/datasets)."""
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(cache_home, 'padax', 'datasets')


def archive_url(archive: str, base_url: str | None = None) -> str:
  base = base_url or os.environ.get(BASE_URL_ENV) or BASE_URL
  return f'{base.rstrip("/")}/{archive}'


def fetch(archive: str, folder: str, files: Sequence[str], md5: str,
          cache_dir: str | os.PathLike | None = None, *,
          base_url: str | None = None,
          connect_timeout: float = CONNECT_TIMEOUT_S) -> str:
  """Path of `cache_dir/folder`, downloading and extracting it if absent.

  Args:
    archive: the archive's file name, e.g. 'cifar-10-python.tar.gz'.
    folder: the folder it holds, e.g. 'cifar-10-batches-py'.
    files: the files of `folder` to extract (the others are skipped).
    md5: the archive's published MD5 (PADAX_CIFAR_MD5 replaces it).
    cache_dir: where the folder is kept (None: `default_cache_dir()`).
    base_url: where the archive lies (None: PADAX_CIFAR_BASE_URL, else the
      official site).
    connect_timeout: seconds for DNS, connection and response headers.

  Raises:
    DownloadError: naming the URL and the reason; nothing is left behind.
  """
  cache_dir = os.path.abspath(os.path.expanduser(
      os.fspath(cache_dir) if cache_dir else default_cache_dir()))
  target = os.path.join(cache_dir, folder)
  if os.path.isdir(target):
    return target
  url = archive_url(archive, base_url)
  md5 = os.environ.get(MD5_ENV) or md5
  response = _open(url, connect_timeout)
  created = _missing_dirs(cache_dir)
  try:
    try:
      os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
      raise DownloadError(f'cannot create the cache directory {e.filename} '
                          f'({e.strerror or e}).') from None
    with response, tempfile.TemporaryDirectory(
        prefix=f'.{folder}.partial-', dir=cache_dir,
        ignore_cleanup_errors=True) as staging:
      path = os.path.join(staging, archive)
      _save(response, path, md5, url)
      _extract(path, folder, files, os.path.join(staging, folder), url)
      try:
        os.rename(os.path.join(staging, folder), target)
      except OSError:
        if not os.path.isdir(target):  # Else another process was first.
          raise
  except BaseException:
    for directory in created:
      try:
        os.rmdir(directory)
      except OSError:
        break
    raise
  return target


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
  return f'{type(e).__name__}: {e}'


def _open(url: str, timeout: float):
  """The HTTP response for `url`, or DownloadError within `timeout` seconds.

  urlopen's own timeout does not bound name resolution, which can hang for
  much longer offline: the request runs in a daemon thread and is abandoned
  (its late response closed) at the deadline.
  """
  outcome = {}
  abandoned = threading.Event()

  def request():
    try:
      response = urllib.request.urlopen(url, timeout=READ_TIMEOUT_S)
    except Exception as e:  # pylint: disable=broad-except
      outcome['error'] = e
      return
    if abandoned.is_set():
      response.close()
    else:
      outcome['response'] = response

  thread = threading.Thread(target=request, name='padax-download',
                            daemon=True)
  thread.start()
  thread.join(timeout)
  if thread.is_alive():
    abandoned.set()
    thread.join(0.05)
    if 'response' not in outcome:
      raise DownloadError(f'cannot download {url}: no answer within '
                          f'{timeout:g} s (offline?).')
  if 'error' in outcome:
    raise DownloadError(
        f'cannot download {url}: {_reason(outcome["error"])}.') from None
  return outcome['response']


def _save(response, path: str, md5: str, url: str) -> None:
  """Streams the response to `path`, checking its length and MD5."""
  expected = response.headers.get('Content-Length')
  expected = int(expected) if expected and expected.isdigit() else None
  digest = hashlib.md5(usedforsecurity=False)
  size, start = 0, time.monotonic()
  log.info('Downloading %s (%s) to %s', url,
           'size unknown' if expected is None else f'{expected / 2**20:.0f} MiB',
           os.path.dirname(os.path.dirname(path)))
  try:
    f = open(path, 'wb')
  except OSError as e:
    raise DownloadError(f'cannot write {path}: {e.strerror or e}.') from None
  with f:
    while True:
      try:
        chunk = response.read(_CHUNK)
      except (OSError, http.client.HTTPException) as e:
        raise DownloadError(
            f'download of {url} broke off after {size} bytes'
            f'{"" if expected is None else f" of {expected}"} ({_reason(e)}).'
        ) from None
      if not chunk:
        break
      try:
        f.write(chunk)
      except OSError as e:
        raise DownloadError(
            f'cannot write {path}: {e.strerror or e}.') from None
      digest.update(chunk)
      size += len(chunk)
  if expected is not None and size != expected:
    raise DownloadError(f'download of {url} broke off after {size} of '
                        f'{expected} bytes.')
  if digest.hexdigest() != md5:
    raise DownloadError(
        f'{url} is not the expected archive: its MD5 is {digest.hexdigest()}, '
        f'expected {md5} ({size} bytes received); refused.')
  log.info('Downloaded %s: %.0f MiB in %.0f s, MD5 checked', url,
           size / 2**20, time.monotonic() - start)


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
