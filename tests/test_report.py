"""report.py and reporting/: tables, figures and errors on synthetic workdirs.

The workdirs are written here, in the layout of training/rundir.py, with
metric values given by simple formulas, so every expected number is computed
independently of reporting/.
"""

import json
import os
import subprocess
import sys

import pytest

from reporting import plots
from reporting import runs as runs_lib
from reporting import tables
from training import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

PS = (0.0625, 0.125, 0.25)
LRS = (0.001, 0.01, 0.1)


def make_config(name='padam', lr=0.1, p=0.125, seed=0, num_epochs=200,
                model='resnet18', dataset='cifar10'):
  return {
      'model': model, 'dataset': dataset, 'seed': seed,
      'num_epochs': num_epochs, 'batch_size': 128, 'data_dir': '',
      'optimizer': {'name': name, 'learning_rate': lr, 'p': p,
                    'formulation': 'authors', 'p_decay_every_epochs': 0,
                    'p_decay_factor': 0.5, 'lr_milestones': [50, 100, 150]},
  }


def error_at(epoch, offset=0.0):
  """Falls from 0.9 by 0.004 per epoch; constant 0.1 + offset after 200."""
  return max(0.9 - 0.004 * epoch, 0.1) + offset


def make_rows(num_epochs, offset=0.0):
  return [{
      'epoch': e, 'step': 391 * e, 'lr': 0.1, 'p': 0.125,
      'train_loss': 2.3 * 0.97 ** e, 'train_error': 0.8 * 0.98 ** e,
      'test_loss': 1.0 + 1.0 / e, 'test_error': error_at(e, offset),
      'test_top5_error': error_at(e, offset) / 4,
      'epoch_seconds': 10.0, 'images_per_second': 5000.0,
  } for e in range(1, num_epochs + 1)]


def write_workdir(path, config, rows):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=True) + '\n')
  return str(path)


def grid_offset(i, j):
  """A distinct offset per (p index, lr index); (1, 2) is the smallest."""
  return 0.01 * ((i - 1) ** 2 + (j - 2) ** 2) + 0.001 * i


def write_sweep(path, num_epochs=12, name=lambda i, j, p, lr: f'p{i}_lr{j}'):
  """A 3 x 3 p x lr sweep; each member's best test error is known."""
  os.makedirs(path)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(make_config(), f)
  best = {}
  for i, p in enumerate(PS):
    for j, lr in enumerate(LRS):
      offset = grid_offset(i, j)
      write_workdir(os.path.join(path, 'members', name(i, j, p, lr)),
                    make_config(lr=lr, p=p, num_epochs=num_epochs),
                    make_rows(num_epochs, offset))
      best[(p, lr)] = error_at(num_epochs, offset)
  with open(os.path.join(path, 'summary.json'), 'w') as f:
    json.dump({'members': sorted(os.listdir(os.path.join(path, 'members')))},
              f)
  return str(path), best


def table_cells(markdown, first_header='run'):
  """{row label: [cells]} of the first markdown table whose first header
  cell is `first_header`, and its header."""
  lines = markdown.splitlines()
  start = next(i for i, l in enumerate(lines)
               if l.startswith(f'| {first_header} '))
  header = [c.strip() for c in lines[start].strip('|').split('|')]
  body = {}
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    cells = [c.strip() for c in line.strip('|').split(' | ')]
    body[cells[0]] = cells[1:]
  return header, body


# --- loading and labels ----------------------------------------------------


def test_reporting_reads_the_loop_schema_without_jax(tmp_path):
  # reporting/ reads the columns the loop writes (training/records.py) and
  # must run where JAX is not installed: importing it loads no JAX.
  probe = ('import sys, report, reporting.sweep_summary; '
           'sys.exit(3 if "jax" in sys.modules else 0)')
  result = subprocess.run([sys.executable, '-c', probe], cwd=ROOT,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  bad = write_workdir(tmp_path / 'bad', make_config(), [{'step': 1}])
  with pytest.raises(runs_lib.ReportInputError,
                     match=', '.join(records.COLUMNS)):
    runs_lib.load_runs([bad])


def test_load_workdir_and_default_labels(tmp_path):
  a = write_workdir(tmp_path / 'a', make_config(p=0.125, lr=0.1),
                    make_rows(3))
  b = write_workdir(tmp_path / 'b', make_config(name='sgdm', lr=0.1),
                    make_rows(2))
  # Same config but the seed: labels told apart by the seed.
  c = write_workdir(tmp_path / 'c', make_config(p=0.125, lr=0.1, seed=1),
                    make_rows(2))
  runs = runs_lib.load_runs([a, b, c])
  assert [r.name for r in runs] == ['a', 'b', 'c']
  assert runs[0].epochs == [1, 2, 3]
  assert runs[0].rows[1]['test_error'] == error_at(2)
  assert runs[1].label == 'sgdm lr=0.1'
  assert runs[0].label == 'padam p=0.125 lr=0.1 seed=0'
  assert runs[2].label == 'padam p=0.125 lr=0.1 seed=1'
  assert runs[1].p is None and runs[0].p == 0.125 and runs[0].lr == 0.1


def test_labels_identical_configs_unique_and_given(tmp_path):
  a = write_workdir(tmp_path / 'a', make_config(), make_rows(2))
  b = write_workdir(tmp_path / 'b', make_config(), make_rows(2))
  labels = [r.label for r in runs_lib.load_runs([a, b])]
  assert len(set(labels)) == 2
  assert labels == ['padam p=0.125 lr=0.1 [a]', 'padam p=0.125 lr=0.1 [b]']
  given = runs_lib.load_runs([a, b], labels=['first', 'second'])
  assert [r.label for r in given] == ['first', 'second']


def test_model_prefix_when_models_differ(tmp_path):
  a = write_workdir(tmp_path / 'a', make_config(model='vgg16'), make_rows(2))
  b = write_workdir(tmp_path / 'b', make_config(model='resnet18'),
                    make_rows(2))
  assert [r.label for r in runs_lib.load_runs([a, b])] == [
      'vgg16 padam p=0.125 lr=0.1', 'resnet18 padam p=0.125 lr=0.1']


def test_sweep_dir_expands_to_members(tmp_path):
  sweep, _ = write_sweep(tmp_path / 'sweep')
  runs = runs_lib.load_runs([sweep])
  assert len(runs) == 9
  assert runs[0].name == 'sweep/p0_lr0'
  assert all(r.sweep == sweep for r in runs)
  assert len({r.label for r in runs}) == 9
  assert runs[5].label == 'padam p=0.125 lr=0.1'


def test_sweep_members_ordered_by_value(tmp_path):
  # Names as sweeps/grid.py writes them; a natural sort of the text put
  # lr0.001, lr0.01 and lr0.1 in any order, and p0.0625 after p0.125.
  sweep, _ = write_sweep(tmp_path / 'sweep',
                         name=lambda i, j, p, lr: f'p{p:g}-lr{lr:g}')
  runs = runs_lib.load_runs([sweep])
  assert [(r.p, r.lr) for r in runs] == [(p, lr) for p in PS for lr in LRS]
  assert runs_lib.name_key('lr0.001') < runs_lib.name_key('lr0.01') < (
      runs_lib.name_key('lr0.1')) < runs_lib.name_key('lr1')


def test_sweep_member_without_metrics_is_skipped(tmp_path):
  sweep, _ = write_sweep(tmp_path / 'sweep')
  os.remove(os.path.join(sweep, 'members', 'p2_lr2', 'metrics.jsonl'))
  notes = []
  runs = runs_lib.load_runs([sweep], warn=notes.append)
  assert len(runs) == 8
  assert len(notes) == 1 and 'p2_lr2' in notes[0]


# --- tables ----------------------------------------------------------------


def test_error_table_values(tmp_path):
  long = write_workdir(tmp_path / 'long', make_config(lr=0.1), make_rows(200))
  short = write_workdir(tmp_path / 'short', make_config(lr=0.01),
                        make_rows(120, offset=0.05))
  runs = runs_lib.load_runs([long, short])
  text = tables.table_markdown(runs, epochs=(50, 100, 150, 200))
  header, body = table_cells(text)
  assert header == ['run', 'epoch 50', 'epoch 100', 'epoch 150', 'epoch 200',
                    'best', 'best epoch', 'epochs run']
  # Error = 100 (0.9 - 0.004 e + offset): 70 at epoch 50, ...
  assert body['padam p=0.125 lr=0.1'] == [
      '70.00', '50.00', '30.00', '10.00', '10.00', '200', '200']
  # offset 0.05, 120 epochs: the best is the last epoch, 100 * 0.47.
  assert body['padam p=0.125 lr=0.01'] == [
      '75.00', '55.00', '—', '—', '47.00', '120', '120']
  # Top-5 table: error / 4.
  _, body5 = table_cells(text.split('top-5 error')[1])
  assert body5['padam p=0.125 lr=0.1'][:2] == [
      f'{100 * (0.9 - 0.2) / 4:.2f}', f'{100 * 0.5 / 4:.2f}']
  assert 'accuracy' not in text.replace('accuracy = 100 − error', '')


def test_error_table_chosen_epochs_and_gaps(tmp_path):
  rows = [r for r in make_rows(10) if r['epoch'] != 5]
  run = runs_lib.load_runs([write_workdir(tmp_path / 'r', make_config(),
                                          rows)])
  _, body = table_cells(tables.error_table(run, epochs=(1, 5, 10, 11)))
  (cells,) = body.values()
  assert cells[:4] == [f'{100 * (0.9 - 0.004):.2f}', '—',
                       f'{100 * (0.9 - 0.04):.2f}', '—']


@pytest.mark.parametrize('lengths, expected', [
    ((200,), [50, 100, 150, 200]), ((3,), [1, 2, 3]), ((3, 12), [3, 6, 9, 12]),
    ((1,), [1]), ((30, 10), [8, 15, 22, 30])])
def test_default_epochs_follow_the_runs(tmp_path, lengths, expected):
  paths = [write_workdir(tmp_path / f'r{k}', make_config(seed=k),
                         make_rows(n)) for k, n in enumerate(lengths)]
  runs = runs_lib.load_runs(paths)
  assert tables.default_epochs(runs) == expected
  header, _ = table_cells(tables.table_markdown(runs))
  assert header[1:-3] == [f'epoch {e}' for e in expected]


def test_grid_table_rows_columns_and_bold_best(tmp_path):
  sweep, best = write_sweep(tmp_path / 'sweep')
  runs = runs_lib.load_runs([sweep])
  header, body = table_cells(tables.grid_markdown(runs), first_header='p \\ lr')
  assert header == ['p \\ lr', '0.001', '0.01', '0.1']
  assert list(body) == ['p=0.0625', 'p=0.125', 'p=0.25']
  bold = []
  for i, p in enumerate(PS):
    for j, lr in enumerate(LRS):
      cell = body[f'p={p:g}'][j]
      expected = f'{100 * best[(p, lr)]:.2f}'
      assert cell.strip('*') == expected
      if cell.startswith('**'):
        bold.append((p, lr))
  assert bold == [min(best, key=best.get)] == [(0.125, 0.1)]


def test_grid_averages_seeds_and_marks_missing(tmp_path):
  a = write_workdir(tmp_path / 'a', make_config(p=0.25, lr=0.1, seed=0),
                    make_rows(5, 0.0))
  b = write_workdir(tmp_path / 'b', make_config(p=0.25, lr=0.1, seed=1),
                    make_rows(5, 0.1))
  c = write_workdir(tmp_path / 'c', make_config(p=0.125, lr=0.01),
                    make_rows(5, 0.3))
  runs = runs_lib.load_runs([a, b, c])
  assert tables.wants_grid(runs, any_sweep=False)
  header, body = table_cells(tables.grid_table(runs), first_header='p \\ lr')
  assert header == ['p \\ lr', '0.01', '0.1']
  mean = 100 * (error_at(5) + error_at(5, 0.1)) / 2
  assert body['p=0.25'] == ['—', f'**{mean:.2f} (n=2)**']
  assert body['p=0.125'] == [f'{100 * error_at(5, 0.3):.2f}', '—']


def test_no_grid_for_runs_not_varying_p_and_lr(tmp_path):
  a = write_workdir(tmp_path / 'a', make_config(p=0.25), make_rows(2))
  b = write_workdir(tmp_path / 'b', make_config(p=0.125), make_rows(2))
  assert not tables.wants_grid(runs_lib.load_runs([a, b]), any_sweep=False)


# --- figures ---------------------------------------------------------------


def test_figures_one_line_per_run(tmp_path):
  paths = [write_workdir(tmp_path / f'r{k}', make_config(lr=10.0 ** -k),
                         make_rows(20 + k, 0.01 * k)) for k in range(3)]
  runs = runs_lib.load_runs(paths)
  for metric in ('train_loss', 'test_error', 'test_top5_error'):
    fig = plots.metric_figure(runs, metric)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        r.label for r in runs]
    assert ax.get_yscale() == ('log' if metric == 'train_loss' else 'linear')
    # A log axis over a narrow range looks linear: its label says it is not.
    assert ('(log scale)' in ax.get_ylabel()) == (metric == 'train_loss')
  # Errors are drawn in percent.
  line = plots.metric_figure(runs, 'test_error').axes[0].get_lines()[0]
  assert line.get_ydata()[0] == pytest.approx(100 * error_at(1))
  fig = plots.curves_figure(runs)
  axes = [ax for ax in fig.axes if ax.get_lines()]
  assert len(axes) == 3
  assert all(len(ax.get_lines()) == 3 for ax in axes)
  assert [ax.get_ylabel() for ax in axes] == [
      'train loss (log scale)', 'test top-1 error (%)', 'test top-5 error (%)']


def test_grid_figures_colour_by_p_line_style_by_lr(tmp_path):
  # Members in scrambled order of their names: the legend still reads p by
  # p, lr by lr, both ascending.
  sweep, _ = write_sweep(tmp_path / 'sweep', num_epochs=3,
                         name=lambda i, j, p, lr: f'm{(4, 8, 0, 6, 2, 7, 1, 5, 3)[3 * i + j]}')
  runs = runs_lib.load_runs([sweep])
  for fig in (plots.metric_figure(runs, 'test_error'),
              plots.curves_figure(runs)):
    ax = next(ax for ax in fig.axes if ax.get_lines())
    lines = ax.get_lines()
    by_label = {r.label: r for r in runs}
    drawn = [by_label[line.get_label()] for line in lines]
    assert [(r.p, r.lr) for r in drawn] == [(p, lr) for p in PS for lr in LRS]
    colour = {}
    style = {}
    for line, run in zip(lines, drawn):
      assert colour.setdefault(run.p, line.get_color()) == line.get_color()
      assert style.setdefault(run.lr, line.get_linestyle()) == (
          line.get_linestyle())
    assert len(set(colour.values())) == 3 and len(set(style.values())) == 3
    legend = (ax.get_legend() or fig.legends[0]).get_texts()
    assert [t.get_text() for t in legend] == [r.label for r in drawn]


def val_error_at(epoch, k):
  return 0.6 - 0.1 * epoch + 0.01 * k


def write_halved_sweep(path, ends, validated=True):
  """A 2 x 2 p x lr sweep whose member k's rows end at epoch ends[k], with
  val_error_at(epoch, k) (validated) or no validation columns."""
  os.makedirs(path)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(make_config(num_epochs=max(ends)), f)
  grid = [(p, lr) for p in PS[:2] for lr in LRS[1:]]
  for k, ((p, lr), end) in enumerate(zip(grid, ends)):
    rows = make_rows(end)
    for row in rows if validated else ():
      row.update(val_loss=1.0, val_error=val_error_at(row['epoch'], k),
                 val_top5_error=0.1)
    write_workdir(os.path.join(path, 'members', f'm{k}'),
                  make_config(lr=lr, p=p, num_epochs=max(ends)), rows)
  with open(os.path.join(path, 'summary.json'), 'w') as f:
    json.dump({'members': [f'm{k}' for k in range(len(ends))]}, f)
  return str(path)


def test_val_error_figure_marks_members_stopped_at_a_rung(tmp_path):
  import report  # pylint: disable=g-import-not-at-top
  ends = (3, 1, 1, 3)
  sweep = write_halved_sweep(tmp_path / 'sweep', ends)
  out = tmp_path / 'out'
  written = report.make_report([sweep], str(out))
  assert str(out / 'val_error.png') in written
  assert (out / 'val_error.png').read_bytes()[:8] == PNG_SIGNATURE
  runs = runs_lib.load_runs([sweep])
  k_of = {r.label: int(r.name[-1]) for r in runs}
  (ax,) = plots.metric_figure(runs, 'val_error').axes
  assert ax.get_ylabel() == 'validation top-1 error (%)'
  members = [l for l in ax.get_lines() if l.get_label() in k_of]
  assert len(members) == 4
  for line in members:
    k = k_of[line.get_label()]
    assert list(line.get_xdata()) == list(range(1, ends[k] + 1))
    assert list(line.get_ydata()) == pytest.approx(
        [100 * val_error_at(e, k) for e in range(1, ends[k] + 1)])
  # A cross, in the member's colour, at the last point of members 1 and 2.
  crosses = [l for l in ax.get_lines() if l.get_marker() == 'x']
  colour = {k_of[l.get_label()]: l.get_color() for l in members}
  assert sorted((l.get_xdata()[0], round(l.get_ydata()[0], 9), l.get_color())
                for l in crosses) == [
                    (1, round(100 * val_error_at(1, k), 9), colour[k])
                    for k in (1, 2)]
  rungs = [l for l in ax.get_lines() if 'rung' in l.get_label()]
  assert [list(l.get_xdata()) for l in rungs] == [[1, 1]]
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert sorted(legend) == sorted(list(k_of) + ['rung'])
  # Runs of different lengths outside a sweep did not stop at a rung.
  (ax,) = plots.metric_figure(
      runs_lib.load_runs([os.path.join(sweep, 'members', 'm0'),
                          os.path.join(sweep, 'members', 'm1')]),
      'val_error').axes
  assert len(ax.get_lines()) == 2 and 'rung' not in [
      t.get_text() for t in ax.get_legend().get_texts()]
  # Without validation rows: no val_error.png.
  plain = write_halved_sweep(tmp_path / 'plain', ends, validated=False)
  report.make_report([plain], str(tmp_path / 'plain_out'))
  assert not (tmp_path / 'plain_out' / 'val_error.png').exists()
  assert (tmp_path / 'plain_out' / 'curves.png').exists()


def test_make_report_writes_valid_pngs_and_tables(tmp_path):
  sweep, _ = write_sweep(tmp_path / 'sweep', num_epochs=4)
  out = tmp_path / 'out'
  import report  # pylint: disable=g-import-not-at-top
  written = report.make_report([sweep], str(out), epochs=(2, 4),
                               title='synthetic')
  names = sorted(os.listdir(out))
  assert names == ['curves.png', 'grid.md', 'grid.png', 'table.md',
                   'test_error.png', 'test_top5_error.png', 'train_loss.png']
  assert sorted(os.path.basename(p) for p in written) == names
  for name in names:
    if name.endswith('.png'):
      with open(out / name, 'rb') as f:
        data = f.read()
      assert data[:8] == PNG_SIGNATURE and len(data) > 1000
  table = (out / 'table.md').read_text()
  assert table.startswith('# synthetic')
  assert '| run | epoch 2 | epoch 4 |' in table
  fig = plots.grid_figure(runs_lib.load_runs([sweep]))
  assert fig.axes[0].get_images()[0].get_array().shape == (3, 3)


# --- the command line ------------------------------------------------------


def run_cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'report.py'),
                         *map(str, args)], capture_output=True, text=True,
                        cwd=ROOT, timeout=120, check=False)


def test_cli_writes_report(tmp_path):
  a = write_workdir(tmp_path / 'a', make_config(), make_rows(3))
  out = tmp_path / 'out'
  result = run_cli(a, '--out', out, '--epochs', '1,3', '--labels', 'mine')
  assert result.returncode == 0, result.stderr
  assert (out / 'curves.png').exists() and not (out / 'grid.md').exists()
  _, body = table_cells((out / 'table.md').read_text())
  assert body['mine'][:2] == [f'{100 * (0.9 - 0.004):.2f}',
                              f'{100 * (0.9 - 0.012):.2f}']


@pytest.mark.parametrize('case', ['not_workdir', 'empty_metrics', 'missing'])
def test_cli_bad_workdir(tmp_path, case):
  good = write_workdir(tmp_path / 'good', make_config(), make_rows(2))
  bad = tmp_path / 'bad'
  if case == 'not_workdir':
    bad.mkdir()
    (bad / 'config.json').write_text('{}')
  elif case == 'empty_metrics':
    write_workdir(bad, make_config(), [])
  out = tmp_path / 'out'
  result = run_cli(good, bad, '--out', out)
  assert result.returncode == 2
  assert str(bad) in result.stderr
  assert 'metrics.jsonl' in result.stderr
  assert 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize('args, message', [
    (('--epochs', '0'), "error: argument --epochs: '0': expected positive "
     'epoch numbers separated by commas'),
    ((), 'error: the following arguments are required: --out'),
])
def test_cli_bad_flag_is_one_error_line(tmp_path, args, message):
  a = write_workdir(tmp_path / 'a', make_config(), make_rows(2))
  out = tmp_path / 'out'
  result = run_cli(a, *(('--out', out) if args else ()), *args)
  assert result.returncode == 2
  assert result.stderr.startswith(message), result.stderr
  assert len(result.stderr.strip().splitlines()) == 1  # No usage block.
  assert not out.exists()


@pytest.mark.parametrize('flag, text, reason', [
    ('--title', r'$\frac{$', r"Expected \frac{num}{den}, found '{'"),
    ('--labels', r'$\foo$', r'Unknown symbol: \foo'),
])
def test_cli_text_matplotlib_cannot_draw(tmp_path, flag, text, reason):
  """Bad mathtext is one error line before --out exists (it used to be
  matplotlib's traceback from the first savefig, after --out was made)."""
  a = write_workdir(tmp_path / 'a', make_config(), make_rows(2))
  out = tmp_path / 'out'
  result = run_cli(a, '--out', out, flag, text)
  assert result.returncode == 2, result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith(f"error: {flag} '{text}': matplotlib cannot draw "
                         f'it ({reason}')
  assert not out.exists()


def test_text_with_dollar_signs_that_draws(tmp_path):
  # Mathtext that parses, and an escaped dollar sign, are fine.
  a = write_workdir(tmp_path / 'a', make_config(), make_rows(2))
  out = tmp_path / 'out'
  result = run_cli(a, '--out', out, '--title', r'Padam, $p = 1/8$, \$0')
  assert result.returncode == 0, result.stderr
  assert (out / 'table.md').read_text().startswith(r'# Padam, $p = 1/8$')


def test_cli_wrong_number_of_labels(tmp_path):
  a = write_workdir(tmp_path / 'a', make_config(), make_rows(2))
  out = tmp_path / 'out'
  result = run_cli(a, '--out', out, '--labels', 'x', 'y')
  assert result.returncode == 2 and 'labels' in result.stderr
  assert 'Traceback' not in result.stderr and not out.exists()
