"""Figures in the style of the report's Figures 2-5 and the grid heatmap.

Matplotlib's object API with the Agg canvas (no pyplot, no display): each
`*_figure` function returns the Figure, so its Axes and lines can be checked;
`write_figures` saves them as PNG.
"""

import math
import os
import re
from typing import Optional, Sequence

import matplotlib
from matplotlib import patches
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from reporting import tables
from reporting.runs import Run
from reporting.runs import fmt_number

# metric key -> (axis label, in percent, log scale, title), in the figures'
# order.
METRICS = {
    'train_loss': ('train loss', False, True, 'Train loss'),
    'test_error': ('test top-1 error (%)', True, False, 'Test error (top-1)'),
    'test_top5_error': ('test top-5 error (%)', True, False,
                        'Test error (top-5)'),
}
# Drawn only where runs held out a validation split (validation_examples).
VAL_METRICS = {
    'val_error': ('validation top-1 error (%)', True, False,
                  'Validation error (top-1)'),
}
_AXES = {**METRICS, **VAL_METRICS}
_LINESTYLES = ('-', '--', ':', '-.')
_MARKERS = ('o', 's', '^', 'D', 'v', 'P')


class _PlainLogFormatter(ticker.LogFormatter):
  """LogFormatter's choice of ticks to label, written 0.01 rather than 1e-02."""

  def __call__(self, x, pos=None):
    return f'{x:.3g}' if super().__call__(x, pos) else ''


def _new_figure(figsize, title: Optional[str] = None) -> Figure:
  fig = Figure(figsize=figsize, dpi=120, layout='constrained')
  FigureCanvasAgg(fig)
  if title:
    fig.suptitle(title)
  return fig


def check_text(text: str) -> None:
  """Raises ValueError when matplotlib cannot draw `text` in a figure (a
  title, a legend label): mathtext between $ signs that does not parse."""
  fig = _new_figure((2.0, 1.0), text)
  try:
    fig.canvas.draw()
  except ValueError as e:
    # The parser's message ends with its reason, after a caret diagram.
    reason = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
    reason = ' '.join(reason.split('Exception: ', 1)[-1].split())
    # pyparsing can spell out its whole grammar as what it expected.
    expected = re.match(r'Expected (.*), (found .*)$', reason)
    if expected and len(expected.group(1)) > 60:
      reason = expected.group(2)
    raise ValueError(
        f'matplotlib cannot draw it ({reason}); allowed: plain text, or '
        r'mathtext between $ signs (\$ for a dollar sign).') from None


def grid_axes(runs: Sequence[Run]):
  """(sorted p values, sorted lr values) when the runs form a p x lr grid
  (every run has both; at least two of each), else None."""
  if not runs or any(run.p is None or run.lr is None for run in runs):
    return None
  ps, lrs = sorted({run.p for run in runs}), sorted({run.lr for run in runs})
  return (ps, lrs) if len(ps) > 1 and len(lrs) > 1 else None


def run_styles(runs: Sequence[Run], markers: bool = False) -> list:
  """(draw order, style per run): in a p x lr grid one colour per p and one
  line style (and marker) per lr, drawn p by p, then by lr, so that the
  legend reads in that order; otherwise distinct colours (tab10, then
  tab20, then line styles too), in the given order."""
  axes = grid_axes(runs)
  if axes is None:
    cmap = matplotlib.colormaps['tab10' if len(runs) <= 10 else 'tab20']
    cells = [(i % cmap.N, i // cmap.N) for i in range(len(runs))]
    order = list(range(len(runs)))
  else:
    cmap = matplotlib.colormaps['tab10']
    cells = [(axes[0].index(run.p), axes[1].index(run.lr)) for run in runs]
    order = sorted(range(len(runs)), key=cells.__getitem__)
  styles = []
  for i, j in cells:
    style = dict(color=cmap(i % cmap.N),
                 linestyle=_LINESTYLES[j % len(_LINESTYLES)])
    if markers:
      style.update(marker=_MARKERS[j % len(_MARKERS)] if axes else 'o',
                   markersize=4 if axes else 3)
    styles.append(style)
  return order, styles


def _series(run: Run, metric: str):
  x = np.asarray(run.epochs, dtype=float)
  y = np.asarray(run.column(metric), dtype=float)
  if _AXES[metric][1]:  # in percent
    y = 100.0 * y
  keep = np.isfinite(y)
  if metric == 'train_loss':
    keep &= y > 0  # log scale
  return x[keep], y[keep]


def draw_metric(ax, runs: Sequence[Run], metric: str) -> list:
  """One line per run with values of `metric` on `ax` (styles and order:
  `run_styles`); returns the lines."""
  ylabel, _, log, title = _AXES[metric]
  lines = []
  longest = max((len(r.rows) for r in runs), default=0)
  # Short runs get markers so that a run of one or two epochs shows.
  order, styles = run_styles(runs, markers=longest <= 30)
  for i in order:
    x, y = _series(runs[i], metric)
    if not len(x):
      continue
    (line,) = ax.plot(x, y, label=runs[i].label, linewidth=1.4, **styles[i])
    lines.append(line)
  ax.set_xlabel('epoch')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if log and lines:
    ax.set_yscale('log')
    # Over a narrow range the ticks look evenly spaced: say it is a log axis.
    ax.set_ylabel(f'{ylabel} (log scale)')
    # Plain numbers (2.2, 0.05), not 2.2x10^0, minor ticks labelled only
    # while the curves span little more than a decade.
    ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(
        labelOnlyBase=False, minor_thresholds=(1.5, 0.5)))
  if longest and longest <= 20:
    ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(True, which='major', alpha=0.3)
  if log:
    ax.grid(True, which='minor', alpha=0.1)
  return lines


def metric_figure(runs: Sequence[Run], metric: str,
                  title: Optional[str] = None) -> Figure:
  """One metric against epoch, one line per run, legend of the labels; on
  the validation error, the ends of members stopped at a rung marked."""
  many = len(runs) > 6
  fig = _new_figure((9.0, 4.8) if many else (6.4, 4.8), title)
  ax = fig.add_subplot()
  lines = draw_metric(ax, runs, metric)
  if metric in VAL_METRICS:
    _mark_stops(ax, runs, lines)
  if lines and many:
    ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), fontsize='small',
              frameon=False)
  elif lines:
    ax.legend(fontsize='small')
  return fig


def _mark_stops(ax, runs: Sequence[Run], lines: list) -> None:
  """A cross at the end of each line (`lines`, by label) of a sweep member
  whose rows end before its sweep's longest (stopped at a successive-halving
  rung); a light vertical line, "rung" in the legend, at each such epoch."""
  end = {s: max(r.epochs[-1] for r in runs if r.sweep == s)
         for s in {r.sweep for r in runs}}
  stopped = [r for r in runs if r.sweep and r.epochs[-1] < end[r.sweep]]
  by_label = {line.get_label(): line for line in lines}
  for line in filter(None, (by_label.get(r.label) for r in stopped)):
    ax.plot(line.get_xdata()[-1:], line.get_ydata()[-1:], linestyle='none',
            marker='x', markersize=9, markeredgewidth=2,
            color=line.get_color(), label='_stop')
  for k, epoch in enumerate(sorted({r.epochs[-1] for r in stopped})):
    ax.axvline(epoch, color='0.6', linewidth=1.0, alpha=0.6, zorder=0,
               label='_rung' if k else 'rung')


def curves_figure(runs: Sequence[Run], title: Optional[str] = None) -> Figure:
  """The 1 x 3 panel: train loss, test top-1 and top-5 error; one legend
  (for a p x lr grid, one column per p)."""
  grid = grid_axes(runs)
  ncol = len(grid[0]) if grid and len(grid[0]) <= 6 else min(len(runs), 4)
  legend_rows = math.ceil(len(runs) / max(ncol, 1))
  fig = _new_figure((15.0, 4.4 + 0.25 * legend_rows), title)
  handles = []
  for ax, metric in zip(fig.subplots(1, len(METRICS)), METRICS):
    lines = draw_metric(ax, runs, metric)
    if len(lines) > len(handles):
      handles = lines
  if handles:
    fig.legend(handles=handles, labels=[h.get_label() for h in handles],
               loc='outside lower center', ncol=ncol, fontsize='small',
               frameon=False)
  return fig


def grid_figure(runs: Sequence[Run], title: Optional[str] = None) -> Figure:
  """Heatmap of the best test error (%) per (p, lr); best cell outlined."""
  rows, cols, matrix, counts = tables.grid_matrix(runs)
  values = 100 * np.asarray(matrix, dtype=float).reshape(len(rows), len(cols))
  fig = _new_figure((1.6 + 1.3 * max(len(cols), 2),
                     1.4 + 0.8 * max(len(rows), 2)), title)
  ax = fig.add_subplot()
  cmap = matplotlib.colormaps['viridis_r'].with_extremes(bad='0.9')
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect='auto')
  fig.colorbar(image, ax=ax, label='best test top-1 error (%)')
  ax.set_xticks(range(len(cols)), [fmt_number(c) for c in cols])
  ax.set_yticks(range(len(rows)), [tables.row_name(r) for r in rows])
  ax.set_xlabel('learning rate')
  ax.set_ylabel('p')
  finite = values[np.isfinite(values)]
  lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
  for (i, j), v in np.ndenumerate(values):
    if not math.isfinite(v):
      ax.text(j, i, tables.MISSING, ha='center', va='center', color='0.4')
      continue
    text = f'{v:.2f}' + (f'\n(n={counts[i][j]})' if counts[i][j] > 1 else '')
    # viridis_r is dark at the top of the range: white text there.
    shade = (v - lo) / (hi - lo) if hi > lo else 0.0
    is_best = f'{v:.2f}' == f'{lo:.2f}'
    ax.text(j, i, text, ha='center', va='center',
            color='white' if shade > 0.6 else 'black',
            fontweight='bold' if is_best else 'normal')
    if is_best:
      ax.add_patch(patches.Rectangle(
          (j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor='red', linewidth=2))
  ax.set_title('Best test top-1 error (%) over p and lr')
  return fig


def write_figures(runs: Sequence[Run], outdir: str,
                  title: Optional[str] = None, grid: bool = False) -> list:
  """Writes <metric>.png per metric, curves.png (and grid.png; and
  val_error.png where runs have validation rows); returns the paths
  written."""
  figures = {f'{m}.png': metric_figure(runs, m, title) for m in METRICS}
  for m in VAL_METRICS:
    if any(run.best(m)[1] is not None for run in runs):
      figures[f'{m}.png'] = metric_figure(runs, m, title)
  figures['curves.png'] = curves_figure(runs, title)
  if grid:
    figures['grid.png'] = grid_figure(runs, title)
  paths = [os.path.join(outdir, name) for name in figures]
  for path, fig in zip(paths, figures.values()):
    fig.savefig(path, format='png')
  return paths
