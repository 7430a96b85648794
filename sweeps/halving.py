"""Successive halving of a sweep's grid: options, rungs, decisions, compaction.

  sweep.halving.eta               0 (the default): off; an integer >= 2: at
                                  each rung the best ceil(n / eta) of the n
                                  live members go on, the others stop there
  sweep.halving.first_rung_epochs the first rung's epoch (default 1); the
                                  next rungs are at it times eta, eta^2, ...

Every live member has trained the same epochs at a rung. Stopped members'
rows end there; survivors train on as a smaller stacked state (compaction).
A rung's checkpoint is saved before its decision, and the decision recorded
(WORKDIR/rungs/epoch-NNN.json) before the compaction: a checkpoint at step s
holds the members live after every rung that ends before s.
"""

import dataclasses
import json
import math
import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from training import rundir

OPTION_KEYS = ('eta', 'first_rung_epochs')
_RECORD_KEYS = ('epoch', 'eta', 'members', 'val_errors', 'survivors')


def _refuse(key, value, allowed):
  raise ValueError(f'{key}={value!r} is not allowed; allowed: {allowed}.')


def _is_int(value) -> bool:
  return type(value) is int or isinstance(value, np.integer)


def halving_options(config: ml_collections.ConfigDict) -> tuple:
  """(eta, first_rung_epochs) of `config.sweep.halving`, checked; an absent
  block or key takes its default (eta 0: off)."""
  halving = (config.get('sweep') or {}).get('halving', {})
  if not isinstance(halving, (dict, ml_collections.ConfigDict)):
    _refuse('sweep.halving', halving,
            f'a block of the keys {", ".join(OPTION_KEYS)}')
  for key in sorted(set(halving) - set(OPTION_KEYS)):
    _refuse(f'sweep.halving.{key}', halving[key],
            f'only the keys {", ".join(OPTION_KEYS)}')
  eta = halving.get('eta', 0)
  if not _is_int(eta) or not (eta == 0 or eta >= 2):
    _refuse('sweep.halving.eta', eta, '0 (off) or an integer >= 2')
  first = halving.get('first_rung_epochs', 1)
  if not _is_int(first) or first < 1:
    _refuse('sweep.halving.first_rung_epochs', first, 'an integer >= 1')
  return int(eta), int(first)


def rung_epochs(first: int, eta: int, num_epochs: int) -> tuple:
  """The epochs of the decisions: first, first * eta, ... below num_epochs.

  None at num_epochs: a decision there would stop no training (the winner is
  the best of the last rows). eta 0 (off): no rungs.
  """
  rungs, epoch = [], first
  while eta and epoch < num_epochs:
    rungs.append(epoch)
    epoch *= eta
  return tuple(rungs)


def survivor_count(num_live: int, eta: int) -> int:
  return -(-num_live // eta)


def survivors(val_errors, eta: int) -> list:
  """Indices, in grid order, of the best ceil(n / eta) of n live members.

  Ranked by validation error (lower is better); a NaN, infinite or None error
  (a diverged member) ranks after every finite one; equal ranks go to the
  member earlier in `val_errors` (grid order). The count does not depend on
  the errors: if too few are finite, diverged members go on too.
  """
  def rank(index):
    error = val_errors[index]
    finite = error is not None and math.isfinite(error)
    return (not finite, error if finite else 0.0, index)
  ranked = sorted(range(len(val_errors)), key=rank)
  return sorted(ranked[:survivor_count(len(val_errors), eta)])


def member_epochs(num_members: int, eta: int, rungs, num_epochs: int) -> int:
  """The epochs trained, summed over members, by a halving sweep.

  A member stopped at a rung has trained up to that rung's epoch; without
  rungs this is the full grid's num_members * num_epochs.
  """
  total, live, done = 0, num_members, 0
  for epoch in (*rungs, num_epochs):
    total += live * (epoch - done)
    live, done = survivor_count(live, eta), epoch
  return total


@dataclasses.dataclass(frozen=True)
class Rung:
  """One decision: the live members' names and validation errors (None:
  diverged) at `epoch`, in grid order, and the names of those going on."""
  epoch: int
  eta: int
  members: tuple
  val_errors: tuple
  survivors: tuple

  @classmethod
  def decide(cls, epoch: int, eta: int, members, val_errors) -> 'Rung':
    errors = tuple(None if e is None or not math.isfinite(e) else float(e)
                   for e in val_errors)
    kept = survivors(errors, eta)
    return cls(int(epoch), int(eta), tuple(members), errors,
               tuple(members[i] for i in kept))

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, allow_nan=False)

  @classmethod
  def from_json(cls, value: dict, path: str) -> 'Rung':
    """The record in `value` (read from `path`); ValueError naming the file
    unless `decide` could have written it."""
    def fail(why):
      raise ValueError(f'{path} is not a halving rung record ({why}); '
                       'allowed: the record padax writes: move it away, or '
                       'use a new workdir.')
    if sorted(value) != sorted(_RECORD_KEYS):
      fail(f'keys {sorted(value)}, not {sorted(_RECORD_KEYS)}')
    for key, least in (('epoch', 1), ('eta', 2)):
      if not _is_int(value[key]) or value[key] < least:
        fail(f'{key} {value[key]!r} is not an integer >= {least}')
    members, errors = value['members'], value['val_errors']
    if not all(isinstance(v, list) and all(type(n) is str for n in v)
               for v in (members, value['survivors'])
               ) or len(set(members)) != len(members):
      fail('members and survivors are not lists of distinct names')
    if (not isinstance(errors, list) or len(errors) != len(members) or
        not all(e is None or type(e) in (int, float) for e in errors)):
      fail('val_errors is not one number or null per member')
    rung = cls.decide(value['epoch'], value['eta'], members, errors)
    if list(rung.survivors) != value['survivors']:
      fail(f'survivors {value["survivors"]} are not the decision from its '
           f'val_errors: {list(rung.survivors)}')
    return rung

  def write(self, write, path: str) -> None:
    """Writes the record to `path` by `write(path, text)` (atomic_write)."""
    write(path, self.to_json())

  @classmethod
  def read(cls, path: str) -> 'Rung':
    """The record at `path`; ValueError naming the file if it is damaged."""
    return cls.from_json(rundir.read_json_object(path), path)


def gather_members(tree, indices):
  """The stacked pytree (leading axis: member) of the members `indices`, in
  that order, dtypes kept. A sharded jax.Array comes back as jax places the
  gather; the caller re-places the result on its mesh."""
  indices = np.asarray(indices, dtype=np.intp)
  sizes = {np.shape(x)[:1] for x in jax.tree.leaves(tree)} or {(0,)}
  size = sizes.pop()[0] if len(sizes) == 1 and () not in sizes else 0
  if indices.ndim != 1 or not np.all((indices >= 0) & (indices < size)):
    raise ValueError(
        f'member indices {indices.tolist()} are not allowed (leaves lead '
        f'with {size or "no common count of"} members); allowed: a list of '
        'indices in [0, n) of a pytree whose every leaf leads with n members.')
  return jax.tree.map(lambda x: x[indices], tree)


class Rungs:
  """A halving sweep's rungs (`epochs`) and their records in `workdir`;
  steps_for(members) gives the steps (grid.GridSteps) its survivors
  (spec.Member) train with."""

  def __init__(self, workdir: str, eta: int, epochs, steps_for):
    self.workdir, self.eta, self.epochs = workdir, eta, tuple(epochs)
    self.steps_for = steps_for

  def _record(self, epoch: int, names) -> Optional[Rung]:
    """The record of rung `epoch` (None if not decided yet); ValueError
    unless it is a decision of this sweep among the live `names`."""
    path = rundir.rung_path(self.workdir, epoch)
    if not os.path.lexists(path):
      return None
    rung = Rung.read(path)
    if rung.eta != self.eta or list(rung.members) != list(names):
      raise ValueError(
          f'{path} records a decision with eta {rung.eta} among '
          f'{list(rung.members)}, but this sweep has eta {self.eta} and '
          f'{list(names)} live at epoch {epoch}; allowed: the records this '
          f'sweep wrote: {rundir.MOVE_AWAY}.')
    return rung

  def live(self, names, step: int, shape) -> list:
    """Of the grid's `names`, those live in a checkpoint at `step`: the
    survivors of every rung that ends before it."""
    for epoch in self.epochs:
      if shape.end_step(epoch) >= step:
        break
      rung = self._record(epoch, names)
      if rung is None:
        raise ValueError(
            f'{rundir.rung_path(self.workdir, epoch)} is missing, but a '
            f'checkpoint at step {step} is past that rung; allowed: the '
            f'records this sweep wrote: restore it, or use a new workdir.')
      names = list(rung.survivors)
    return list(names)

  def recorded(self, names) -> list:
    """The Rung records of the grid `names`, rung by rung, up to the first
    rung not decided yet."""
    rungs = []
    for epoch in self.epochs:
      rung = self._record(epoch, rungs[-1].survivors if rungs else names)
      if rung is None:
        break
      rungs.append(rung)
    return rungs

  def stopped_at(self, names) -> list:
    """Per member of `names` (the grid), the rung epoch that stopped it
    (None: live after every recorded rung)."""
    stops = {n: rung.epoch for rung in self.recorded(names)
             for n in rung.members if n not in rung.survivors}
    return [stops.get(n) for n in names]

  def decide(self, epoch: int, names, val_errors) -> Rung:
    """The decision at rung `epoch` among the live `names`: its record, else
    decided from `val_errors` and written (atomically) first."""
    rung = self._record(epoch, names)
    if rung is None:
      rung = Rung.decide(epoch, self.eta, names, val_errors)
      path = rundir.rung_path(self.workdir, epoch)
      rundir.prepare_dir(os.path.dirname(path))
      rung.write(rundir.atomic_write, path)
    return rung

  def compact(self, steps, state, loop, keep: list) -> tuple:
    """(steps, state, loop) of the members at indices `keep` of `steps`'
    live ones: their stacked state gathered, padded and placed on the mesh
    of steps_for, and their loop counters (loop None: none; at a rung, an
    epoch end, it holds no totals)."""
    members = steps.padded_members[:steps.num_members]
    view = self.steps_for([members[i] for i in keep])
    state = view.place(gather_members(state, keep))
    if loop is not None:
      loop = dataclasses.replace(
          loop, num_members=len(keep),
          nonfinite_in_a_row=[loop.nonfinite_in_a_row[i] for i in keep],
          diverged=[loop.diverged[i] for i in keep])
    return view, state, loop
