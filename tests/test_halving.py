"""sweeps/halving.py against hand-computed rungs, decisions and gathers."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sweeps import halving
from training import rundir

NAN = float('nan')


@pytest.mark.parametrize('first, eta, num_epochs, expected', [
    (1, 3, 10, (1, 3, 9)),
    (1, 3, 9, (1, 3)),     # no decision at the last epoch
    (2, 2, 9, (2, 4, 8)),
    (1, 3, 1, ()),
    (1, 0, 10, ()),        # off
])
def test_rung_epochs(first, eta, num_epochs, expected):
  assert halving.rung_epochs(first, eta, num_epochs) == expected


@pytest.mark.parametrize('num_live, eta, expected',
                         [(9, 3, 3), (4, 3, 2), (1, 3, 1), (8, 2, 4),
                          (5, 2, 3)])
def test_survivor_count(num_live, eta, expected):
  assert halving.survivor_count(num_live, eta) == expected
  assert len(halving.survivors([0.5] * num_live, eta)) == expected


@pytest.mark.parametrize('errors, eta, expected', [
    # 0.1 at 2 and 5, then 0.2 at 7; diverged members last.
    ([0.3, NAN, 0.1, 0.3, None, 0.1, 0.5, 0.2, NAN], 3, [2, 5, 7]),
    # A three-way tie at 0.2: the earliest member goes on.
    ([0.5, 0.2, 0.2, 0.2], 2, [1, 2]),
    ([0.2, 0.1, 0.2, 0.2], 3, [0, 1]),
    # Too few finite errors: the earliest diverged member goes on too.
    ([NAN, None, 0.9, NAN], 2, [0, 2]),
    ([NAN, NAN, NAN], 2, [0, 1]),
    ([math.inf, 0.9], 2, [1]),
    ([0.7], 3, [0]),
])
def test_survivors(errors, eta, expected):
  assert halving.survivors(errors, eta) == expected


@pytest.mark.parametrize('members, eta, rungs, num_epochs, expected', [
    (9, 3, (1, 3), 9, 9 * 1 + 3 * 2 + 1 * 6),
    (9, 3, (1, 3, 9), 10, 9 * 1 + 3 * 2 + 1 * 6 + 1 * 1),
    (4, 3, (2,), 5, 4 * 2 + 2 * 3),
    (8, 2, (2, 4, 8), 9, 8 * 2 + 4 * 2 + 2 * 4 + 1 * 1),
    (9, 3, (), 9, 9 * 9),
])
def test_member_epochs(members, eta, rungs, num_epochs, expected):
  assert halving.member_epochs(members, eta, rungs, num_epochs) == expected


def _config(sweep=None):
  config = ml_collections.ConfigDict({'num_epochs': 9})
  if sweep is not None:
    config.sweep = sweep
  return config


@pytest.mark.parametrize('config, expected', [
    (_config(), (0, 1)),
    (_config({'p': [0.125]}), (0, 1)),
    (_config({'halving': {'eta': 3}}), (3, 1)),
    (_config({'halving': {'eta': 0, 'first_rung_epochs': 2}}), (0, 2)),
    (_config({'halving': {'eta': np.int64(2), 'first_rung_epochs': 4}}),
     (2, 4)),
])
def test_halving_options(config, expected):
  options = halving.halving_options(config)
  assert options == expected and all(type(v) is int for v in options)


@pytest.mark.parametrize('block, key, value, allowed', [
    ({'eta': 1}, 'eta', 1, '0 (off) or an integer >= 2'),
    ({'eta': -2}, 'eta', -2, '0 (off) or an integer >= 2'),
    ({'eta': 2.5}, 'eta', 2.5, '0 (off) or an integer >= 2'),
    ({'eta': '3'}, 'eta', '3', '0 (off) or an integer >= 2'),
    ({'eta': True}, 'eta', True, '0 (off) or an integer >= 2'),
    ({'eta': 3, 'first_rung_epochs': 0}, 'first_rung_epochs', 0,
     'an integer >= 1'),
    ({'eta': 3, 'first_rung_epochs': 1.5}, 'first_rung_epochs', 1.5,
     'an integer >= 1'),
    ({'eta': 3, 'first_rung_epochs': 'one'}, 'first_rung_epochs', 'one',
     'an integer >= 1'),
    ({'eta': 3, 'rungs': 4}, 'rungs', 4,
     'only the keys eta, first_rung_epochs'),
])
def test_halving_options_refused(block, key, value, allowed):
  with pytest.raises(ValueError) as e:
    halving.halving_options(_config({'halving': block}))
  assert str(e.value) == (f'sweep.halving.{key}={value!r} is not allowed; '
                          f'allowed: {allowed}.')


def test_halving_options_eta_1_message():
  with pytest.raises(ValueError, match='^sweep\\.halving\\.eta=1 is not '
                     'allowed; allowed: 0 \\(off\\) or an integer >= 2\\.$'):
    halving.halving_options(_config({'halving': {'eta': 1}}))


@pytest.mark.parametrize('block', [3, 0, 'eta=3'])
def test_halving_block_not_a_block_refused(block):
  with pytest.raises(ValueError) as e:
    halving.halving_options(_config({'halving': block}))
  assert str(e.value) == (f'sweep.halving={block!r} is not allowed; allowed: '
                          'a block of the keys eta, first_rung_epochs.')


def _stacked():
  return {'w': np.arange(12, dtype=np.float32).reshape(4, 3),
          'opt': (jnp.arange(4, dtype=jnp.int32) * 10,
                  jnp.asarray([[1., 2.], [3., 4.], [5., 6.], [7., 8.]],
                              dtype=jnp.bfloat16)),
          'rng': jax.random.split(jax.random.key(0), 4)}


def test_gather_members_hand_picked():
  tree = _stacked()
  gathered = halving.gather_members(tree, [3, 1])
  np.testing.assert_array_equal(gathered['w'], [[9., 10., 11.], [3., 4., 5.]])
  assert gathered['w'].dtype == np.float32
  np.testing.assert_array_equal(gathered['opt'][0], [30, 10])
  assert gathered['opt'][0].dtype == jnp.int32
  np.testing.assert_array_equal(gathered['opt'][1].astype(np.float32),
                                [[7., 8.], [3., 4.]])
  assert gathered['opt'][1].dtype == jnp.bfloat16
  keys = jax.random.key_data(tree['rng'])
  np.testing.assert_array_equal(jax.random.key_data(gathered['rng']),
                                np.stack([keys[3], keys[1]]))
  assert halving.gather_members(tree, [])['w'].shape == (0, 3)


@pytest.mark.parametrize('indices', [[4], [-1], [[0, 1]]])
def test_gather_members_bad_indices_refused(indices):
  # jax would clamp an index out of range silently.
  with pytest.raises(ValueError, match='^member indices .*leaves lead with 4 '
                     'members.*allowed: a list of indices in '
                     '\\[0, n\\)'):
    halving.gather_members(_stacked(), indices)


@pytest.mark.parametrize('tree', [
    {'a': np.zeros(4), 'b': np.zeros(3)},
    {'a': np.zeros(4), 'count': np.int32(0)},   # no member axis
])
def test_gather_members_unstacked_refused(tree):
  with pytest.raises(ValueError, match='^member indices \\[0\\] are not '
                     'allowed \\(leaves lead with no common count of '
                     'members\\)'):
    halving.gather_members(tree, [0])


def _rung():
  return halving.Rung.decide(3, 2, ['a', 'b', 'c', 'd'],
                             [0.4, NAN, 0.1, 0.4])


def test_rung_decide():
  rung = _rung()
  assert rung.survivors == ('a', 'c')
  assert rung.val_errors == (0.4, None, 0.1, 0.4)


def test_rung_record_round_trip(tmp_path):
  path = str(tmp_path / 'rung_3.json')
  writes = []
  def write(p, text):
    writes.append(p)
    rundir.atomic_write(p, text)
  _rung().write(write, path)
  assert writes == [path]
  with open(path, encoding='utf-8') as f:
    assert json.load(f) == {'epoch': 3, 'eta': 2,
                            'members': ['a', 'b', 'c', 'd'],
                            'val_errors': [0.4, None, 0.1, 0.4],
                            'survivors': ['a', 'c']}
  assert halving.Rung.read(path) == _rung()


@pytest.mark.parametrize('damage', [
    lambda text: text[:len(text) // 2],
    lambda text: '[]',
    lambda text: text.replace('"c"\n  ]', '"d"\n  ]'),   # survivors changed
    lambda text: text.replace('0.1', '0.9'),             # an error changed
    lambda text: text.replace('"eta": 2', '"eta": 1'),
    lambda text: text.replace('"epoch"', '"epochs"'),
    lambda text: text.replace('null', '"nan"'),
    lambda text: text.replace('"b"', '"a"'),             # a name repeats
])
def test_damaged_rung_record_refused(tmp_path, damage):
  path = str(tmp_path / 'rung_3.json')
  text = _rung().to_json()
  damaged = damage(text)
  assert damaged != text
  with open(path, 'w', encoding='utf-8') as f:
    f.write(damaged)
  with pytest.raises(ValueError) as e:
    halving.Rung.read(path)
  assert str(e.value).startswith(path) and '\n' not in str(e.value)
