r"""Successive halving against the full grid: member-epochs and wall time.

  python benchmarks/halving.py [--config sweeps/configs/cpu_subset_halving.py]
      [--rounds 1] [-- --config.data_source=local --config.data_dir=DIR]

Runs sweep.py on the preset twice per round, in a fresh workdir each time:
with `sweep.halving.eta=0` (every member trains every epoch) and as the
preset sets it. Member-epochs are counted from the members' metrics rows and
checked against `halving.member_epochs`; wall time is each sweep.py process's
(compilation included: both pay it); each member's rows under halving are
compared with its rows in the full grid of the same round. Arguments after
`--` go to both runs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import harness  # pylint: disable=g-bad-import-order

import ml_collections  # pylint: disable=g-import-not-at-top
from sweeps import halving  # pylint: disable=g-import-not-at-top
from training import records  # pylint: disable=g-import-not-at-top
from training import rundir  # pylint: disable=g-import-not-at-top

LOSS_RTOL = 1e-4  # The survivors train in a smaller vmap: float rounding.


def sweep(config: str, extra: list, eta_off: bool) -> dict:
  """One sweep.py run: wall seconds, member-epochs, each member's rows,
  summary.json and the resolved config."""
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, 'sweep')
    command = [sys.executable, os.path.join(harness.ROOT, 'sweep.py'),
               f'--config={config}', f'--workdir={workdir}',
               '--noprogress', *extra]
    if eta_off:
      command.append('--config.sweep.halving.eta=0')
    t0 = time.perf_counter()
    subprocess.run(command, check=True, cwd=harness.ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    rows = {}
    for name in os.listdir(os.path.join(workdir, 'members')):
      rows[name] = rundir.read_rows(
          os.path.join(workdir, 'members', name, rundir.METRICS_JSONL))
    with open(os.path.join(workdir, rundir.SUMMARY_JSON)) as f:
      summary = json.load(f)
    with open(os.path.join(workdir, rundir.CONFIG_FILE)) as f:
      config = ml_collections.ConfigDict(json.load(f))
  return {'seconds': seconds, 'rows': rows, 'summary': summary,
          'config': config,
          'member_epochs': sum(len(r) for r in rows.values())}


def winner(summary: dict) -> str:
  """The member summary.json names the winner, else the lowest final
  validation error."""
  if summary.get('winner'):
    return summary['winner']
  scored = [m for m in summary['members']
            if m.get('final_val_error') is not None]
  return min(scored, key=lambda m: m['final_val_error'])['name']


def rows_agree(halved: dict, full: dict) -> bool:
  """Whether every member's rows under halving are the full grid's up to
  where it stopped: errors equal, losses within LOSS_RTOL (the survivors
  train in a smaller vmap), timing aside."""
  for name, rows in halved.items():
    for row, want in zip(rows, full[name]):
      for key, value in want.items():
        if key in records.TIMING_COLUMNS:
          continue
        if key.endswith('loss'):
          if abs(row[key] - value) > LOSS_RTOL * abs(value):
            return False
        elif row[key] != value:
          return False
  return True


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config',
                      default='sweeps/configs/cpu_subset_halving.py')
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('extra', nargs='*', help='flags for both sweep.py runs')
  args = parser.parse_args()
  harness.print_header(
      f'# {args.config} {" ".join(args.extra)}: {args.rounds} round(s), full '
      'grid and halving alternating; wall seconds per sweep.py process')
  runs = {'full grid': [], 'halving': []}
  for order in harness.rounds(runs, args.rounds):
    for case in order:
      runs[case].append(sweep(args.config, args.extra, case == 'full grid'))
  rows = []
  for case, results in runs.items():
    rows.append((case, results[0]['member_epochs'],
                 f'{statistics.median(r["seconds"] for r in results):.1f}',
                 ', '.join(winner(r['summary']) for r in results)))
  harness.print_table(('sweep', 'member-epochs', 'median wall s',
                       'chosen (lowest validation error)'), rows)
  full, halved = runs['full grid'], runs['halving']
  config = halved[0]['config']
  eta, first = halving.halving_options(config)
  num_epochs = config.num_epochs
  members = len(full[0]['summary']['members'])
  expected = halving.member_epochs(
      members, eta, halving.rung_epochs(first, eta, num_epochs), num_epochs)
  wall = harness.paired_median([r['seconds'] for r in halved],
                               [r['seconds'] for r in full])
  print(f'\nmember-epochs: {halved[0]["member_epochs"]} / '
        f'{full[0]["member_epochs"]} = '
        f'{halved[0]["member_epochs"] / full[0]["member_epochs"]:.3f} '
        f'(formula, eta {eta}: {expected} / {members * num_epochs} = '
        f'{expected / (members * num_epochs):.3f}); wall time: {wall:.3f} '
        "of the full grid's (median of the rounds' ratios)")
  agree = [rows_agree(h['rows'], f['rows']) for h, f in zip(halved, full)]
  print(f'rows under halving equal to the full grid\'s up to each member\'s '
        f'stop (errors equal, losses within {LOSS_RTOL:g}): '
        f'{sum(agree)}/{len(agree)} rounds')


if __name__ == '__main__':
  main()
