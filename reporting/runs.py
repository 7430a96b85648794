"""Loads train.py workdirs and sweep dirs into `Run`s.

A workdir (training/rundir.py) holds config.json and metrics.jsonl, one JSON
object per epoch with the columns of records.columns. A sweep dir holds
config.json, summary.json and members/<name>/, each member a workdir.
"""

import collections
import dataclasses
import math
import os
import re
import sys
from typing import Optional, Sequence

from training import records
from training import rundir

# Optimizers for which optimizer.p means something.
P_OPTIMIZERS = ('padam',)

# Config keys that never tell two runs apart in a label (where the data sit,
# how often a checkpoint is kept, ...).
NOT_IN_LABELS = ('data_dir', 'data_source', 'checkpoint_every_epochs',
                  'keep_checkpoints', 'eval_batch_size')

WORKDIR_EXPECTED = (
    'expected a train.py workdir (a directory holding '
    f'{rundir.CONFIG_FILE} and {rundir.METRICS_JSONL}) or a sweep dir '
    f'(holding {rundir.MEMBERS_DIR}/<name>/ workdirs)')


class ReportInputError(ValueError):
  """Bad input to the report: the message names the path and what is wrong."""


@dataclasses.dataclass
class Run:
  """One training run: its config and its per-epoch metric rows."""
  name: str      # the workdir's name (sweep members: '<sweep>/<member>')
  label: str     # the legend / table label, unique within a report
  config: dict   # config.json as loaded ({} when the workdir has none)
  rows: list     # metrics.jsonl rows sorted by epoch, one per epoch
  path: str = ''
  sweep: Optional[str] = None  # the sweep dir this run is a member of

  @property
  def epochs(self) -> list:
    return [r['epoch'] for r in self.rows]

  def column(self, key: str) -> list:
    """The values of `key` per row, NaN where missing or null."""
    return [_as_float(r.get(key)) for r in self.rows]

  def best(self, key: str = 'test_error'):
    """(smallest finite value of `key`, its epoch), or (nan, None)."""
    finite = [(v, epoch) for v, epoch in zip(self.column(key), self.epochs)
              if math.isfinite(v)]
    return min(finite, key=lambda pair: pair[0], default=(math.nan, None))

  @property
  def optimizer(self) -> dict:
    opt = self.config.get('optimizer')
    return opt if isinstance(opt, dict) else {}

  @property
  def optimizer_name(self) -> Optional[str]:
    return self.optimizer.get('name')

  @property
  def lr(self) -> Optional[float]:
    return _as_number(self.optimizer.get('learning_rate'))

  @property
  def p(self) -> Optional[float]:
    """The (initial) p, for the optimizers where p means something."""
    if self.optimizer_name not in P_OPTIMIZERS:
      return None
    return _as_number(self.optimizer.get('p'))


def _as_float(value) -> float:
  if isinstance(value, bool) or value is None:
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _as_number(value) -> Optional[float]:
  v = _as_float(value)
  return v if math.isfinite(v) else None


def fmt_number(value) -> str:
  """Short form of a hyperparameter: 0.1, 0.001, 1e-05, 0.0625."""
  return f'{value:g}' if isinstance(value, float) else str(value)


def load_workdir(path: str, name: Optional[str] = None,
                 sweep: Optional[str] = None) -> Run:
  """The Run in a train.py workdir (or a sweep member dir)."""
  if not os.path.isdir(path):
    what = 'is not a directory' if os.path.exists(path) else 'does not exist'
    raise ReportInputError(f'{path} {what}; {WORKDIR_EXPECTED}.')
  metrics_path = os.path.join(path, rundir.METRICS_JSONL)
  if not os.path.isfile(metrics_path):
    raise ReportInputError(
        f'{path} is not a workdir: it has no {rundir.METRICS_JSONL}; '
        f'{WORKDIR_EXPECTED}.')
  try:
    # A report takes the rows as they are: any order, an epoch written twice
    # (the last wins), no step needed.
    rows = rundir.read_rows(metrics_path, strict=False)
    config = rundir.read_stored_config(path)
  except ValueError as e:
    raise ReportInputError(str(e)) from None
  if not rows:
    raise ReportInputError(
        f'{metrics_path}: no metrics rows (has the run finished an epoch?); '
        'expected one JSON object per epoch, as train.py writes.')
  if name is None:
    name = os.path.basename(os.path.abspath(path))
  return Run(name=name, label=name, config=config, rows=rows,
             path=os.path.abspath(path), sweep=sweep)


# A number in a name: 3, 0.001, 1e-05 (one token, so lr0.01 < lr0.1).
_NUMBER = re.compile(r'(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')


def name_key(text: str) -> tuple:
  """Sort key of a name with its numbers compared by value."""
  return tuple((1, float(t), '') if i % 2 else (0, 0.0, t)
               for i, t in enumerate(_NUMBER.split(text)))


def member_key(p, lr, seed, name: str) -> tuple:
  """Sort key of a sweep member or run by its hyperparameters: p, lr and the
  seed ascending by value (a missing one first), then its name (numbers by
  value). The one order of report.py's runs and sweep.py's summary.md."""
  def number(value):
    value = _as_number(value)
    return (0, 0.0) if value is None else (1, value)
  return number(p), number(lr), number(seed), name_key(name)


def hyperparameter_key(run: Run) -> tuple:
  """Sort key of a run: model, dataset, optimizer, then `member_key`."""
  config = run.config
  return (str(config.get('model', '')), str(config.get('dataset', '')),
          str(run.optimizer_name or '')) + member_key(
              run.p, run.lr, config.get('seed'), run.name)


def load_sweep(path: str, warn) -> list:
  """The Runs of a sweep dir's members that have metrics, ordered by their
  hyperparameters' values (`hyperparameter_key`).

  Members without metrics yet (a sweep still running) are skipped, with a
  note to `warn`; a sweep with no member holding metrics is an error.
  """
  members_dir = os.path.join(path, rundir.MEMBERS_DIR)
  sweep_name = os.path.basename(os.path.abspath(path))
  names = sorted((n for n in os.listdir(members_dir)
                  if os.path.isdir(os.path.join(members_dir, n))),
                 key=name_key)
  runs, skipped = [], []
  for n in names:
    member = os.path.join(members_dir, n)
    metrics = os.path.join(member, rundir.METRICS_JSONL)
    if not os.path.isfile(metrics) or not _has_content(metrics):
      skipped.append(n)
      continue
    runs.append(load_workdir(member, name=f'{sweep_name}/{n}', sweep=path))
  runs.sort(key=hyperparameter_key)
  if not runs:
    raise ReportInputError(
        f'{path} is a sweep dir but none of its {len(names)} members in '
        f'{members_dir} has {rundir.METRICS_JSONL} rows yet; expected '
        'members/<name>/ workdirs with metrics.')
  if skipped:
    warn(f'{path}: skipped {len(skipped)} member(s) without metrics yet: '
         f'{", ".join(skipped)}')
  return runs


def _has_content(path: str) -> bool:
  try:
    with open(path) as f:
      return any(line.strip() for line in f)
  except OSError:
    return False


def load_runs(paths: Sequence[str], labels: Optional[Sequence[str]] = None,
              warn=None) -> list:
  """Runs from workdirs and sweep dirs (expanded to their members), in order.

  `labels`, when given, are one per run after expansion; otherwise the labels
  come from the configs (`default_labels`). The same directory given twice
  is loaded once.
  """
  if warn is None:
    warn = lambda msg: sys.stderr.write(f'warning: {msg}\n')
  if not paths:
    raise ReportInputError(f'no workdir given; {WORKDIR_EXPECTED}.')
  runs, seen = [], set()
  for path in paths:
    is_sweep = (
        os.path.isdir(os.path.join(path, rundir.MEMBERS_DIR)) and
        not os.path.exists(os.path.join(path, rundir.METRICS_JSONL)))
    loaded = load_sweep(path, warn) if is_sweep else [load_workdir(path)]
    for run in loaded:
      key = os.path.realpath(run.path)
      if key not in seen:
        seen.add(key)
        runs.append(run)
  labels = default_labels(runs) if labels is None else list(labels)
  if len(labels) != len(runs):
    raise ReportInputError(
        f'{len(labels)} labels given for {len(runs)} runs '
        f'({", ".join(r.name for r in runs)}); expected one label per run, '
        'sweep dirs counting one per member.')
  for run, label in zip(runs, _make_unique(labels, runs)):
    run.label = label
  return runs


def base_label(run: Run) -> Optional[str]:
  """'padam p=0.125 lr=0.1', 'sgdm lr=0.1'; None without optimizer.name."""
  opt = run.optimizer
  if not opt.get('name'):
    return None
  parts = [str(opt['name'])]
  if opt['name'] in P_OPTIMIZERS and 'p' in opt:
    p = f'p={fmt_number(opt["p"])}'
    if opt.get('p_decay_every_epochs'):
      p += (f' (x{fmt_number(opt.get("p_decay_factor"))}/'
            f'{opt["p_decay_every_epochs"]}ep)')
    parts.append(p)
  if 'learning_rate' in opt:
    parts.append(f'lr={fmt_number(opt["learning_rate"])}')
  return ' '.join(parts)


def differing_keys(flat: Sequence[dict]) -> list:
  """The keys, sorted, whose values differ between the flat configs."""
  keys = sorted({k for f in flat for k in f})
  return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def default_labels(runs: Sequence[Run]) -> list:
  """Labels from the configs (`_make_unique` makes them unique).

  'padam p=0.125 lr=0.1' (or the run's name without an optimizer in its
  config), prefixed by model/dataset where those differ between the runs;
  labels still equal get the config keys that tell them apart (seed=1, ...).
  """
  flat = [records.flatten(r.config) for r in runs]
  labels = [base_label(r) or r.name for r in runs]
  prefix_keys = [k for k in ('model', 'dataset') if k in differing_keys(flat)]
  if prefix_keys:
    labels = ['/'.join(str(f.get(k, '?')) for k in prefix_keys) + ' ' + label
              for f, label in zip(flat, labels)]
  # Tell apart equal labels by the keys whose values differ within the group.
  groups = {}
  for i, label in enumerate(labels):
    groups.setdefault(label, []).append(i)
  for label, members in groups.items():
    differing = [k for k in differing_keys([flat[i] for i in members])
                 if k not in NOT_IN_LABELS]
    # The seed first, then the run length, then the rest.
    differing.sort(key=lambda k: (k != 'seed', k != 'num_epochs', k))
    for i in members:
      extra = ' '.join(f'{k.split(".")[-1]}={fmt_number(flat[i].get(k))}'
                       for k in differing[:3])
      if extra:
        labels[i] = f'{label} {extra}'
  return labels


def _make_unique(labels: list, runs: Sequence[Run]) -> list:
  """Appends the run's name, then #k, to labels that are still equal."""
  counts = collections.Counter(labels)
  labels = [f'{l} [{r.name}]' if counts[l] > 1 and l != r.name else l
            for l, r in zip(labels, runs)]
  counts, seen = collections.Counter(labels), collections.Counter()
  out = []
  for l in labels:
    seen[l] += 1
    out.append(f'{l} #{seen[l]}' if counts[l] > 1 else l)
  return out
