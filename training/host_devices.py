"""XLA:CPU set-up before JAX starts: flags, and splitting the host into devices.

train.py and sweep.py call these first. `set_cpu_xla_flags` takes YNNPACK
off XLA's convolutions, which made the paper models' CPU train steps faster.
`split_cpu` makes several host devices that run their programs side by side,
each on a smaller working set: for models whose operations are too small to
keep the cores busy, and for sweep.py's grid; how many is
`config.cpu_devices` (`cpu_devices_per_run`). Neither applies where JAX will
run on an accelerator (`accelerator_expected`). Figures: docs/benchmarks.md.
Nothing here starts a JAX backend.
"""

import importlib.metadata
import os


def _named_flags(environ) -> set:
  """Names (`--name`) of the flags in `environ`'s XLA_FLAGS."""
  return {f.split('=', 1)[0] for f in environ.get('XLA_FLAGS', '').split()}


# Distributions of JAX's accelerator plugins (CUDA, ROCm, TPU).
ACCELERATOR_PLUGINS = ('jax-cuda', 'jax_cuda', 'jax-rocm', 'jax_rocm',
                       'libtpu')


def installed_accelerator_plugins() -> list:
  """Names of the installed distributions that are JAX accelerator plugins."""
  names = {(d.metadata['Name'] or '').lower()
           for d in importlib.metadata.distributions()}
  return sorted(n for n in names if n.startswith(ACCELERATOR_PLUGINS))


def accelerator_expected(environ=os.environ) -> bool:
  """Whether JAX will run on an accelerator, decided before JAX starts (the
  CPU set-up must be done before then): JAX_PLATFORMS, where set, names a
  platform other than the CPU; unset, an accelerator plugin is installed.

  A plugin without its device (a CUDA wheel on a CPU-only machine) counts as
  an accelerator: that host then trains without the CPU set-up, correctly but
  slower; JAX_PLATFORMS=cpu brings the set-up back.
  """
  platforms = [p.strip().lower()
               for p in environ.get('JAX_PLATFORMS', '').split(',')
               if p.strip()]
  if platforms:
    return any(p != 'cpu' for p in platforms)
  return bool(installed_accelerator_plugins())


def split_cpu(count: int, environ=os.environ) -> bool:
  """Makes the host CPU `count` devices, except where the user chose a count
  or an accelerator is expected.

  Must run before anything asks JAX for its devices; returns whether the
  split was set.
  """
  user_chose_count = ('--xla_force_host_platform_device_count' in
                      _named_flags(environ) or
                      environ.get('JAX_NUM_CPU_DEVICES'))
  if count <= 1 or user_chose_count or accelerator_expected(environ):
    return False
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', count)
  return True


# XLA:CPU options for training, as `--name=value` in XLA_FLAGS syntax.
CPU_XLA_FLAGS = (
    # No YNNPACK fusions (XLA:CPU's default, under which a convolution's
    # weight gradient is slow): XLA's own (Eigen) kernels.
    '--xla_cpu_experimental_ynn_fusion_type=',
)


def set_cpu_xla_flags(environ=os.environ) -> list:
  """Adds CPU_XLA_FLAGS to XLA_FLAGS, except those the user's XLA_FLAGS
  already names, and none where an accelerator is expected; returns the ones
  added.

  XLA reads XLA_FLAGS when JAX starts its first backend, so this must run
  before anything asks JAX for its devices.
  """
  if accelerator_expected(environ):
    return []
  named = _named_flags(environ)
  added = [f for f in CPU_XLA_FLAGS if f.split('=', 1)[0] not in named]
  if added:
    environ['XLA_FLAGS'] = ' '.join(
        [environ.get('XLA_FLAGS', '')] + added).strip()
  return added


def largest_divisor(most: int, *sizes: int) -> int:
  """The largest d <= most (at least 1) that divides every one of `sizes`."""
  return max(d for d in range(1, max(most, 1) + 1)
             if all(size % d == 0 for size in sizes))


def cpu_devices_per_run(config) -> int:
  """Devices for one data-parallel run of `config` on a CPU host (train.py,
  and each member of a sweep): `config.cpu_devices` (configs/default.py), as
  far as both batch sizes divide. A value below 1 is refused."""
  count = config.cpu_devices
  if not isinstance(count, int) or isinstance(count, bool) or count < 1:
    raise ValueError(f'cpu_devices={count!r} is not allowed; allowed: an '
                     'integer >= 1 (XLA devices per run on a CPU host).')
  return largest_divisor(count, int(config.batch_size),
                         int(config.eval_batch_size))
