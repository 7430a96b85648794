"""XLA:CPU set-up before JAX starts: flags, and splitting the host into devices.

train.py and sweep.py call these first. `set_cpu_xla_flags` takes YNNPACK
off XLA's convolutions, which made the paper models' CPU train steps
2.5-3.8x faster (docs/benchmarks.md). `split_cpu` makes several host devices that run their
programs side by side, each on a smaller working set: for models whose
operations are too small to keep the cores busy (the tiny CNN: 1.12x on 4
devices), and for sweep.py's grid (members side by side). On a GPU machine
neither matters (jax.devices() lists the GPUs; the flags are XLA:CPU's).
"""

import os

import jax


def _flag_name(flag: str) -> str:
  return flag.split('=', 1)[0]


def _named_flags(environ) -> set:
  """Names (`--name`) of the flags in `environ`'s XLA_FLAGS."""
  return {_flag_name(f) for f in environ.get('XLA_FLAGS', '').split()}


def user_chose_count() -> bool:
  return bool('--xla_force_host_platform_device_count' in
              _named_flags(os.environ) or
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


# XLA:CPU options for training, as `--name=value` in XLA_FLAGS syntax.
CPU_XLA_FLAGS = (
    # No YNNPACK fusions: convolutions then run on XLA's own (Eigen) kernels.
    # With YNNPACK (XLA:CPU's default in JAX 0.10) a convolution's weight
    # gradient took 10-20x its forward pass, and ResNet18's train step ran
    # 3.5x slower (WRN-16-4 3.8x, VGG16 2.5x; docs/benchmarks.md). Ignored
    # on GPU hosts.
    '--xla_cpu_experimental_ynn_fusion_type=',
)


def set_cpu_xla_flags(environ=os.environ) -> list:
  """Adds CPU_XLA_FLAGS to XLA_FLAGS, except those the user's XLA_FLAGS
  already names; returns the ones added.

  XLA reads XLA_FLAGS when JAX starts its first backend, so this must run
  before anything asks JAX for its devices.
  """
  named = _named_flags(environ)
  added = [f for f in CPU_XLA_FLAGS if _flag_name(f) not in named]
  if added:
    environ['XLA_FLAGS'] = ' '.join(
        [environ.get('XLA_FLAGS', '')] + added).strip()
  return added


# Devices per data-parallel run on a CPU host (train.py, and each sweep
# member), by model; models not listed get 1. Under CPU_XLA_FLAGS XLA's
# convolutions keep both cores busy by themselves: the paper's models ran
# their batch-128 step 8-18% faster on one device than on 4, while the tiny
# CNN, whose operations are too small for that, gained 1.12x from 4
# (docs/benchmarks.md).
CPU_DEVICES_PER_RUN = {'tiny_cnn': 4}


def largest_divisor(most: int, *sizes: int) -> int:
  """The largest d <= most (at least 1) that divides every one of `sizes`."""
  return max(d for d in range(1, max(most, 1) + 1)
             if all(size % d == 0 for size in sizes))


def cpu_devices_per_run(config) -> int:
  """Devices for one data-parallel run of `config` on a CPU host: up to
  CPU_DEVICES_PER_RUN's count for its model, as far as both batch sizes
  divide."""
  return largest_divisor(CPU_DEVICES_PER_RUN.get(str(config.model), 1),
                         int(config.batch_size), int(config.eval_batch_size))
