"""Splitting a CPU host into several XLA devices before JAX starts.

XLA's CPU backend runs one device's program with little parallelism inside an
operation, and its working set is the whole batch. Several host devices run
their programs side by side, each on a smaller working set: on the 2-core
machine of docs/benchmarks.md, 9 sweep members spread one per device trained
2-4x faster than the same 9 members vmapped on one device. On a GPU machine
the CPU devices are not used (jax.devices() lists the GPUs), so the split is
harmless there.
"""

import os
import re

import jax

_COUNT_FLAG = re.compile(r'--xla_force_host_platform_device_count=')


def user_chose_count() -> bool:
  return bool(_COUNT_FLAG.search(os.environ.get('XLA_FLAGS', '')) or
              os.environ.get('JAX_NUM_CPU_DEVICES'))


def split_cpu(count: int) -> bool:
  """Makes the host CPU `count` devices unless the user chose a count.

  Must run before anything asks JAX for its devices; returns whether the
  split was set.
  """
  if count <= 1 or user_chose_count():
    return False
  jax.config.update('jax_num_cpu_devices', count)
  return True
