"""The run's directory: config.json, metrics files and Orbax checkpoints.

Layout (as big_vision / Flax examples):
  config.json        the full config, written once before training starts
  metrics.jsonl      one JSON object per epoch
  metrics.csv        the same rows as CSV
  checkpoints/<step> Orbax checkpoints of the whole TrainState
"""

import csv
import json
import os
import tempfile

import jax
import ml_collections
import orbax.checkpoint as ocp

# Keys that may differ between a stored config and a resumed run's: extending
# or shortening a run is allowed, anything else is another experiment.
RUN_LENGTH_KEYS = ('num_epochs',)

METRIC_COLUMNS = (
    'epoch', 'step', 'lr', 'p', 'train_loss', 'train_error', 'test_loss',
    'test_error', 'test_top5_error', 'epoch_seconds', 'images_per_second')


def flatten(config) -> dict:
  """{'a.b': value} for a (nested) ConfigDict or dict."""
  out = {}
  items = config.items() if hasattr(config, 'items') else config
  for key, value in items:
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      for sub, v in flatten(value).items():
        out[f'{key}.{sub}'] = v
    else:
      out[key] = list(value) if isinstance(value, tuple) else value
  return out


def config_conflicts(stored: dict, requested: dict) -> list:
  """Keys (dotted) whose values differ, ignoring the run length."""
  a, b = flatten(stored), flatten(requested)
  return sorted(k for k in set(a) | set(b)
                if k not in RUN_LENGTH_KEYS and a.get(k) != b.get(k))


def _atomic_write(path: str, text: str) -> None:
  directory = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class Workdir:
  """Owns the files of one run. Nothing is written before `prepare()`."""

  def __init__(self, path: str, config: ml_collections.ConfigDict):
    self.path = os.path.abspath(path)
    self.config = config
    self.config_path = os.path.join(self.path, 'config.json')
    self.jsonl_path = os.path.join(self.path, 'metrics.jsonl')
    self.csv_path = os.path.join(self.path, 'metrics.csv')
    self.checkpoint_dir = os.path.join(self.path, 'checkpoints')

  def check(self) -> None:
    """Refuses a workdir whose stored config is another experiment."""
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ValueError(f'workdir={self.path!r} exists and is not a directory.')
    if os.path.exists(self.config_path):
      with open(self.config_path) as f:
        stored = json.load(f)
      conflicts = config_conflicts(stored, self.config.to_dict())
      if conflicts:
        details = '; '.join(
            f'{k}: stored {flatten(stored).get(k)!r}, requested '
            f'{flatten(self.config.to_dict()).get(k)!r}' for k in conflicts)
        raise ValueError(
            f'workdir={self.path!r} holds a run with a different config '
            f'({details}). Only {", ".join(RUN_LENGTH_KEYS)} may change on '
            'resume; use a new workdir for a new experiment.')

  def prepare(self) -> None:
    if jax.process_index() == 0:
      os.makedirs(self.path, exist_ok=True)
      _atomic_write(self.config_path,
                    json.dumps(self.config.to_dict(), indent=2, sort_keys=True))

  def checkpoint_manager(self, keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.checkpoint_dir,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def read_metrics(self) -> list:
    if not os.path.exists(self.jsonl_path):
      return []
    with open(self.jsonl_path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def write_metrics(self, rows: list) -> None:
    """Rewrites both metrics files with `rows` (atomically, from process 0)."""
    if jax.process_index() != 0:
      return
    _atomic_write(self.jsonl_path,
                  ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))
    fd, tmp = tempfile.mkstemp(dir=self.path, prefix='.tmp-')
    with os.fdopen(fd, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
      writer.writeheader()
      for r in rows:
        writer.writerow({k: r.get(k) for k in METRIC_COLUMNS})
    os.replace(tmp, self.csv_path)
