"""Test helper: an HTTP server on 127.0.0.1 that serves one archive well or
badly (tests of training/download.py's bounds).

  with ArchiveHost(body, 'stall', stall_after=102400) as host:
    os.environ['PADAX_CIFAR_BASE_URL'] = host.url

Modes, for a GET of any path:
  'whole': Content-Length `length` (default len(body)), then the body.
  'trickle': Content-Length, then one byte every `interval` seconds.
  'stall': Content-Length, `stall_after` bytes, then silence.
  'endless': no Content-Length, random bytes until the client hangs up.
  'silent': the request is read, no answer at all.
`on_request()` and `on_stall()` (after the bytes before a stall) run in the
server's thread: a test sends its signal from there, while the download is
certainly in progress. Every loop ends by itself: when the test leaves the
`with` block, when the client hangs up, or after MAX_SECONDS.
"""

import http.server
import threading
import time

import numpy as np

MAX_SECONDS = 20.0
_BLOCK = 1 << 16


class ArchiveHost:
  """Serves `body` in `mode` (see the module docstring) on 127.0.0.1."""

  def __init__(self, body: bytes, mode: str = 'whole', *, length=None,
               stall_after: int = 0, interval: float = 0.1,
               on_request=None, on_stall=None):
    assert mode in ('whole', 'trickle', 'stall', 'endless', 'silent'), mode
    self.body = body
    self.mode = mode
    self.length = len(body) if length is None else length
    self.stall_after = stall_after
    self.interval = interval
    self.on_request = on_request
    self.on_stall = on_stall
    self.requests = []
    self.sent = 0  # Body bytes written (those the client may have read).
    self.stop = threading.Event()
    host = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # pylint: disable=invalid-name
        host.requests.append(self.path)
        try:
          host.serve(self)
        except (BrokenPipeError, ConnectionResetError):
          pass  # The client gave up: as it should.
        self.close_connection = True

      def log_message(self, *args):
        del args

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f'http://127.0.0.1:{self.httpd.server_port}/mirror'
    self.thread = threading.Thread(target=self.httpd.serve_forever,
                                   kwargs={'poll_interval': 0.05}, daemon=True)

  def _wait(self, seconds: float) -> bool:
    """Sleeps; False once the server is to stop."""
    return not self.stop.wait(seconds)

  def _send(self, handler, data: bytes) -> None:
    handler.wfile.write(data)
    handler.wfile.flush()
    self.sent += len(data)

  def serve(self, handler) -> None:
    deadline = time.monotonic() + MAX_SECONDS
    if self.on_request:
      self.on_request()
    if self.mode == 'silent':
      while time.monotonic() < deadline and self._wait(0.05):
        pass
      return
    handler.send_response(200)
    handler.send_header('Content-Type', 'application/gzip')
    if self.mode != 'endless':
      handler.send_header('Content-Length', str(self.length))
    handler.end_headers()
    handler.wfile.flush()
    if self.mode == 'whole':
      self._send(handler, self.body)
    elif self.mode == 'trickle':
      for i in range(len(self.body)):
        if time.monotonic() > deadline or not self._wait(self.interval):
          return
        self._send(handler, self.body[i:i + 1])
    elif self.mode == 'stall':
      self._send(handler, self.body[:self.stall_after])
      if self.on_stall:
        self.on_stall()
      while time.monotonic() < deadline and self._wait(0.05):
        pass
    else:  # endless
      block = np.random.default_rng(0).bytes(_BLOCK)
      while time.monotonic() < deadline and not self.stop.is_set():
        self._send(handler, block)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.stop.set()
    self.httpd.shutdown()
    self.httpd.server_close()
