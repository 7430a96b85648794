"""Optax's own test battery for contributed optimizers, run on padax (issue 23).

Optax ships the tests it asks of every contributed optimizer inside its wheel:
`optax/contrib/_common_test.py` (convergence on four targets, extra keyword
arguments without recompiling, `inject_hyperparams`, dtypes, `MultiSteps`,
stability under `lax.cond`, schedules) and `optax/_src/sharding_test.py`
(state types and shardings on an explicit 8-device mesh). Here both are loaded
from the INSTALLED optax, never copied: each module's top-level statements run
in order from optax's own file, and only between the statements that define
its list of optimizers and its test classes are those lists replaced by
padax's rows (the classes are parameterized when they are defined). Every test
body and tolerance is optax's. `_get_opt_factory`, which looks names up in
optax's modules, is replaced in the same pause by one that knows padax's.

The sharding tests need 8 devices, which XLA:CPU only simulates when started
with XLA_FLAGS=--xla_force_host_platform_device_count=8, so they run in a
subprocess (pytest on this file, with PADAX_OPTAX_SHARDING_BATTERY=1). Two
things there are not optax's as shipped: its `jax` is seen through a proxy
whose `__version__` compares as a version (optax skips its sharding-in-types
tests when `jax.__version__ < '0.7.2'`, a string comparison that is true for
jax 0.10), and its `test_microbatch_with_explicit_sharding`, which checks
`optax.microbatching` and no optimizer, is left out.

A missing module, list or class (an optax that does not ship the battery or
has reshaped it) skips with the reason.
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import padax

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDING_ENV = 'PADAX_OPTAX_SHARDING_BATTERY'

# The rows of the battery's optimizer lists: padam with its defaults, with
# p = 1/4, with each other formulation, with an explicit zero and a nonzero
# L2 weight decay; padamw with its default and with a zero decay.
_LR = 1e-2
PADAX_ROWS = tuple(
    dict(opt_name=name, opt_kwargs=dict(learning_rate=_LR, **kwargs),
         wrapper_name=None, wrapper_kwargs=None)
    for name, kwargs in (
        ('padam', {}),
        ('padam', {'p': 0.25}),
        ('padam', {'formulation': padax.PAPER}),
        ('padam', {'formulation': padax.REPORT}),
        ('padam', {'weight_decay': 0.0}),
        ('padam', {'weight_decay': 5e-4}),
        ('padamw', {}),
        ('padamw', {'weight_decay': 0.0}),
    ))
_FACTORIES = {'padam': padax.padam, 'padamw': padax.padamw}


def _padax_factory(opt_name):
  return _FACTORIES[opt_name]


def load_battery(module_name: str, replacements: dict, class_name: str):
  """The namespace of `module_name` run with `replacements` set in it
  between its last top-level statement before its first class and that
  class. Skips (at module level) when anything, `class_name` included, is
  missing."""
  try:
    spec = importlib.util.find_spec(module_name)
  except ModuleNotFoundError:  # a parent package is missing
    spec = None
  if spec is None or spec.origin is None:
    pytest.skip(f'the installed optax has no {module_name} (optax\'s test '
                'battery); nothing to run', allow_module_level=True)
  with open(spec.origin, encoding='utf-8') as f:
    source = f.read()
  body = ast.parse(source, spec.origin).body
  first_class = next((i for i, node in enumerate(body)
                      if isinstance(node, ast.ClassDef)), len(body))
  module = types.ModuleType(f'{__name__}.{module_name}')
  module.__file__ = spec.origin
  namespace = module.__dict__

  def run(nodes):
    exec(compile(ast.Module(body=nodes, type_ignores=[]), spec.origin,  # pylint: disable=exec-used
                 'exec'), namespace)

  run(body[:first_class])
  missing = sorted(set(replacements) - set(namespace))
  if missing:
    pytest.skip(f'{module_name} of the installed optax defines no '
                f'{", ".join(missing)} before its tests; cannot substitute '
                'padax\'s optimizers', allow_module_level=True)
  namespace.update(replacements)
  run(body[first_class:])
  if class_name not in namespace:
    pytest.skip(f'{module_name} of the installed optax has no {class_name}',
                allow_module_level=True)
  return namespace


def _sharding_optimizers():
  """The battery's OPTIMIZERS dict, in its form: name -> optimizer."""
  out = {}
  for row in PADAX_ROWS:
    kwargs = ','.join(f'{k}={v}' for k, v in row['opt_kwargs'].items())
    out[f'{row["opt_name"]}({kwargs})'] = _padax_factory(row['opt_name'])(
        **row['opt_kwargs'])
  return out


class _VersionString(str):
  """A version string that compares as a version: optax's sharding tests
  skip themselves when `jax.__version__ < '0.7.2'`, a comparison of strings,
  true for jax 0.10.x. Their intent, skipping on a jax older than 0.7.2, is
  kept."""

  def _key(self, other):
    numbers = lambda v: tuple(int(n) for n in re.findall(r'\d+', v)[:3])
    return numbers(self), numbers(other)

  def __lt__(self, other):
    mine, theirs = self._key(other)
    return mine < theirs


class _JaxWithVersion(types.ModuleType):
  """jax, whose __version__ is a `_VersionString`."""

  def __getattr__(self, name):
    return getattr(jax, name)


if os.environ.get(SHARDING_ENV) == '1':
  # Only in the 8-device subprocess that test_sharding_battery starts.
  _jax = _JaxWithVersion('jax')
  _jax.__version__ = _VersionString(jax.__version__)
  ShardingBattery = load_battery(
      'optax._src.sharding_test',
      {'OPTIMIZERS': _sharding_optimizers(), 'jax': _jax},
      'ShardingTest')['ShardingTest']
else:
  _CONTRIB = load_battery(
      'optax.contrib._common_test',
      {'_MAIN_OPTIMIZERS_UNDER_TEST': PADAX_ROWS,
       '_ALL_OPTIMIZERS_UNDER_TEST': PADAX_ROWS,
       '_get_opt_factory': _padax_factory},
      'ContribTest')
  ContribBattery = _CONTRIB['ContribTest']

  def test_padam_at_lr_0_1_misses_the_battery_rosenbrock_amsgrad_does_not():
    """What the README says where a learning rate is chosen: on the
    battery's Rosenbrock target, with its 30,000 steps and tolerance, Padam
    with p = 1/8 does not converge at lr 0.1 in any formulation while
    optax.amsgrad does; at lr 0.01 all do."""
    if '_setup_rosenbrock' not in _CONTRIB:
      pytest.skip('the battery of the installed optax has no Rosenbrock')
    start, final, objective = _CONTRIB['_setup_rosenbrock'](jnp.float32)
    optimizers = {}
    for lr in (0.1, 0.01):
      optimizers['amsgrad', lr] = optax.amsgrad(lr)
      for formulation in padax.FORMULATIONS:
        optimizers[formulation, lr] = padax.padam(lr, p=0.125,
                                                  formulation=formulation)

    def descend(optimizer):
      def step(carry, _):
        x, state = carry
        updates, state = optimizer.update(jax.grad(objective)(x), state, x)
        return (optax.apply_updates(x, updates), state), None
      return jax.lax.scan(step, (start, optimizer.init(start)), None,
                          length=30_000)[0][0]

    ends = jax.jit(lambda: [descend(o) for o in optimizers.values()])()
    converged = {key: bool(np.allclose(x, final, rtol=3e-2, atol=3e-2))
                 for key, x in zip(optimizers, ends)}
    assert converged == {key: key[0] == 'amsgrad' or key[1] == 0.01
                         for key in optimizers}, converged

  def test_sharding_battery(tmp_path):
    """optax's sharding tests with padax's rows, on 8 simulated CPU devices
    (a subprocess: this process's backend is started with its own count)."""
    if importlib.util.find_spec('optax._src.sharding_test') is None:
      pytest.skip('the installed optax has no optax/_src/sharding_test.py')
    flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                   os.environ.get('XLA_FLAGS', ''))
    env = dict(os.environ, JAX_PLATFORMS='cpu', **{SHARDING_ENV: '1'},
               XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count=8'
               .strip())
    env.pop('PYTEST_XDIST_WORKER', None)
    # Its test_microbatch_with_explicit_sharding checks optax.microbatching,
    # no optimizer (and fails on jax 0.10 with optax 0.2.8, once its version
    # check is read as a version): left out.
    out = subprocess.run(
        [sys.executable, '-m', 'pytest', os.path.abspath(__file__), '-q',
         '-p', 'no:xdist', '-p', 'no:cacheprovider', '-rs',
         '-k', 'not test_microbatch_with_explicit_sharding',
         f'--basetemp={tmp_path / "basetemp"}'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        check=False)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ''
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    counts = {word: int(n) for n, word in re.findall(r'(\d+) (\w+)', summary)}
    expected = 3 * len(PADAX_ROWS)  # 3 tests per optimizer row
    assert counts.get('passed', 0) + counts.get('skipped', 0) == expected, (
        out.stdout[-4000:])
    if counts.get('skipped'):
      # optax's own tests skip themselves on a jax without sharding in types.
      pytest.skip(f'{counts["skipped"]} of optax\'s {expected} sharding tests '
                  f'skipped themselves: {out.stdout[-1500:]}')
