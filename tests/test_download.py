"""The download data source without internet: archives in the official format,
built from small random batches, served from a local HTTP server on
127.0.0.1 (training/download.py, input_pipeline source='download')."""

import contextlib
import dataclasses
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from configs import default as default_config
from tests.data_fixtures import CIFAR10_ARCHIVE
from tests.data_fixtures import CIFAR10_FILES
from tests.data_fixtures import CIFAR10_FOLDER
from tests.data_fixtures import write_python_archive
from tests.data_fixtures import write_python_layout
from training import download
from training import input_pipeline as ip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ArchiveServer:
  """Serves `files` {name: bytes} over HTTP on 127.0.0.1; `cut_after` bytes
  of a body are sent, then the connection is closed (None: all of it)."""

  def __init__(self, files):
    self.files = dict(files)
    self.cut_after = None
    self.requests = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # pylint: disable=invalid-name
        server.requests.append(self.path)
        body = server.files.get(self.path.lstrip('/'))
        if body is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header('Content-Type', 'application/gzip')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if server.cut_after is None:
          self.wfile.write(body)
        else:
          self.wfile.write(body[:server.cut_after])
          self.wfile.flush()
          self.close_connection = True

      def log_message(self, *args):
        del args

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_port}/mirror'
    self.files = {f'mirror/{k}': v for k, v in self.files.items()}
    self.thread = threading.Thread(target=self.httpd.serve_forever,
                                   daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def archive(tmp_path):
  """(bytes, md5, expected CifarData) of a small official-format archive."""
  folder = write_python_layout(tmp_path / 'src', n_per_file=4, seed=3)
  path = write_python_archive(folder, tmp_path / CIFAR10_ARCHIVE)
  with open(path, 'rb') as f:
    body = f.read()
  expected = ip.load_cifar('cifar10', source='local', data_dir=folder)
  return body, hashlib.md5(body).hexdigest(), expected


def _release(md5, size):
  """CIFAR-10's official release, the archive's MD5 and size replaced."""
  return dataclasses.replace(ip.CIFAR10.layout, md5=md5, size=size)


def assert_same_data(a, b):
  for x, y in ((a.train, b.train), (a.test, b.test)):
    np.testing.assert_array_equal(x.images, y.images)
    np.testing.assert_array_equal(x.labels, y.labels)


def files_under(path):
  return sorted(os.path.relpath(os.path.join(root, name), path)
                for root, dirs, files in os.walk(path)
                for name in dirs + files)


def test_download_checks_extracts_and_caches(tmp_path, archive, monkeypatch):
  body, md5, expected = archive
  cache = tmp_path / 'cache' / 'padax'
  config = default_config.get_config()
  config.data_dir = str(cache)
  assert config.data_source == 'download'
  with ArchiveServer({CIFAR10_ARCHIVE: body}) as server:
    monkeypatch.setenv(download.BASE_URL_ENV, server.url)
    monkeypatch.setenv(download.MD5_ENV, md5)
    data = ip.load(config)
    assert server.requests == [f'/mirror/{CIFAR10_ARCHIVE}']
    assert_same_data(data, expected)
    assert server.url in data.source and str(cache) in data.source
    # Only the extracted folder is kept: no archive, no staging folder.
    assert files_under(cache) == [CIFAR10_FOLDER] + [
        os.path.join(CIFAR10_FOLDER, name)
        for name in sorted(CIFAR10_FILES)]
    # Cached: the second load reads the folder without asking the server.
    again = ip.load(config)
    assert len(server.requests) == 1
    assert_same_data(again, expected)


def test_corrupted_archive_is_refused_and_nothing_kept(tmp_path, archive):
  body, md5, _ = archive
  corrupted = bytearray(body)
  corrupted[len(body) // 2] ^= 0xFF
  cache = tmp_path / 'new' / 'cache'
  with ArchiveServer({CIFAR10_ARCHIVE: bytes(corrupted)}) as server:
    with pytest.raises(download.DownloadError) as info:
      download.fetch(_release(md5, len(body)), cache, base_url=server.url)
  message = str(info.value)
  assert 'not the expected archive' in message and md5 in message
  assert hashlib.md5(corrupted).hexdigest() in message
  # The directories the call created are gone again.
  assert not (tmp_path / 'new').exists()


def test_interrupted_download_leaves_nothing_then_succeeds(tmp_path, archive):
  body, md5, expected = archive
  cache = tmp_path / 'cache'
  cache.mkdir()
  with ArchiveServer({CIFAR10_ARCHIVE: body}) as server:
    server.cut_after = len(body) // 3
    with pytest.raises(download.DownloadError) as info:
      download.fetch(_release(md5, len(body)), cache, base_url=server.url)
    assert 'broke off after' in str(info.value)
    assert f'of {len(body)}' in str(info.value)
    # Nothing half written stays for a later run to find.
    assert files_under(cache) == []
    server.cut_after = None
    folder = download.fetch(_release(md5, len(body)), cache,
                            base_url=server.url)
  assert len(server.requests) == 2
  assert_same_data(ip.load_cifar('cifar10', source='local', data_dir=folder),
                   expected)


def test_archive_without_a_batch_is_refused(tmp_path):
  folder = write_python_layout(tmp_path / 'src', n_per_file=2)
  os.remove(os.path.join(folder, 'test_batch'))
  path = write_python_archive(folder, tmp_path / CIFAR10_ARCHIVE)
  with open(path, 'rb') as f:
    body = f.read()
  with ArchiveServer({CIFAR10_ARCHIVE: body}) as server:
    with pytest.raises(download.DownloadError, match='lacks cifar-10-batches-'
                       'py/test_batch'):
      download.fetch(_release(hashlib.md5(body).hexdigest(), len(body)),
                     tmp_path / 'cache', base_url=server.url)
  assert not (tmp_path / 'cache').exists()


def test_silent_host_fails_at_the_deadline(tmp_path):
  # A socket that is listening but never answers: the kernel completes the
  # connection, the request waits for a response that never comes.
  with contextlib.closing(socket.socket()) as silent:
    silent.bind(('127.0.0.1', 0))
    silent.listen(1)
    url = f'http://127.0.0.1:{silent.getsockname()[1]}'
    start = time.monotonic()
    with pytest.raises(download.DownloadError, match='no answer within 0.5 s'):
      download.fetch(_release('0' * 32, 1 << 20), tmp_path / 'cache',
                     base_url=url, connect_timeout=0.5)
    assert time.monotonic() - start < 3
  assert not (tmp_path / 'cache').exists()


@pytest.mark.slow
def test_train_py_offline_fails_fast_with_the_local_flags(tmp_path):
  """train.py, default data source, no server: one error line naming the
  flags for a local copy and the archive's URL, at once, nothing left."""
  with contextlib.closing(socket.socket()) as s:
    s.bind(('127.0.0.1', 0))
    closed_port = s.getsockname()[1]  # Closed again: connections refused.
  home = tmp_path / 'home'
  home.mkdir()
  env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / '.cache'),
             TMPDIR=str(home), PADAX_CIFAR_BASE_URL=f'http://127.0.0.1:'
             f'{closed_port}')
  env.pop(download.MD5_ENV, None)
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  workdir = tmp_path / 'workdirs' / 'quick'
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, 'train.py', '--config', 'configs/quick.py',
       f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=120, check=False)
  seconds = time.monotonic() - start
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr
  assert ('--config.data_source=local --config.data_dir=DATA_DIR'
          in errors[0]), errors
  assert 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz' in errors[0]
  assert 'Connection refused' in errors[0]
  assert 'Traceback' not in result.stderr and 'libtpu' not in result.stderr
  # About 5 s on an idle 2-core machine, all of it starting Python and JAX
  # (the connection fails at once), 20 s on a busy one: the bound catches
  # retries (TFDS tried for 210 s), not the machine's load.
  assert seconds < 60, (seconds, result.stderr)
  assert files_under(home) == [] and not (tmp_path / 'workdirs').exists()
