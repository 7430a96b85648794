"""CPU host set-up: the device split (train.py, sweep.py) and XLA:CPU flags."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from training import host_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = '''
import json, sys
sys.path.insert(0, {root!r})
import jax
from training import host_devices
chosen = host_devices.split_cpu({count})
print(json.dumps([chosen, jax.device_count()]))
'''


def _python(code, **env):
  """stdout of `python -c code` in a fresh process, without our XLA set-up."""
  base = {k: v for k, v in os.environ.items()
          if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')}
  return subprocess.run(
      [sys.executable, '-c', code], env=dict(base, JAX_PLATFORMS='cpu', **env),
      capture_output=True, text=True, timeout=120, check=True).stdout


def _probe(count, **env):
  out = _python(_PROBE.format(root=ROOT, count=count), **env)
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize('count, env, expected', [
    (3, {}, [True, 3]),
    (1, {}, [False, 1]),
    # The user's own count wins.
    (3, {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}, [False, 2]),
    (3, {'JAX_NUM_CPU_DEVICES': '4'}, [False, 4]),
])
@pytest.mark.slow
def test_split_cpu(count, env, expected):
  assert _probe(count, **env) == expected


@pytest.mark.parametrize('plugins, environ, expected', [
    ([], {}, False),
    (['jax-cuda12-plugin'], {}, True),
    (['libtpu'], {}, True),
    ([], {'JAX_PLATFORMS': 'cuda'}, True),
    ([], {'JAX_PLATFORMS': 'cpu,tpu'}, True),
    (['jax-cuda12-plugin'], {'JAX_PLATFORMS': 'cpu'}, False),
])
def test_cpu_set_up_never_applies_on_accelerator_hosts(monkeypatch, plugins,
                                                       environ, expected):
  """The flags and the split are for XLA:CPU: none where JAX will run on a
  GPU or TPU (simulated: the installed plugins and JAX_PLATFORMS are what
  host_devices asks about)."""
  monkeypatch.setattr(host_devices, 'installed_accelerator_plugins',
                      lambda: plugins)
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.delenv('JAX_NUM_CPU_DEVICES', raising=False)
  assert host_devices.accelerator_expected(environ) == expected
  flags_env = dict(environ)
  added = host_devices.set_cpu_xla_flags(flags_env)
  assert bool(added) == (not expected)
  assert ('XLA_FLAGS' in flags_env) == (not expected)
  if expected:  # Refused before touching JAX: safe in this process.
    assert not host_devices.split_cpu(4, environ)


def _run_config(**values):
  config = ml_collections.ConfigDict(
      dict(model='tiny_cnn', batch_size=128, eval_batch_size=500,
           cpu_devices=1))
  config.update(values)
  return config


@pytest.mark.parametrize('values, devices', [
    ({}, 1),
    ({'cpu_devices': 4}, 4),
    ({'cpu_devices': 4, 'model': 'resnet18'}, 4),  # The key, not the model.
    ({'cpu_devices': 3}, 2),  # 3 divides neither batch size; 2 both.
    ({'cpu_devices': 8, 'eval_batch_size': 100}, 4),
])
def test_cpu_devices_per_run_from_the_config_key(values, devices):
  assert host_devices.cpu_devices_per_run(_run_config(**values)) == devices


@pytest.mark.parametrize('value', [0, -2, 1.5, True, '4'])
def test_cpu_devices_refuses_a_bad_value(value):
  config = _run_config()
  del config['cpu_devices']
  config.cpu_devices = value  # A config file may give any type.
  with pytest.raises(ValueError) as info:
    host_devices.cpu_devices_per_run(config)
  assert str(info.value) == (
      f'cpu_devices={value!r} is not allowed; allowed: an integer >= 1 (XLA '
      'devices per run on a CPU host).')


def test_config_defaults():
  from configs import default, quick  # pylint: disable=g-import-not-at-top
  assert default.get_config().cpu_devices == 1
  assert quick.get_config().cpu_devices == 4


def test_sweep_members_at_once():
  from sweeps import spec  # pylint: disable=g-import-not-at-top
  from sweeps.configs import cpu_subset  # pylint: disable=g-import-not-at-top
  config = cpu_subset.get_config()
  assert spec.members_at_once(config) == 9
  assert spec.members_at_once(config, chunk=4) == 4
  config.sweep.chunk = 3
  assert spec.members_at_once(config) == 3
  assert spec.members_at_once(config, chunk=12) == 9
  assert spec.members_at_once(config, chunk=spec.AUTO_CHUNK) == 9


@pytest.mark.parametrize('before, after', [
    ('', '--xla_cpu_experimental_ynn_fusion_type='),
    ('--xla_force_host_platform_device_count=4',
     '--xla_force_host_platform_device_count=4 '
     '--xla_cpu_experimental_ynn_fusion_type='),
    # The user's own value wins.
    ('--xla_cpu_experimental_ynn_fusion_type=individual_dot',
     '--xla_cpu_experimental_ynn_fusion_type=individual_dot'),
])
def test_set_cpu_xla_flags(before, after):
  from training import host_devices  # pylint: disable=g-import-not-at-top
  environ = {'XLA_FLAGS': before} if before else {}
  host_devices.set_cpu_xla_flags(environ)
  assert environ['XLA_FLAGS'] == after


_CONV_PROBE = '''
import sys
sys.path.insert(0, {root!r})
from training import host_devices
if {set_flags}:
  host_devices.set_cpu_xla_flags()
import jax, jax.numpy as jnp
x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum()
print(jax.jit(jax.grad(conv, argnums=1)).lower(x, w).compile().as_text())
'''


@pytest.mark.slow
def test_cpu_xla_flags_take_convolutions_off_ynnpack():
  """What train.py's flags are for: XLA:CPU compiles a convolution's weight
  gradient to its own kernel, not to a YNNPACK fusion (the default here)."""
  def compiled(set_flags):
    return _python(_CONV_PROBE.format(root=ROOT, set_flags=set_flags))
  assert 'ynn' in compiled(False).lower()
  with_flags = compiled(True)
  assert 'convolution(' in with_flags and 'ynn' not in with_flags.lower()
