"""`python -m training.cifar10_subset`: the folder of genuine CIFAR-10 images
the tests read (PADAX_TEST_CIFAR10_SUBSET), built from the official python
release (issue 22, point 2).

The binary layout it writes is checked byte for byte against the genuine
subset's own cifar-10-batches-bin/ (cut from the official binary release, an
independent reference), and, without the genuine images, against the
binary format's definition on random batches.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.data_fixtures import CIFAR10_FILES
from tests.data_fixtures import write_python_archive
from tests.data_fixtures import write_python_layout
from training import cifar10_subset as subset_command
from training import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = 1 + 3072


def _command(*args):
  return subprocess.run(
      [sys.executable, '-m', 'training.cifar10_subset', *map(str, args)],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _read(path) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def test_from_the_official_archive_equals_the_genuine_subset(tmp_path,
                                                            cifar10_subset):
  """The official archive layout (a cifar-10-python.tar.gz of the genuine
  python batches) in, both layouts out: the binary one equal, byte for
  byte, to the genuine binary layout, whole and cut to 100 images."""
  source = tmp_path / 'downloads'
  source.mkdir()
  write_python_archive(os.path.join(cifar10_subset, 'cifar-10-batches-py'),
                       source / 'cifar-10-python.tar.gz')
  out = tmp_path / 'subset'
  result = _command(out, f'--source={source}')
  assert result.returncode == 0, result.stderr
  assert f'export PADAX_TEST_CIFAR10_SUBSET={out}' in result.stdout
  genuine_bin = os.path.join(cifar10_subset, 'cifar-10-batches-bin')
  assert sorted(os.listdir(out / 'cifar-10-batches-bin')) == sorted(
      os.listdir(genuine_bin))
  for name in os.listdir(genuine_bin):
    assert _read(out / 'cifar-10-batches-bin' / name) == _read(
        os.path.join(genuine_bin, name)), name
  built = input_pipeline.load_cifar('cifar10', source='local',
                                    data_dir=str(out))
  genuine = input_pipeline.load_cifar('cifar10', source='local',
                                      data_dir=cifar10_subset)
  for a, b in ((built.train, genuine.train), (built.test, genuine.test)):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)

  cut = tmp_path / 'cut'
  subset_command.build(str(cut), str(source), examples=100)
  for name in CIFAR10_FILES:
    assert _read(cut / 'cifar-10-batches-bin' / f'{name}.bin') == _read(
        os.path.join(genuine_bin, f'{name}.bin'))[:100 * RECORD], name


def test_from_a_python_folder_both_layouts_hold_the_first_images(tmp_path):
  write_python_layout(tmp_path / 'src', n_per_file=5, seed=3)
  out = subset_command.build(str(tmp_path / 'out'), str(tmp_path / 'src'),
                             examples=3)
  for name in CIFAR10_FILES:
    with open(tmp_path / 'src' / 'cifar-10-batches-py' / name, 'rb') as f:
      source = pickle.load(f, encoding='bytes')
    with open(os.path.join(out, 'cifar-10-batches-py', name), 'rb') as f:
      written = pickle.load(f, encoding='bytes')
    assert written[b'batch_label'] == source[b'batch_label']
    np.testing.assert_array_equal(written[b'data'], source[b'data'][:3])
    assert written[b'labels'] == source[b'labels'][:3]
    # The binary format: per image one label byte, then the 3072 bytes of
    # the python layout's row.
    records = np.frombuffer(
        _read(os.path.join(out, 'cifar-10-batches-bin', f'{name}.bin')),
        np.uint8).reshape(3, RECORD)
    np.testing.assert_array_equal(records[:, 0], source[b'labels'][:3])
    np.testing.assert_array_equal(records[:, 1:], source[b'data'][:3])
  with open(os.path.join(out, 'cifar-10-batches-py', 'batches.meta'),
            'rb') as f:
    names = pickle.load(f, encoding='bytes')[b'label_names']
  assert names[0] == b'airplane' and names[9] == b'truck' and len(names) == 10
  text = _read(os.path.join(out, 'cifar-10-batches-bin', 'batches.meta.txt'))
  assert text.decode().split('\n') == [n.decode() for n in names] + ['']
  assert sorted(os.listdir(out)) == ['cifar-10-batches-bin',
                                     'cifar-10-batches-py']


@pytest.mark.parametrize('case', ['too_many', 'exists', 'no_source'])
def test_refusals_are_one_line_and_write_nothing(tmp_path, case):
  write_python_layout(tmp_path / 'src', n_per_file=2)
  out = tmp_path / 'out'
  out.mkdir()
  args, expected = {
      'too_many': (['--examples=3'], '--examples=3:'),
      'exists': ([], 'cifar-10-batches-py exists'),
      'no_source': ([f'--source={tmp_path / "nothing"}'], 'holds no CIFAR-10'),
  }[case]
  if case == 'exists':
    (out / 'cifar-10-batches-py').mkdir()
  before = sorted(os.listdir(out))
  if case != 'no_source':
    args.append(f'--source={tmp_path / "src"}')
  result = _command(out, *args)
  assert result.returncode == 2, result
  assert result.stderr.startswith('error: ') and expected in result.stderr
  assert result.stderr.count('\n') == 1, result.stderr
  assert sorted(os.listdir(out)) == before
