r"""Figures and tables from train.py workdirs and sweep dirs.

  python report.py WORKDIR [WORKDIR ...] --out OUTDIR \
      [--epochs 50,100,150,200] [--labels L1 L2 ...] [--title TITLE]

Each WORKDIR is a train.py workdir or a sweep dir (each of its members one
run). OUTDIR receives train_loss.png, test_error.png and test_top5_error.png
(one line per run), curves.png (the three side by side: the report's Figures
2-5), table.md (test top-1 and top-5 error after the epochs, default four
evenly spaced: the paper's Tables 2 and 3, in error; the validation error
too where runs held out a validation split, with val_error.png: sweep
members stopped at a successive-halving rung end in a cross at a "rung"
line) and, for a sweep or runs
varying both p and lr, grid.md and grid.png (the best test error per (p,
lr)). Bad input (a path without metrics.jsonl, a bad flag, a title or label
matplotlib cannot draw): one error line, exit status 2, nothing written.
"""

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reporting import runs as runs_lib  # pylint: disable=g-import-not-at-top
from reporting import tables  # pylint: disable=g-import-not-at-top
from training import paths as paths_lib  # pylint: disable=g-import-not-at-top


def parse_epochs(text: str) -> list:
  try:
    epochs = [int(e) for e in text.split(',') if e.strip()]
  except ValueError:
    epochs = []
  if not epochs or any(e < 1 for e in epochs):
    raise argparse.ArgumentTypeError(
        f'{text!r}: expected positive epoch numbers separated by commas, '
        'e.g. 50,100,150,200')
  return epochs


class _ArgumentParser(argparse.ArgumentParser):
  """argparse, with a bad command line as one `error:` line and exit status
  2, like bad input, instead of the usage block."""

  def error(self, message):
    self.exit(2, f'error: {message}; see {self.prog} --help.\n')


def make_report(paths, outdir, epochs=None, labels=None, title=None) -> list:
  """Loads the runs, then writes everything to `outdir`; returns the paths.

  All input is read and checked before `outdir` is created, so bad input
  (ReportInputError) leaves nothing behind.
  """
  runs = runs_lib.load_runs(paths, labels=labels)
  try:
    # Anything that would fail the first write is refused now.
    paths_lib.check_output_dir(outdir, '--out')
  except ValueError as e:
    raise runs_lib.ReportInputError(str(e)) from None
  grid = tables.wants_grid(runs, any(run.sweep for run in runs))
  # matplotlib only now: bad input is reported without waiting for it.
  from reporting import plots  # pylint: disable=g-import-not-at-top
  # Text the figures cannot draw (bad mathtext) fails before `outdir` exists.
  texts = [('--title', title)] if title else []
  texts += [('--labels', label) for label in labels or ()]
  for flag, text in texts:
    try:
      plots.check_text(text)
    except ValueError as e:
      raise runs_lib.ReportInputError(
          f'{flag} {shlex.quote(text)}: {e}') from None
  os.makedirs(outdir, exist_ok=True)
  written = plots.write_figures(runs, outdir, title=title, grid=grid)
  texts = {'table.md': tables.table_markdown(runs, epochs, title)}
  if grid:
    texts['grid.md'] = tables.grid_markdown(runs, title)
  for name, text in texts.items():
    path = os.path.join(outdir, name)
    with open(path, 'w') as f:
      f.write(text)
    written.append(path)
  return written


def main(argv=None) -> int:
  parser = _ArgumentParser(
      description='Figures and tables from train.py workdirs and sweep dirs.')
  parser.add_argument('workdirs', nargs='+', metavar='WORKDIR',
                      help='train.py workdir or sweep dir (all its members)')
  parser.add_argument('--out', required=True, metavar='OUTDIR',
                      help='directory for the figures and tables')
  parser.add_argument('--epochs', type=parse_epochs, default=None,
                      help='epochs of the error table, e.g. 50,100,150,200 '
                      "(default: four evenly spaced up to the longest run's "
                      'last epoch)')
  parser.add_argument('--labels', nargs='+', metavar='LABEL',
                      help='one legend label per run (sweep members count '
                      'one each); default: from the configs')
  parser.add_argument('--title', help='title of the figures and tables')
  args = parser.parse_args(argv)
  try:
    written = make_report(args.workdirs, args.out, epochs=args.epochs,
                          labels=args.labels, title=args.title)
  except runs_lib.ReportInputError as e:
    sys.stderr.write(f'error: {e}\n')
    return 2
  except OSError as e:  # OUTDIR not writable, disk full, ...
    sys.stderr.write(f'error: cannot write the report to {args.out}: {e}\n')
    return 1
  for path in written:
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
