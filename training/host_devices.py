"""Splitting a CPU host into several XLA devices before JAX starts.

XLA's CPU backend runs one device's program with little parallelism inside an
operation (on the 2-core machine of docs/benchmarks.md its two compute
threads were busy 56% of a ResNet18 step), and its working set is the whole
batch. Several host devices run their programs side by side, each on a
smaller working set: train.py's step data parallel over 4 virtual devices
ran 1.2-2.8x as many images/s as on one, and sweep.py's grid likewise. On a
GPU machine the CPU devices are not used (jax.devices() lists the GPUs), so
the split is harmless there.
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


# Devices per data-parallel run on a CPU host (train.py, and each sweep
# member): a quarter of a 128 batch per device (docs/benchmarks.md).
CPU_DEVICES_PER_RUN = 4


def largest_divisor(most: int, *sizes: int) -> int:
  """The largest d <= most (at least 1) that divides every one of `sizes`."""
  return max(d for d in range(1, max(most, 1) + 1)
             if all(size % d == 0 for size in sizes))


def cpu_devices_per_run(config) -> int:
  """Devices for one data-parallel run of `config` on a CPU host: up to
  CPU_DEVICES_PER_RUN, as far as both batch sizes divide."""
  return largest_divisor(CPU_DEVICES_PER_RUN, int(config.batch_size),
                         int(config.eval_batch_size))
