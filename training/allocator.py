"""mimalloc under train.py and sweep.py on a Linux CPU host.

XLA:CPU allocates each step's large temporaries afresh, which glibc's malloc
maps from the kernel and unmaps when freed, page faults every step. mimalloc,
told to keep freed memory (MIMALLOC_PURGE_DELAY=-1), reuses the same pages
(docs/benchmarks.md). An allocator is chosen when a process starts, so
`use_mimalloc` restarts the script (os.execve, same PID) with mimalloc in
LD_PRELOAD. Not where mimalloc (`cmeel-mimalloc`, requirements/train.txt) is
not installed, off Linux, where JAX will run on an accelerator, when the user
set LD_PRELOAD, or with PADAX_ALLOCATOR=system. Numerics do not depend on the
allocator (tests/test_allocator.py).
"""

import importlib.metadata
import os
import sys
from typing import Optional

from training import host_devices

ENV_VAR = 'PADAX_ALLOCATOR'
CHOICES = ('mimalloc', 'system')
# Keep freed pages mapped for reuse instead of returning them to the kernel.
MIMALLOC_SETTINGS = {'MIMALLOC_PURGE_DELAY': '-1'}


def mimalloc_library() -> Optional[str]:
  """Path of the installed libmimalloc.so, or None."""
  try:
    dist = importlib.metadata.distribution('cmeel-mimalloc')
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in dist.files or ():
    if file.name.startswith('libmimalloc.so'):
      path = str(dist.locate_file(file))
      if os.path.exists(path):
        return path
  return None


def mimalloc_environment(environ) -> Optional[dict]:
  """The environment to restart with, or None to keep this process as is."""
  choice = environ.get(ENV_VAR, 'mimalloc')
  if choice not in CHOICES:
    raise ValueError(f'{ENV_VAR}={choice!r} is not allowed; allowed: '
                     f'{", ".join(CHOICES)}.')
  if (choice == 'system' or not sys.platform.startswith('linux') or
      environ.get('LD_PRELOAD') or
      host_devices.accelerator_expected(environ)):
    return None
  library = mimalloc_library()
  if library is None:
    return None
  env = dict(environ)
  env['LD_PRELOAD'] = library  # Also marks the restart: no second one.
  for key, value in MIMALLOC_SETTINGS.items():
    env.setdefault(key, value)
  return env


def use_mimalloc(environ=os.environ) -> None:
  """Restarts this script under mimalloc where `mimalloc_environment` says
  so; call first thing in a script's `__main__` block."""
  env = mimalloc_environment(environ)
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.executable, not orig_argv[0]: the same interpreter however named.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def describe() -> str:
  """This process's allocator (mimalloc where it is mapped in memory), for
  logs and benchmark headers."""
  try:
    with open('/proc/self/maps', encoding='utf-8') as maps:
      active = any('libmimalloc' in line for line in maps)
  except OSError:
    active = False
  return 'mimalloc' if active else 'system malloc'
