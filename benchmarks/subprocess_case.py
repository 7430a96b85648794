"""One benchmark case in a fresh Python process with its own environment.

XLA reads XLA_FLAGS and JAX its JAX_* variables once, when the first backend
starts: a case that needs other values than the running process runs in a
new one, `subprocess_case.run(measure, dict(model='resnet18'), devices=4)`.
"""

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def environment(env: Optional[dict] = None,
                devices: Optional[int] = None) -> dict:
  """os.environ with `env` applied and, given `devices`, XLA_FLAGS asking for
  that many CPU devices (replacing any count already there)."""
  out = dict(os.environ)
  for key, value in (env or {}).items():
    if value is None:
      out.pop(key, None)
    else:
      out[key] = str(value)
  if devices is not None:
    flags = [f for f in out.get('XLA_FLAGS', '').split()
             if not f.startswith(DEVICE_COUNT_FLAG)]
    out['XLA_FLAGS'] = ' '.join(flags + [f'{DEVICE_COUNT_FLAG}={devices}'])
  return out


def _command(function: Callable, kwargs: Optional[dict], root: str,
             *serve: str) -> list:
  return [sys.executable, os.path.abspath(__file__), root,
          os.path.abspath(inspect.getfile(function)), function.__name__,
          json.dumps(kwargs or {}), *serve]


def run(function: Callable, kwargs: Optional[dict] = None, *,
        env: Optional[dict] = None, devices: Optional[int] = None,
        root: str = ROOT):
  """`function(**kwargs)` in a fresh process; returns its JSON result.

  `function` is a module-level function of a benchmark script (imported in
  the child, not run). The child imports the project's code from `root` and
  inherits this process's environment (LD_PRELOAD too, so mimalloc) with
  `env` applied (None removes a variable); its stderr is this process's.
  """
  out = subprocess.run(_command(function, kwargs, root),
                       env=environment(env, devices), check=True,
                       stdout=subprocess.PIPE, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


class Server:
  """A long-lived child process, for cases that must not recompile every
  call: `function(**kwargs)` (as for `run`) returns (calls, info), named
  callables and a JSON-able dict; `call(name)` runs one there and returns
  its JSON result."""

  def __init__(self, function: Callable, kwargs: Optional[dict] = None, *,
               env: Optional[dict] = None):
    self.process = subprocess.Popen(
        _command(function, kwargs, ROOT, 'serve'), env=environment(env),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    self.info = self._read()

  def _read(self):
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f'benchmark server {self.process.args} exited with '
                         f'{self.process.wait()} (its stderr is above)')
    return json.loads(line)

  def call(self, name: str):
    self.process.stdin.write(name + '\n')
    return self._read()

  def close(self):
    self.process.stdin.close()
    self.process.wait()


def _main(root: str, script: str, name: str, kwargs: str, serve: str = ''):
  sys.path[:0] = [root, HERE]
  # Results go to a private copy of stdout; stdout itself then goes to
  # stderr, so that nothing a library prints can be taken for a result.
  reply = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)
  module_spec = importlib.util.spec_from_file_location('benchmark_case',
                                                       script)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  result = getattr(module, name)(**json.loads(kwargs))
  if serve:
    calls, result = result
  reply.write(json.dumps(result) + '\n')
  if serve:
    for line in sys.stdin:
      reply.write(json.dumps(calls[line.strip()]()) + '\n')


if __name__ == '__main__':
  _main(*sys.argv[1:])
