"""Downloads within bounds, and the data messages (issue 25, classes 6 and 8).

Each case goes through what train.py runs for its data, `cli.run(lambda:
input_pipeline.load(config))`, against a local HTTP server on 127.0.0.1
(tests/download_server.py), and asserts the exit status, the one message
line, no traceback, the time it took, and the files in and around the cache
(or data folder) before and after. The progress window is lowered to 1 s
(PADAX_CIFAR_MIN_PROGRESS) so that a trickle or a stall ends within seconds.
"""

import dataclasses
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

import pytest

from configs import default as default_config
from tests.data_fixtures import CIFAR10_ARCHIVE
from tests.data_fixtures import CIFAR10_FILES
from tests.data_fixtures import CIFAR10_FOLDER
from tests.data_fixtures import write_python_archive
from tests.data_fixtures import write_python_layout
from tests.download_server import ArchiveHost
from tests.helpers import write_cifar10
from training import cli
from training import download
from training import input_pipeline as ip

pytestmark = pytest.mark.slow


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bytes before a stall: the example (headers, 100 KB, silence).
STALL_AFTER = 102400
# The progress rule of these tests: 20000 bytes in each 1 s window.
MIN_PROGRESS = '20000/1'
# Every failing case ends within this many seconds (one window, a few reads,
# a loaded 2-core machine).
BOUND_S = 6.0
# The official archive's size, from its publication (not from padax).
OFFICIAL_SIZE = 170498071
OFFICIAL_MD5 = 'c58f30108f718f92721af3b95e74349a'
PARTIAL = f'.{CIFAR10_FOLDER}.partial-'


def tree(path):
  """Every file and folder under `path`: a file's size, mtime and digest, a
  folder's mode (not its mtime, which a removed partial changes)."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs:
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = ('dir', os.lstat(full).st_mode)
    for name in files:
      full = os.path.join(root, name)
      st = os.lstat(full)
      with open(full, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns, digest)
  return out


@pytest.fixture(scope='module')
def archive(tmp_path_factory):
  """(bytes, md5) of an official-format archive of about 150 KB."""
  tmp = tmp_path_factory.mktemp('archive')
  folder = write_python_layout(tmp / 'src', n_per_file=8, seed=5)
  path = write_python_archive(folder, tmp / CIFAR10_ARCHIVE)
  with open(path, 'rb') as f:
    body = f.read()
  assert len(body) > STALL_AFTER + 20000
  return body, hashlib.md5(body).hexdigest()


@pytest.fixture
def sigterm_recorded():
  """SIGTERM recorded, not fatal, while a test sends it to itself: a signal
  that came too late fails the test instead of killing pytest."""
  received = []
  previous = signal.signal(signal.SIGTERM,
                           lambda signum, frame: received.append(signum))
  yield received
  signal.signal(signal.SIGTERM, previous)


def load_like_train_py(data_dir, source='download'):
  """(exit status, seconds) of train.py's data step: cli.run maps the
  exceptions to a status and one `error:` line on stderr."""
  config = default_config.get_config()
  config.data_source = source
  config.data_dir = str(data_dir)
  start = time.monotonic()
  try:
    cli.run(lambda: ip.load(config))
    status = 0
  except SystemExit as e:
    status = e.code
  return status, time.monotonic() - start


def one_error_line(stderr: str) -> str:
  assert 'Traceback' not in stderr, stderr
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), stderr
  return lines[0][len('error: '):]


def send_to_self(signum):
  return lambda: os.kill(os.getpid(), signum)


def saved_bytes(cache) -> int:
  """Bytes in the partial archives under `cache` (0 when there are none)."""
  total = 0
  for root, _, files in os.walk(cache):
    total += sum(os.path.getsize(os.path.join(root, name)) for name in files
                 if name == CIFAR10_ARCHIVE and PARTIAL in root)
  return total


def when_saved(cache, count, action):
  """on_stall: `action()` once the download has written `count` bytes to
  its partial archive (a signal then interrupts a download certainly in
  progress, with a known count); 10 s at most."""
  def wait_then_act():
    deadline = time.monotonic() + 10
    while saved_bytes(cache) < count and time.monotonic() < deadline:
      time.sleep(0.01)
    action()
  return wait_then_act


@dataclasses.dataclass(frozen=True)
class Case:
  """One case: `server` (ArchiveHost keyword arguments, `mode` included;
  None: not asked), `env` on top of the mirror's, the exit status, a regex
  the one message line must match ({url}, {size}, {md5} filled in), and
  what the cache is left with (None: as it was)."""
  name: str
  origin: str  # 'issue': its example; 'found': found while fixing it.
  server: Optional[dict]
  status: int
  message: str
  env: dict = dataclasses.field(default_factory=dict)
  # setup(area, the archive's bytes) before the run.
  setup: Optional[Callable] = None
  after: Optional[Callable] = None  # after(before tree) -> expected tree.
  source: str = 'download'  # Data in AREA/cache; 'local': in AREA/data.
  warning: Optional[str] = None  # A regex: the one warning line, if any.


def stale_partial(area, body):
  del body
  stale = area / 'cache' / f'{PARTIAL}killed'
  stale.mkdir(parents=True)
  (stale / CIFAR10_ARCHIVE).write_bytes(b'\x1f\x8b' + bytes(5000))


def without_stale(before):
  return {k: v for k, v in before.items() if not k.startswith(
      os.path.join('cache', PARTIAL))}


DOWNLOAD_CASES = [
    Case('trickle', 'issue', dict(mode='trickle', interval=0.1), 2,
         r'download of {url} too slow: \d+ bytes in [\d.]+ s, fewer than 20000 '
         r'per 1 s \(PADAX_CIFAR_MIN_PROGRESS\), after \d+ of {size} bytes; '
         r'given up\.'),
    Case('stall after 100 KB', 'issue',
         dict(mode='stall', stall_after=STALL_AFTER), 2,
         rf'download of {{url}} stalled: nothing arrived for 1 s, after '
         rf'{STALL_AFTER} of {{size}} bytes; given up\.'),
    Case('endless body, no Content-Length', 'issue', dict(mode='endless'), 2,
         r'download of {url} refused: \d+ bytes arrived, more than the '
         r'{size} of the archive; nothing kept\.'),
    Case('Content-Length above the size', 'issue',
         dict(mode='whole', length='{size+1}'), 2,
         r'cannot download {url}: the server announces {size+1} bytes '
         r'\(Content-Length\), the archive has {size}; refused before '
         r'downloading\.'),
    Case('SIGTERM mid-download', 'issue',
         dict(mode='stall', stall_after=STALL_AFTER,
              on_stall=send_to_self(signal.SIGTERM)), 130,
         rf'interrupted \(SIGTERM\) during the download of {{url}}, after '
         rf'{STALL_AFTER} of {{size}} bytes; nothing kept \(the next run '
         r'downloads it again\)\.'),
    Case('stale partial, then a stall', 'issue',
         dict(mode='stall', stall_after=STALL_AFTER), 2,
         rf'download of {{url}} stalled: nothing arrived for 1 s, after '
         rf'{STALL_AFTER} of {{size}} bytes; given up\.',
         setup=stale_partial, after=without_stale),
    # Found while fixing the above:
    Case('SIGTERM before the headers', 'found',
         dict(mode='silent', on_request=send_to_self(signal.SIGTERM)), 130,
         r'interrupted \(SIGTERM\) during the download of {url}, after 0 of '
         r'{size} bytes; nothing kept'),
    Case('Content-Length below the size', 'found',
         dict(mode='whole', length='{size-1}'), 2,
         r'cannot download {url}: the server announces {size-1} bytes '
         r'\(Content-Length\), the archive has {size}; refused before '
         r'downloading\.'),
    Case('another MD5, Content-Length above the official size', 'found',
         dict(mode='whole', length=str(OFFICIAL_SIZE + 1)), 2,
         rf'cannot download {{url}}: the server announces {OFFICIAL_SIZE + 1} '
         rf'bytes \(Content-Length\), more than the {OFFICIAL_SIZE} bytes of '
         r'the official archive \(PADAX_CIFAR_SIZE sets the size of '
         r'another\); refused before downloading\.',
         env={download.SIZE_ENV: None}),
    Case('a bad PADAX_CIFAR_MIN_PROGRESS', 'found', dict(mode='whole'), 2,
         r"PADAX_CIFAR_MIN_PROGRESS='fast' is not allowed; allowed: "
         r'BYTES/SECONDS, .*e\.g\. 1048576/60\.$',
         env={download.MIN_PROGRESS_ENV: 'fast'}),
]


def run_case(case, area, archive, monkeypatch, capsys, caplog):
  """Runs `case` in `area`; returns (message line or None, ArchiveHost)."""
  body, md5 = archive
  size = len(body)
  if case.setup:
    case.setup(area, body)
  before = tree(area)
  fill = lambda text: text.format(size=size, md5=md5, **{
      'size+1': size + 1, 'size-1': size - 1})
  caplog.set_level(logging.WARNING)
  server = dict(case.server or {'mode': 'whole'})  # None: never asked.
  if isinstance(server.get('length'), str):
    server['length'] = int(fill(server['length']))
  cache = area / ('data' if case.source == 'local' else 'cache')
  if server.get('on_stall'):
    server['on_stall'] = when_saved(cache, server['stall_after'],
                                    server['on_stall'])
  with ArchiveHost(body, **server) as host:
    env = {download.BASE_URL_ENV: host.url, download.MD5_ENV: md5,
           download.SIZE_ENV: str(size),
           download.MIN_PROGRESS_ENV: MIN_PROGRESS, **case.env}
    for key, value in env.items():
      if value is None:
        monkeypatch.delenv(key, raising=False)
      else:
        monkeypatch.setenv(key, value)
    status, seconds = load_like_train_py(cache, case.source)
  stderr = capsys.readouterr().err
  assert status == case.status, (case.name, stderr)
  assert seconds < BOUND_S, (case.name, seconds)
  after = tree(area)
  message = None
  if case.status:
    message = one_error_line(stderr)
    url = re.escape(f'{host.url}/{CIFAR10_ARCHIVE}')
    pattern = fill(case.message.replace('{url}', url))
    assert re.match(pattern, message), (case.name, pattern, message)
  else:
    assert 'Traceback' not in stderr and 'error' not in stderr, stderr
  if case.status or case.source == 'local':  # Else the download is cached.
    assert (case.after or (lambda b: b))(before) == after, case.name
  if case.server is None:
    assert host.requests == [], case.name
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING]
  if case.warning is None:
    assert warnings == [], (case.name, warnings)
  else:
    assert len(warnings) == 1, (case.name, warnings)
    assert re.match(fill(case.warning) + '$', warnings[0]), (case.name,
                                                             warnings)
  return message, host


@pytest.mark.parametrize('case', DOWNLOAD_CASES, ids=lambda c: c.name)
def test_download_bounds(case, tmp_path, archive, monkeypatch, capsys, caplog,
                         sigterm_recorded):
  area = tmp_path / 'area'
  (area / 'cache').mkdir(parents=True)
  (area / 'notes.txt').write_text('next to the cache')
  (area / 'cache' / 'other-dataset').mkdir()
  if case.name == 'SIGTERM before the headers':
    (area / 'cache' / 'other-dataset').rmdir()
    (area / 'cache').rmdir()  # The cache's folder too is not left behind.
  message, host = run_case(case, area, archive, monkeypatch, capsys, caplog)
  assert sigterm_recorded == []  # Every signal reached the download.
  if case.name == 'trickle':
    received = int(re.search(r'after (\d+) of', message).group(1))
    assert 0 < received <= host.sent < 50, (received, host.sent)
  if case.name == 'endless body, no Content-Length':
    received = int(re.search(r'refused: (\d+) bytes', message).group(1))
    assert len(archive[0]) < received <= host.sent
  if case.name == 'a bad PADAX_CIFAR_MIN_PROGRESS':
    assert host.requests == []  # Refused before connecting.


def successful_download(area, archive, monkeypatch, capsys, caplog):
  case = Case('whole', 'issue', dict(mode='whole'), 0, '')
  run_case(case, area, archive, monkeypatch, capsys, caplog)
  return tree(area)


CHILD = '''
import sys
from training import cli, input_pipeline
cli.run(lambda: input_pipeline.load_cifar('cifar10', source='download',
                                           data_dir=sys.argv[1]))
'''


def start_child_download(cache, url, archive):
  """A download in another process against a stalled server; returns the
  process once its partial holds the bytes before the stall."""
  body, md5 = archive
  env = dict(os.environ, PADAX_CIFAR_BASE_URL=url, PADAX_CIFAR_MD5=md5,
             PADAX_CIFAR_SIZE=str(len(body)), PADAX_CIFAR_MIN_PROGRESS='1/30')
  before = set(os.listdir(cache))
  child = subprocess.Popen([sys.executable, '-c', CHILD, str(cache)], cwd=ROOT,
                           env=env, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    new = [n for n in set(os.listdir(cache)) - before if n.startswith(PARTIAL)]
    archive_path = new and os.path.join(cache, new[0], CIFAR10_ARCHIVE)
    if new and os.path.exists(archive_path) and os.path.getsize(
        archive_path) == STALL_AFTER:
      return child, new[0]
    assert child.poll() is None, child.communicate()
    time.sleep(0.05)
  child.kill()
  raise AssertionError('the child download did not start')


def test_stale_partials_are_reclaimed_live_ones_kept(tmp_path, archive,
                                                     monkeypatch, capsys,
                                                     caplog):
  """A download killed by SIGKILL leaves its partial (nothing can clean up
  then); the next run removes it, but not the partial of a download still
  running (it holds the partial's lock), which cleans up after itself."""
  area = tmp_path / 'area'
  cache = area / 'cache'
  cache.mkdir(parents=True)
  with ArchiveHost(archive[0], 'stall', stall_after=STALL_AFTER) as stalled:
    running, running_partial = start_child_download(cache, stalled.url,
                                                    archive)
    try:
      # Started while the first runs, which it leaves alone; then killed.
      killed, killed_partial = start_child_download(cache, stalled.url,
                                                    archive)
      killed.kill()
      killed.communicate(timeout=10)
      assert sorted(os.listdir(cache)) == sorted([killed_partial,
                                                  running_partial])
      done = successful_download(area, archive, monkeypatch, capsys, caplog)
      # The killed download's partial is gone, the running one's kept.
      assert sorted(os.listdir(cache)) == sorted([CIFAR10_FOLDER,
                                                  running_partial])
      assert sorted(os.listdir(cache / CIFAR10_FOLDER)) == sorted(
          CIFAR10_FILES)
    finally:
      start = time.monotonic()
      running.send_signal(signal.SIGTERM)
      _, stderr = running.communicate(timeout=20)
  assert time.monotonic() - start < BOUND_S
  assert running.returncode == 130, stderr
  assert re.match(r'interrupted \(SIGTERM\) during the download of .*, after '
                  f'{STALL_AFTER} of {len(archive[0])} bytes; nothing kept',
                  one_error_line(stderr)), stderr
  running_files = os.path.join('cache', running_partial)
  assert tree(area) == {k: v for k, v in done.items()
                        if not k.startswith(running_files)}


def test_train_py_sigterm_mid_download_keeps_nothing(tmp_path, archive):
  """End to end: `python train.py`, default data source, SIGTERM while the
  archive downloads: exit 130, one line, HOME and the workdir as before."""
  body, md5 = archive
  home = tmp_path / 'home'
  (home / '.cache').mkdir(parents=True)
  (home / '.cache' / 'other.txt').write_text('kept')
  before = tree(tmp_path)
  process = []
  with ArchiveHost(body, 'stall', stall_after=STALL_AFTER,
                   on_stall=when_saved(
                       home / '.cache', STALL_AFTER,
                       lambda: process[0].send_signal(signal.SIGTERM))
                   ) as host:
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / '.cache'),
               TMPDIR=str(home), PADAX_CIFAR_BASE_URL=host.url,
               PADAX_CIFAR_MD5=md5, PADAX_CIFAR_SIZE=str(len(body)))
    env.pop('JAX_COMPILATION_CACHE_DIR', None)
    start = time.monotonic()
    process.append(subprocess.Popen(
        [sys.executable, 'train.py', '--config', 'configs/quick.py',
         f'--workdir={tmp_path / "workdirs" / "quick"}'], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    _, stderr = process[0].communicate(timeout=120)
    seconds = time.monotonic() - start
  assert process[0].returncode == 130, stderr
  assert host.requests == [f'/mirror/{CIFAR10_ARCHIVE}']
  errors = [l for l in stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, stderr
  assert re.match(
      r'error: interrupted \(SIGTERM\) during the download of '
      f'{re.escape(host.url)}/{CIFAR10_ARCHIVE}, after {STALL_AFTER} of '
      f'{len(body)} bytes; nothing kept', errors[0]), errors
  assert 'Traceback' not in stderr
  # Starting Python and JAX (seconds, more on a loaded machine); the
  # download itself ends at the signal.
  assert seconds < 60, (seconds, stderr)
  assert tree(tmp_path) == before


# ---------------------------------------------------------------------------
# The data messages (class 8): local archives and folders.


def write_archive(area, content: bytes):
  (area / 'data').mkdir(parents=True)
  (area / 'data' / CIFAR10_ARCHIVE).write_bytes(content)


def cut_archive(area, body):
  write_archive(area, body[:len(body) * 2 // 3])


def layout_with(num_train, num_test, empty_file=None):
  def setup(area, body):
    del body
    write_cifar10(area / 'data', num_train, num_test, seed=2)
    if empty_file:
      (area / 'data' / CIFAR10_FOLDER / empty_file).write_bytes(b'')
  return setup


WEB_PAGE = b'<html><body>404 Not Found</body></html>\n'
OFFICIAL = (rf'expected the official {CIFAR10_ARCHIVE} \({OFFICIAL_SIZE} '
            rf'bytes, MD5 {OFFICIAL_MD5}\)\.$')

MESSAGE_CASES = [
    Case('0-byte archive', 'issue', None, 2,
         rf'.*/data/{CIFAR10_ARCHIVE}: the file is empty \(0 bytes\); '
         + OFFICIAL, setup=lambda area, _: write_archive(area, b''),
         source='local'),
    Case('empty test split', 'issue', None, 2,
         rf'.*/data/{CIFAR10_FOLDER} \(test\): the split is empty\.$',
         setup=layout_with(10, 0), source='local'),
    Case('first Ctrl-C during a download', 'issue',
         dict(mode='stall', stall_after=STALL_AFTER,
              on_stall=send_to_self(signal.SIGINT)), 130,
         rf'interrupted \(SIGINT\) during the download of {{url}}, after '
         rf'{STALL_AFTER} of {{size}} bytes; nothing kept \(the next run '
         r'downloads it again\)\.$'),
    Case('local archive not the official one', 'issue', None, 0, '',
         setup=write_archive,
         source='local',
         warning=(rf'.*/data/{CIFAR10_ARCHIVE} has MD5 {{md5}}, not the '
                  rf'official {OFFICIAL_MD5} of {CIFAR10_ARCHIVE}: the '
                  r"results may differ from the official data's\.")),
    # Found while fixing the above:
    Case('a web page saved as the archive', 'found', None, 2,
         rf'.*/data/{CIFAR10_ARCHIVE}: cannot read the CIFAR-10 archive '
         rf'\({len(WEB_PAGE)} bytes\): not a tar archive, compressed or not '
         r'\(ReadError: file could not be opened successfully\); ' + OFFICIAL,
         setup=lambda area, _: write_archive(area, WEB_PAGE), source='local'),
    Case('archive cut short', 'found', None, 2,
         rf'.*/data/{CIFAR10_ARCHIVE}: cannot read the CIFAR-10 archive '
         r'\(\d+ bytes\): it is cut short or damaged \(EOFError: .*\); '
         + OFFICIAL, setup=cut_archive, source='local'),
    Case('0-byte batch file', 'found', None, 2,
         rf'.*/data/{CIFAR10_FOLDER}/test_batch: the file is empty \(0 bytes'
         r'\); expected a CIFAR python batch file\.$',
         setup=layout_with(10, 3, empty_file='test_batch'), source='local'),
    Case('empty train split', 'found', None, 2,
         rf'.*/data/{CIFAR10_FOLDER} \(train\): the split is empty\.$',
         setup=layout_with(0, 3), source='local'),
]


@pytest.mark.parametrize('case', MESSAGE_CASES, ids=lambda c: c.name)
def test_data_messages(case, tmp_path, archive, monkeypatch, capsys, caplog):
  area = tmp_path / 'area'
  (area / 'cache').mkdir(parents=True)
  (area / 'notes.txt').write_text('next to the data')
  message, _ = run_case(case, area, archive, monkeypatch, capsys, caplog)
  if message:
    assert 'second Ctrl-C' not in message


def test_a_bare_keyboard_interrupt_keeps_its_message(capsys):
  """cli.run prints a download.Interrupted's own message; a KeyboardInterrupt
  without one is still the second Ctrl-C of a run (exit 130 both)."""
  def interrupt():
    raise KeyboardInterrupt
  with pytest.raises(SystemExit) as info:
    cli.run(interrupt)
  assert info.value.code == 130
  assert one_error_line(capsys.readouterr().err) == (
      'interrupted by a second Ctrl-C before a checkpoint was saved; the run '
      'resumes from its last checkpoint.')
