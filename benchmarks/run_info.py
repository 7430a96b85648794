"""Header lines saying when, where and on which code a benchmark ran."""

import datetime
import importlib.metadata
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args) -> str:
  try:
    return subprocess.run(['git', *args], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return '?'


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f
                  if l.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or '?'


def _version(package: str) -> str:
  try:
    return f'{package} {importlib.metadata.version(package)}'
  except importlib.metadata.PackageNotFoundError:
    return f'{package} (not installed)'


def header_lines(packages=('jax', 'jaxlib', 'flax', 'optax', 'numpy')):
  """'# ...' lines: time, machine and its load, versions, and the git state
  of the code the JAX cases ran (read-only queries: models/ and training/
  may hold uncommitted changes while a benchmark runs)."""
  dirty = _git('status', '--porcelain', '--', 'models', 'training',
               'configs', 'padax') or 'clean'
  now = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  return [
      f'# {now}',
      f'# machine: {platform.node()}, {platform.platform()}, {_cpu_model()}, '
      f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at '
      'start',
      f'# Python {platform.python_version()}; '
      + ', '.join(_version(p) for p in packages),
      f'# code: git {_git("rev-parse", "--short", "HEAD")}; models/ '
      f'training/ configs/ padax/: {dirty.replace(chr(10), "; ")}',
  ]
