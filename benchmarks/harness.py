"""What the benchmark scripts share: train.py's set-up, the run header, CPU
meters, interleaved rounds and markdown tables."""

import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

_TICKS = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100


def use_train_py_setup(mimalloc: bool = True, xla_flags: bool = True):
  """train.py's allocator (mimalloc where installed: may restart this
  process, so call it first) and XLA:CPU flags, inherited by the processes
  this one starts."""
  # pylint: disable=g-import-not-at-top
  from training import allocator, host_devices
  # pylint: enable=g-import-not-at-top
  if mimalloc:
    allocator.use_mimalloc()
  if xla_flags:
    host_devices.set_cpu_xla_flags()


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
  """'# ...' lines: time, machine and its load, versions, this process's
  allocator, and the git state
  of the code the JAX cases ran (read-only queries: models/ and training/
  may hold uncommitted changes while a benchmark runs)."""
  from training import allocator  # pylint: disable=g-import-not-at-top
  dirty = _git('status', '--porcelain', '--', 'models', 'training',
               'configs', 'padax') or 'clean'
  now = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  return [
      f'# {now}',
      f'# machine: {platform.node()}, {platform.platform()}, {_cpu_model()}, '
      f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at '
      'start',
      f'# Python {platform.python_version()}; '
      + ', '.join(_version(p) for p in packages)
      + f'; {allocator.describe()}',
      f'# code: git {_git("rev-parse", "--short", "HEAD")}; models/ '
      f'training/ configs/ padax/: {dirty.replace(chr(10), "; ")}',
  ]


def print_header(*lines: str, packages=None):
  """header_lines, then `lines` (the run's settings)."""
  head = header_lines(*([packages] if packages else []))
  print('\n'.join(head + list(lines)), flush=True)


def table(header, rows) -> list:
  """Markdown lines: `header` (the first column left-aligned), then a line
  per row of cells."""
  return ['| ' + ' | '.join(header) + ' |',
          '|---|' + '---:|' * (len(header) - 1)] + [
              '| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]


def print_table(header, rows):
  """`table`, printed a row at a time as `rows` yields them."""
  head, rule = table(header, [])
  print(head, rule, sep='\n', flush=True)
  for row in rows:
    print(table(header, [row])[-1], flush=True)


def rounds(cases, count: int):
  """`count` rounds of `cases`, the order rotated each round, so that drift in
  the machine's speed hits every case alike."""
  cases = list(cases)
  for index in range(count):
    shift = index % len(cases)
    yield cases[shift:] + cases[:shift]


def paired_median(times, base_times) -> float:
  """Median of the per-round ratios: round i of both cases ran close in time,
  so this is less sensitive to drift than the ratio of the medians."""
  return statistics.median(t / b for t, b in zip(times, base_times))


def _own_ticks():
  try:
    with open('/proc/self/stat') as f:
      stat = f.read()
  except OSError:
    return None
  # Fields after the parenthesised command name (which may contain spaces);
  # utime and stime are fields 14 and 15 of the whole line.
  fields = stat[stat.rindex(')') + 2:].split()
  return int(fields[11]) + int(fields[12])


def _machine_busy_ticks():
  try:
    with open('/proc/stat') as f:
      values = [int(v) for v in f.readline().split()[1:]]
  except OSError:
    return None
  # user nice system idle iowait irq softirq steal [guest guest_nice]; guest
  # time is already counted in user and nice.
  return sum(values[:8]) - values[3] - values[4]


class CpuMeter:
  """How many CPU cores a timed region kept busy, Linux only (reads /proc).

  Context manager; after the block: `wall_s`, `own_cpu_s` (this process's
  user + system time, all threads), `other_cpu_s` (the whole machine's busy
  time minus own: the load of other processes) and their averages over the
  wall time, `own_cores` and `other_cores`; None where /proc cannot be read.
  Resolution is one clock tick (usually 10 ms): time a second or more.
  """

  def __enter__(self):
    self._own = _own_ticks()
    self._machine = _machine_busy_ticks()
    self._t0 = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.wall_s = time.perf_counter() - self._t0
    own, machine = _own_ticks(), _machine_busy_ticks()
    self.own_cpu_s = self.other_cpu_s = None
    if own is not None and self._own is not None:
      self.own_cpu_s = (own - self._own) / _TICKS
      if machine is not None and self._machine is not None:
        machine_s = (machine - self._machine) / _TICKS
        # Ticks of the two files are sampled at slightly different moments.
        self.other_cpu_s = max(machine_s - self.own_cpu_s, 0.0)
    self.own_cores = cores(self.own_cpu_s, self.wall_s)
    self.other_cores = cores(self.other_cpu_s, self.wall_s)
    return False


class Tally:
  """The timed regions of one case: `times` (one per region) and the sums of
  CpuMeter's wall and CPU seconds (None once a region's is unknown)."""

  def __init__(self):
    self.times = []
    self.wall_s = self.own_cpu_s = self.other_cpu_s = 0.0

  def add(self, seconds, wall_s, own_cpu_s, other_cpu_s):
    self.times.append(seconds)
    self.wall_s += wall_s
    self.own_cpu_s = _plus(self.own_cpu_s, own_cpu_s)
    self.other_cpu_s = _plus(self.other_cpu_s, other_cpu_s)

  def summary(self) -> dict:
    """The times, their median, the CPU seconds and the cores kept busy."""
    return dict(times=self.times, median_s=statistics.median(self.times),
                wall_s=self.wall_s, own_cpu_s=self.own_cpu_s,
                other_cpu_s=self.other_cpu_s,
                own_cores=cores(self.own_cpu_s, self.wall_s),
                other_cores=cores(self.other_cpu_s, self.wall_s))


def _plus(total, value):
  return None if total is None or value is None else total + value


def cores(cpu_s, wall_s):
  """Average number of cores busy: CPU seconds / wall seconds (None-safe)."""
  if cpu_s is None or not wall_s:
    return None
  return cpu_s / wall_s


def fmt(value, spec: str = '.2f') -> str:
  """`value` formatted, or '-' for None."""
  return '-' if value is None else format(value, spec)
