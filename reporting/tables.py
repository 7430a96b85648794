"""Markdown tables: test error at chosen epochs (the layout of the paper's
Tables 2 and 3, which give accuracy = 100 - error) and the best test error
over a p x lr grid (the report's sensitivity study).

Pure functions of `Run`s returning strings.
"""

import math
from typing import Optional, Sequence

from reporting.runs import NOT_IN_LABELS
from reporting.runs import Run
from reporting.runs import differing_keys
from reporting.runs import fmt_number
from training import records

MISSING = '—'


def _cell_text(text: str) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')


def percent(fraction) -> str:
  """`fraction` in percent to two decimals; MISSING for None or NaN."""
  if fraction is None or not math.isfinite(fraction):
    return MISSING
  return f'{100 * fraction:.2f}'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   left: int = 1) -> str:
  """A markdown table: its first `left` columns aligned left, the rest
  right."""
  align = '|' + '---|' * left + '---:|' * (len(header) - left)
  lines = ['| ' + ' | '.join(header) + ' |', align]
  lines += ['| ' + ' | '.join(cells) + ' |' for cells in rows]
  return '\n'.join(lines) + '\n'


def join_blocks(blocks) -> str:
  """Markdown blocks separated by one blank line."""
  return '\n'.join(b.strip('\n') + '\n' for b in blocks)


def default_epochs(runs: Sequence[Run], count: int = 4) -> list:
  """The table's epochs when none are asked for: `count` evenly spaced
  epochs ending at the longest run's last (50, 100, 150, 200 for the paper's
  200 epochs; 1, 2, 3 for 3)."""
  last = max((run.epochs[-1] for run in runs), default=0)
  return sorted({max(1, round(last * k / count)) for k in range(1, count + 1)}
                ) if last else []


def error_table(runs: Sequence[Run], epochs: Sequence[int],
                key: str = 'test_error') -> str:
  """Markdown: one row per run, the test error (%) after each of `epochs`,
  then the lowest over all epochs run and its epoch. '—' where the run is
  shorter."""
  header = (['run'] + [f'epoch {e}' for e in epochs] +
            ['best', 'best epoch', 'epochs run'])
  rows = []
  for run in runs:
    by_epoch = dict(zip(run.epochs, run.column(key)))
    best_error, best_epoch = run.best(key)
    rows.append([_cell_text(run.label)] +
                [percent(by_epoch.get(e)) for e in epochs] +
                [percent(best_error),
                 MISSING if best_epoch is None else str(best_epoch),
                 str(run.epochs[-1])])
  return markdown_table(header, rows)


def table_markdown(runs: Sequence[Run], epochs: Optional[Sequence[int]] = None,
                   title: Optional[str] = None) -> str:
  """table.md: top-1 test error after `epochs` (None: `default_epochs`), and
  top-5 and validation error where logged."""
  if epochs is None:
    epochs = default_epochs(runs)
  parts = [f'# {title}\n'] if title else []
  parts.append('Test top-1 error (%) after the given epochs; best: the lowest '
               f'over all epochs run. {MISSING}: the run is shorter. (The '
               "paper's tables give accuracy = 100 − error.)\n")
  parts.append(error_table(runs, epochs, 'test_error'))
  if any(run.best('test_top5_error')[1] is not None for run in runs):
    parts.append('Test top-5 error (%).\n')
    parts.append(error_table(runs, epochs, 'test_top5_error'))
  if any(run.best('val_error')[1] is not None for run in runs):
    parts.append('Validation top-1 error (%): on the training images held '
                 'out (validation_examples).\n')
    parts.append(error_table(runs, epochs, 'val_error'))
  parts.append('Runs:\n\n' + ''.join(
      f'- {_cell_text(run.label)}: `{run.path or run.name}`\n' for run in runs))
  return join_blocks(parts)


# --- The p x lr grid -------------------------------------------------------


def grid_matrix(runs: Sequence[Run]):
  """(row keys, lr columns, matrix of the mean best error, NaN where no run,
  the count of runs per cell).

  Rows: the p values in ascending order, then other optimizers by name
  (p means nothing for them). Runs without a learning rate are left out.
  """
  cells = {}
  for run in runs:
    if run.lr is None:
      continue
    best, _ = run.best()
    if math.isfinite(best):
      row = run.p if run.p is not None else (run.optimizer_name or run.name)
      cells.setdefault((row, run.lr), []).append(best)
  rows = sorted({r for r, _ in cells},
                key=lambda r: (1, 0.0, r) if isinstance(r, str) else (0, r, ''))
  cols = sorted({c for _, c in cells})
  values = [[cells.get((r, c), []) for c in cols] for r in rows]
  matrix = [[sum(v) / len(v) if v else math.nan for v in line]
            for line in values]
  return rows, cols, matrix, [[len(v) for v in line] for line in values]


def row_name(row) -> str:
  return row if isinstance(row, str) else f'p={fmt_number(row)}'


def grid_table(runs: Sequence[Run]) -> str:
  """Markdown: best test error (%) per (p, lr), rows p, columns lr; the best
  cell in bold; a cell with several runs (seeds) shows their mean and (n)."""
  rows, cols, matrix, counts = grid_matrix(runs)
  best = percent(min((v for line in matrix for v in line if math.isfinite(v)),
                     default=None))
  lines = []
  for r, values, ns in zip(rows, matrix, counts):
    cells = [row_name(r)]
    for v, n in zip(values, ns):
      text = percent(v) + (f' (n={n})' if math.isfinite(v) and n > 1 else '')
      # Bold every cell that rounds to the best value (ties).
      cells.append(f'**{text}**' if math.isfinite(v) and percent(v) == best
                   else text)
    lines.append(cells)
  return markdown_table(['p \\ lr'] + [fmt_number(c) for c in cols], lines)


def grid_markdown(runs: Sequence[Run], title: Optional[str] = None) -> str:
  """grid.md: the grid table with a caption."""
  parts = [f'# {title}\n'] if title else []
  parts.append(
      'Best test top-1 error (%) over all epochs run, per (p, lr): rows '
      'the (initial) p of Padam (other optimizers by name), columns the '
      'learning rate. Bold: the best cell. A cell with several runs '
      f'(seeds) shows the mean of their best errors and (n). {MISSING}: no '
      'run.\n')
  parts.append(grid_table(runs))
  others = other_differences(runs)
  if others:
    parts.append('Note: the runs also differ in ' + ', '.join(
        f'`{k}`' for k in others) + ', so a cell may compare unlike runs.\n')
  return join_blocks(parts)


# Keys a p x lr grid is meant to vary (or average over).
# A sweep member's name is made of its grid values: not another difference.
_GRID_KEYS = ('optimizer.learning_rate', 'optimizer.p', 'seed',
              'sweep_member.name')


def other_differences(runs: Sequence[Run]) -> list:
  """Config keys, besides lr, p and the seed, whose values differ between
  the runs of the grid (those with a learning rate)."""
  flat = [records.flatten(run.config) for run in runs if run.lr is not None]
  return [k for k in differing_keys(flat)
          if k not in _GRID_KEYS and k.split('.')[-1] not in NOT_IN_LABELS]


def wants_grid(runs: Sequence[Run], any_sweep: bool) -> bool:
  """A grid is written for a sweep, or for runs varying both p and lr."""
  p_runs = [run for run in runs if run.p is not None]
  varied = len({r.p for r in p_runs}) > 1 and len({r.lr for r in p_runs}) > 1
  return any(run.lr is not None for run in runs) and (any_sweep or varied)
