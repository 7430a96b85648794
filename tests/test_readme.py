"""The README's Optax example and recipes run as written, and do what they say.

A recipe's code block follows a `<!-- readme-test: NAME -->` line; each test
runs its block and checks the result against an independent computation.
"""

import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from tests import padam_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')


def _readme():
  with open(README) as f:
    return f.read()


def _block(name):
  found = re.findall(
      rf'<!-- readme-test: {re.escape(name)} -->\n```python\n(.*?)```',
      _readme(), re.S)
  assert len(found) == 1, f'README has {len(found)} blocks named {name!r}'
  return found[0]


def _run(code, name):
  namespace = {}
  exec(compile(code, f'README.md ({name})', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_readme_python_example_runs():
  blocks = re.findall(r'```python\n(.*?)```', _readme(), re.S)
  assert blocks, 'README has no python example'
  params = _run(blocks[0], 'first example')['params']
  # One Padam step moved the parameters.
  assert float(abs(params['w'] - 1.0).max()) > 0


def test_every_recipe_block_is_tested():
  names = re.findall(r'<!-- readme-test: (\S+) -->', _readme())
  tested = {n[len('test_recipe_'):].replace('_', '-')
            for n in globals() if n.startswith('test_recipe_')}
  assert set(names) == tested, (names, tested)


class _CompileLog(logging.Handler):

  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def test_recipe_nnx():
  """Trains, p changes at step 5, and train_step compiles once."""
  handler = _CompileLog()
  logger = logging.getLogger('jax')
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      ns = _run(_block('nnx'), 'nnx')
  finally:
    logger.removeHandler(handler)
  compiled = [m for m in handler.messages
              if 'Compiling' in m and 'train_step' in m]
  assert len(compiled) == 1, compiled
  optimizer = ns['optimizer']
  assert float(optimizer.opt_state.hyperparams['p'][...]) == 0.125
  assert int(optimizer.step[...]) == 10
  # The loss went down from the first step's.
  first = jnp.mean((ns['nnx'].Linear(4, 1, rngs=ns['nnx'].Rngs(0))(ns['x'])
                    - ns['y'])**2)
  assert float(ns['loss']) < float(first)


def test_recipe_groups():
  """Each group's updates are those of padam with its own p, alone."""
  ns = _run(_block('groups'), 'groups')
  params, grads, updates = ns['params'], ns['grads'], ns['updates']
  kernel = padam_reference.padam_updates(
      [params['conv']['kernel']], [[grads['conv']['kernel']]], lr=0.1,
      p=1 / 8, weight_decay=5e-4)[0][0]
  np.testing.assert_allclose(updates['conv']['kernel'], kernel, rtol=1e-5)
  for group, leaf in (('conv', 'bias'), ('bn', 'scale'), ('bn', 'bias')):
    other = padam_reference.padam_updates(
        [params[group][leaf]], [[grads[group][leaf]]], lr=0.1, p=0.0)[0][0]
    np.testing.assert_allclose(updates[group][leaf], other, rtol=1e-5)
  # p = 0 and p = 1/8 really differ here.
  assert not np.allclose(updates['conv']['bias'][0], kernel.ravel()[0])


def test_recipe_padamw():
  ns = _run(_block('padamw'), 'padamw')
  np.testing.assert_allclose(ns['updates']['w'], -1e-3 * 0.05 * np.ones((4, 3)),
                             rtol=1e-6)
  np.testing.assert_array_equal(ns['updates']['b'], np.zeros(3))


def test_recipe_decaying_p(capsys):
  ns = _run(_block('decaying-p'), 'decaying-p')
  assert capsys.readouterr().out.split() == ['0.25', '0.125']
  p = ns['p']
  assert [float(p(e * 391)) for e in (0, 49, 50, 100, 150)] == [
      0.25, 0.25, 0.125, 0.0625, 0.03125]


def test_recipe_sharding():
  """Run on 8 simulated CPU devices (a subprocess: this process has one)."""
  code = _block('sharding') + textwrap.dedent('''
      import json
      print(json.dumps(dict(
          devices=jax.device_count(),
          params=str(params['w'].sharding.spec),
          spec=[str(s) for s in (state[0].mu['w'].sharding.spec,
                                 state[0].nu['w'].sharding.spec,
                                 state[0].nu_max['w'].sharding.spec,
                                 state[0].mu['b'].sharding.spec)])))
      ''')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      os.environ.get('XLA_FLAGS', '') +
      ' --xla_force_host_platform_device_count=8').strip())
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  result = json.loads(lines[-1])
  assert result['devices'] == 8
  sharded = result['params']
  assert 'model' in sharded
  assert result['spec'][:3] == [sharded] * 3, result
  assert 'model' not in result['spec'][3]
  # The recipe's own print shows the sharded spec too.
  assert lines[-2].count('model') == 2, lines
