"""The summary of a sweep: per member, its grid values and its errors.

sweeps/run.py writes it after each chunk as summary.json and summary.md;
nothing here imports JAX.
"""

from typing import Optional

import numpy as np

from reporting.runs import fmt_number
from reporting.runs import member_key
from reporting.tables import MISSING
from reporting.tables import join_blocks
from reporting.tables import markdown_table
from reporting.tables import percent
from training import records


def summarize_member(name: str, values: dict, rows: list,
                     diverged: Optional[dict] = None) -> dict:
  """Errors, skipped steps and divergence of member `name` (its grid values).

  diverged: what the sweep's NonfiniteWatch recorded ({'step', 'epoch',
  'reason'}), None if nothing; a member whose train loss is not finite in a
  row counts as diverged too.
  """
  out = {'name': name, **values, 'epochs': len(rows)}
  best = _best(rows, 'test_error')
  final = rows[-1] if rows else {}
  nan_epochs = [r['epoch'] for r in rows
                if records.finite_or_none(r['train_loss']) is None]
  diverged = diverged or {}
  out.update(
      final_test_error=records.finite_or_none(final.get('test_error')),
      best_test_error=best[0], best_epoch=best[1],
      final_train_loss=records.finite_or_none(final.get('train_loss')),
      skipped_steps=sum(r.get('skipped_steps') or 0 for r in rows),
      diverged_epoch=diverged.get('epoch', next(iter(nan_epochs), None)),
      diverged_step=diverged.get('step'),
      diverged_reason=diverged.get('reason'))
  if any('val_error' in r for r in rows):
    best_val = _best(rows, 'val_error')
    out.update(final_val_error=records.finite_or_none(final.get('val_error')),
               best_val_error=best_val[0], best_val_epoch=best_val[1])
  return out


def _best(rows: list, key: str) -> tuple:
  """(the lowest finite `key` of `rows`, its epoch), or (None, None)."""
  return min(((r[key], r['epoch']) for r in rows
              if records.finite_or_none(r.get(key)) is not None),
             default=(None, None))


def halving_outcome(summary: list, rows: list, rungs: list,
                    num_epochs: int) -> dict:
  """Where each member of a halving sweep stopped and why, and the winner.

  summary, rows: summarize_member's dicts and each member's metrics rows,
  in grid order; rungs: the sweep's halving.Rung records, rung by rung.
  Adds to each member's dict its stopped_epoch (None: it trained to
  num_epochs), stopped_val_error (its validation error at that rung) and
  rung_cut (the worst validation error that went on there).
  Returns {'winner', 'winner_val_error'}: of the members trained to
  num_epochs, the lowest final validation error (the earliest in the grid
  on a tie; the test split decides nothing).
  """
  by_name = {s['name']: s for s in summary}
  for s in summary:
    # summarize_member's final_val_error; None for a member without rows.
    s.setdefault('final_val_error', None)
    s.update(stopped_epoch=None, stopped_val_error=None, rung_cut=None)
  for rung in rungs:
    errors = dict(zip(rung.members, rung.val_errors))
    cut = max((errors[n] for n in rung.survivors if errors[n] is not None),
              default=None)
    for name in set(rung.members) - set(rung.survivors):
      by_name[name].update(stopped_epoch=rung.epoch,
                           stopped_val_error=errors[name], rung_cut=cut)
  finished = [s for s, member_rows in zip(summary, rows)
              if member_rows and member_rows[-1]['epoch'] == num_epochs and
              s['final_val_error'] is not None]
  winner = min(finished, key=lambda s: s['final_val_error'], default=None)
  return {'winner': winner and winner['name'],
          'winner_val_error': winner and winner['final_val_error']}


def summary_markdown(base: dict, keys: list, summary: list,
                     halving: Optional[dict] = None) -> str:
  """The markdown table of `summary` (summarize_member's), the members
  ordered as report.py orders them (`member_key`: p, then lr, by value).

  base: the train config the members share (a dict); keys: the grid keys;
  halving: a halving sweep's halving_outcome (its members' dicts hold
  theirs).
  """
  summary = sorted(summary, key=lambda s: member_key(
      s.get('p'), s.get('learning_rate'), s.get('seed'), s['name']))
  validated = any('best_val_error' in s for s in summary)
  opt = base['optimizer']
  counts = ' x '.join(str(len({s[k] for s in summary})) for k in keys)
  epochs = base['num_epochs']
  data = (base['data_dir'] if base.get('data_source') == 'arrays' else
          base['dataset'])
  blocks = [
      f'# Sweep: {base["model"]} on {data}, {opt["name"]}',
      f'{len(summary)} members ({counts} over {", ".join(keys)}), {epochs} '
      f'epoch{"" if epochs == 1 else "s"} at batch {base["batch_size"]}, ' + (
          f'lr x{opt["lr_factor"]} at epochs '
          f'{", ".join(map(str, opt["lr_milestones"]))}'
          if opt['lr_milestones'] else 'constant lr') +
      '. Errors in %.',
      markdown_table(
          ['member'] + keys + ['epochs', 'final test error', 'best test error',
                               'best epoch'] +
          (['final val error', 'best val error', 'best val epoch']
           if validated else []) + (['stopped'] if halving else []),
          [[s['name']] + [fmt_number(s[k]) for k in keys] + [
              str(s['epochs']),
              percent(s['final_test_error']) + _divergence(s),
              percent(s['best_test_error']), _epoch(s['best_epoch'])] +
           ([percent(s.get('final_val_error')),
             percent(s.get('best_val_error')),
             _epoch(s.get('best_val_epoch'))] if validated else []) +
           ([_stopped(s)] if halving else [])
           for s in summary])]
  if halving:
    blocks.append(
        'Successive halving on the validation split: at each rung the best '
        '1/eta of the members by validation error go on (ties: grid order; '
        'the cut: the worst that went on), the others stop. Winner (lowest '
        'final validation error): ' + (
            f'{halving["winner"]}, validation error '
            f'{percent(halving["winner_val_error"])}%.' if halving['winner']
            else 'none (no member ended with a finite validation error).'))
  done = [s for s in summary if s['best_test_error'] is not None]
  if done:
    best = min(done, key=lambda s: s['best_test_error'])
    blocks.append(f'Best: {best["name"]}, test error '
                  f'{percent(best["best_test_error"])}% at epoch '
                  f'{best["best_epoch"]}.')
  if 'seed' in keys and len({s['seed'] for s in summary}) > 1:
    blocks += ['Mean ± std over seeds of the final test error (%):',
               _seed_means(keys, summary)]
  return join_blocks(blocks)


def _epoch(epoch) -> str:
  return MISSING if epoch is None else str(epoch)


def _stopped(s: dict) -> str:
  if s['stopped_epoch'] is None:
    return MISSING
  return (f'epoch {s["stopped_epoch"]}: val error '
          f'{percent(s["stopped_val_error"])}, cut {percent(s["rung_cut"])}')


def _divergence(s: dict) -> str:
  if s['diverged_epoch'] is None:
    return (f' ({s["skipped_steps"]} steps skipped)'
            if s.get('skipped_steps') else '')
  at = f'epoch {s["diverged_epoch"]}'
  if s.get('diverged_step') is not None:
    at += f', step {s["diverged_step"]}: {s["diverged_reason"]}'
  return f' (diverged at {at})'


def _seed_means(keys, summary) -> str:
  others = [k for k in keys if k != 'seed']
  groups = {}
  for s in summary:
    if s['final_test_error'] is not None:
      groups.setdefault(tuple(s[k] for k in others), []).append(
          s['final_test_error'])
  rows = []
  for values, errors in groups.items():
    e = 100 * np.asarray(errors)
    rows.append([fmt_number(v) for v in values] +
                [str(len(errors)), f'{e.mean():.2f} ± {e.std():.2f}'])
  return markdown_table(others + ['seeds', 'final test error'], rows, left=0)
