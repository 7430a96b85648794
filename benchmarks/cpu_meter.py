"""How many CPU cores a timed region kept busy: this process's and the others'.

Linux only (reads /proc); elsewhere the counts are None. own = this
process's user + system time, all threads (/proc/self/stat); other = the
whole machine's busy time (/proc/stat: all but idle and iowait) minus own,
the load of other processes, which slows the region down and which the
interleaving of cases is meant to spread evenly. Resolution is one clock
tick (usually 10 ms) per sample: use regions of a second or more.
"""

import os
import time

_TICKS = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100


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
  """Context manager; after the block: `wall_s`, `own_cpu_s`, `other_cpu_s`
  (CPU seconds used in it by this process and by all others), and their
  averages over the wall time, `own_cores` and `other_cores` (None where
  /proc cannot be read).
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


def cores(cpu_s, wall_s):
  """Average number of cores busy: CPU seconds / wall seconds (None-safe)."""
  if cpu_s is None or not wall_s:
    return None
  return cpu_s / wall_s


def fmt(value, spec: str = '.2f') -> str:
  """`value` formatted, or '-' for None."""
  return '-' if value is None else format(value, spec)
