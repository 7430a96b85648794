"""sweep.py splits a CPU host into one device per member, unless told a count."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = '''
import json, sys
sys.path.insert(0, {root!r})
import jax
from training import host_devices
chosen = host_devices.split_cpu({count})
print(json.dumps([chosen, jax.device_count()]))
'''


def _probe(count, **env):
  base = {k: v for k, v in os.environ.items()
          if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')}
  out = subprocess.run(
      [sys.executable, '-c', _PROBE.format(root=ROOT, count=count)],
      env=dict(base, JAX_PLATFORMS='cpu', **env), capture_output=True,
      text=True, timeout=120, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize('count, env, expected', [
    (3, {}, [True, 3]),
    (1, {}, [False, 1]),
    # The user's own count wins.
    (3, {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}, [False, 2]),
    (3, {'JAX_NUM_CPU_DEVICES': '4'}, [False, 4]),
])
def test_split_cpu(count, env, expected):
  assert _probe(count, **env) == expected


def test_sweep_members_at_once():
  from sweeps import grid  # pylint: disable=g-import-not-at-top
  from sweeps.configs import cpu_subset  # pylint: disable=g-import-not-at-top
  config = cpu_subset.get_config()
  assert grid.members_at_once(config) == 9
  assert grid.members_at_once(config, chunk=4) == 4
  config.sweep.chunk = 3
  assert grid.members_at_once(config) == 3
  assert grid.members_at_once(config, chunk=12) == 9
  assert grid.members_at_once(config, chunk=grid.AUTO_CHUNK) == 9
