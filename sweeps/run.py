"""`run_sweep(config, workdir)`: every member of a grid, chunk after chunk.

Each chunk (sweeps/spec.py) is trained by the epoch loop that train.py uses
(training/loop.py), through the vmapped steps of sweeps/grid.py. The sweep's
directory (training/rundir.py) records the sweep config (chunk resolved, and
the device layout its numbers depend on), members/<name>/ as train.py's run
directories (their config with `sweep_member`: how its data order was
drawn), checkpoints/chunk-NNN/ of each chunk's stacked state,
summary.json|md (reporting/sweep_summary.py) and, with successive halving
(sweeps/halving.py), rungs/ of its decisions. Running again on the same
workdir resumes every chunk and ends bit-identical to an uninterrupted sweep.
"""

import json
import logging
import os
from typing import Callable, Optional

import jax
import ml_collections

from reporting import sweep_summary
from sweeps import grid
from sweeps import halving
from sweeps import spec
from training import configuration
from training import input_pipeline
from training import loop
from training import paths
from training import rundir


def _stored_sweep(stored: dict) -> dict:
  """The `sweep` block of a stored config ({} when none)."""
  sweep = stored.get('sweep')
  return sweep if isinstance(sweep, dict) else {}


def _chunk_request(config: ml_collections.ConfigDict, stored: dict,
                   chunk: Optional[int]) -> int:
  """--chunk, else sweep.chunk; "auto" resumes with the stored chunk."""
  requested = spec.sweep_options(config, chunk)['chunk']
  if requested == spec.AUTO_CHUNK:
    requested = _stored_sweep(stored).get('chunk') or spec.AUTO_CHUNK
  return requested


def cpu_split(config: ml_collections.ConfigDict, workdir: str,
              chunk: Optional[int] = None) -> tuple:
  """(members at once, XLA devices) to split a CPU host into for this sweep:
  the recorded mesh when `workdir` holds a sweep, so that a resume computes
  on the same device layout as the run it continues. ValueError for a bad
  grid or workdir (run_sweep reports it)."""
  spec.grid_members(config)  # The grid first, as run_sweep checks it.
  stored = rundir.read_stored_config(paths.check_output_dir(workdir))
  layout = stored.get('sweep_layout')
  if isinstance(layout, dict):
    return layout['grid_devices'], (layout['grid_devices'] *
                                    layout['devices_per_member'])
  requested = _chunk_request(config, stored, chunk)
  return (spec.members_at_once(config, requested),
          grid.cpu_devices(config, requested))


def _layout(base, stored: dict, workdir: str, chunk_size: int) -> dict:
  """The mesh the grid trains on: (grid x data) devices, the recorded one
  (`stored`'s sweep_layout) where there is one. Whatever decides the float
  rounding is recorded and a resume must reproduce it: ValueError if this
  process cannot."""
  recorded = stored.get('sweep_layout')
  if isinstance(recorded, dict):
    per_member = recorded['devices_per_member']
  else:
    per_member = grid.devices_per_member(base, jax.device_count(), chunk_size)
  layout = {'grid_devices': jax.device_count() // per_member,
            'devices_per_member': per_member}
  if isinstance(recorded, dict) and recorded != layout:
    raise ValueError(
        f'workdir={workdir!r} holds a sweep trained on '
        f'{recorded["grid_devices"]} x {recorded["devices_per_member"]} '
        f'devices (grid x data); this process has {jax.device_count()} '
        f'device(s), giving {layout["grid_devices"]} x {per_member}; allowed: '
        f'{recorded["grid_devices"] * recorded["devices_per_member"]} devices '
        '(sweep.py splits a CPU host so by itself: set no device count), as '
        'the device layout changes float rounding, so a resumed sweep would '
        'not match an uninterrupted one.')
  return layout


def _check_workdirs(config, workdir: str, members: list, stored: dict,
                    chunk_size: int, layout: Optional[dict],
                    options: dict) -> tuple:
  """(sweep Workdir, member Workdirs), checked for a sweep of `chunk_size`
  members at a time; ValueError for a workdir trained in other chunks.
  layout: the device layout to record (None: a sweep recorded before
  layouts, resumed unrecorded). options: spec.sweep_options's."""
  own_batches, (eta, first_rung) = options['own_batches'], options['halving']
  if eta and chunk_size < len(members):
    raise ValueError(
        f'sweep.chunk={chunk_size} is not allowed with sweep.halving.eta='
        f'{eta} ({len(members)} members); allowed: a chunk of all the '
        'members (0), as halving decides among every member at once.')
  stored_chunk = _stored_sweep(stored).get('chunk')
  if stored_chunk is not None and stored_chunk != chunk_size:
    raise ValueError(
        f'sweep.chunk={chunk_size} is not allowed for workdir={workdir!r}: '
        f'it holds a sweep trained {stored_chunk} members at a time; '
        f'allowed: {stored_chunk} (--chunk {stored_chunk}), as the grouping '
        'changes float rounding, so a resumed sweep would not match an '
        'uninterrupted one.')
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.sweep.chunk = chunk_size
    # Stored as resolved when on, absent when off (as before halving was),
    # so a resume with halving turned on, off or changed is refused by name.
    if eta:
      c.sweep.halving = ml_collections.ConfigDict(
          {'eta': eta, 'first_rung_epochs': first_rung})
    elif 'halving' in c.sweep:
      del c.sweep['halving']
    if layout is not None:
      c.sweep_layout = layout
  sweep_dir = rundir.Workdir(workdir, c)
  sweep_dir.check()
  member_dirs = []
  for m in members:
    cfg = spec.member_config(config, m)
    cfg.sweep_member = {'name': m.name, 'own_batches': own_batches,
                        'data_seed': m.seed if own_batches else config.seed}
    member_path = os.path.join(workdir, rundir.MEMBERS_DIR, m.name)
    # The sweep's own directory: not one that leads out of the workdir.
    rundir.refuse_symlink(member_path, 'directory')
    member_dirs.append(rundir.Workdir(member_path, cfg))
    member_dirs[-1].check(data_file=sweep_dir.data_path)
  return sweep_dir, member_dirs


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *,
              chunk: Optional[int] = None,
              data: input_pipeline.CifarData = None, progress: bool = True,
              after_epoch: Optional[Callable[[int, int], None]] = None,
              profile_steps: int = 0) -> list:
  """Trains every member of `config`'s grid; resumes from `workdir`.

  chunk: overrides config.sweep.chunk. Bad input (grid, config, data, a
  workdir holding another sweep) is refused before any file is written.
  after_epoch(chunk_index, epoch): for tests. profile_steps: as train.py's.
  Returns the summary: one dict per member.
  """
  members = spec.grid_members(config)
  options = spec.sweep_options(config, chunk)
  base = spec.train_config(config)
  # Members spread over the devices, not batches: no batch size to divide.
  configuration.validate(base)
  eta, first_rung = options['halving']
  if eta and not base.validation_examples:
    raise ValueError(
        f'sweep.halving.eta={eta} is not allowed with validation_examples='
        f'{base.validation_examples}; allowed: validation_examples >= 1 (the '
        'held-out images halving decides on, never the test split), or '
        'sweep.halving.eta=0 (off).')
  if jax.process_count() > 1:
    raise ValueError(f'jax.process_count()={jax.process_count()} is not '
                     'allowed; allowed: 1 (a sweep runs in one process, its '
                     'members spread over that process\'s devices).')
  workdir = paths.check_output_dir(workdir)
  # Read once, before any write: what the workdir's sweep was trained with.
  stored = rundir.read_stored_config(workdir)
  requested_chunk = _chunk_request(config, stored, chunk)
  # All members for AUTO_CHUNK until the memory estimate below.
  chunk_size = spec.first_chunk_size(len(members), requested_chunk)
  layout = _layout(base, stored, workdir, chunk_size)
  # A sweep recorded before layouts were resumes unrecorded (and unchecked).
  layout_record = None if stored and 'sweep_layout' not in stored else layout
  check = lambda size: _check_workdirs(config, workdir, members, stored, size,
                                       layout_record, options)
  if requested_chunk != spec.AUTO_CHUNK:
    sweep_dir, member_dirs = check(chunk_size)
  data, shape = loop.load_data(base, workdir, data=data,
                               profile_steps=profile_steps)
  model, optimizer, steps, init = grid.build(
      base, shape.num_classes, shape.steps_per_epoch, options['own_batches'],
      data=layout['devices_per_member'], dataset=data.spec)
  if requested_chunk == spec.AUTO_CHUNK:
    member_bytes = grid.estimate_member_bytes(model, optimizer,
                                              base.batch_size, data.spec)
    chunk_size = grid.auto_chunk(len(members), member_bytes,
                                 grid.free_memory_bytes(),
                                 reserved_bytes=data.train.images.nbytes,
                                 num_devices=steps.mesh.shape[grid.GRID_AXIS])
    logging.info('Auto chunk: %d of %d members at once (~%.1f MiB each)',
                 chunk_size, len(members), member_bytes / 2**20)
    sweep_dir, member_dirs = check(chunk_size)
  groups = spec.chunks_of(list(zip(members, member_dirs)), chunk_size)

  def steps_for(kept: list) -> grid.GridSteps:
    # As many grid slices as the members fill: a smaller grid frees devices
    # rather than padding them; each member keeps its data devices, so its
    # float rounding.
    slices = min(steps.mesh.shape[grid.GRID_AXIS], len(kept))
    return grid.build(
        base, shape.num_classes, shape.steps_per_epoch,
        options['own_batches'], data=layout['devices_per_member'],
        devices=jax.devices()[:slices * layout['devices_per_member']],
        dataset=data.spec)[2].for_members(kept)

  rungs = halving.Rungs(workdir, eta, halving.rung_epochs(
      first_rung, eta, base.num_epochs), steps_for) if eta else None
  chunks = [_chunk(steps, init, group, i, len(groups), workdir, rungs)
            for i, group in enumerate(groups)]

  keys = [k for k in spec.GRID_KEYS if k in members[0].values]
  diverged = {}  # {member name: watch record}
  for trained, result in loop.run(base, shape, data, sweep_dir, chunks,
                                  progress=progress,
                                  profile_steps=profile_steps,
                                  after_epoch=after_epoch):
    diverged.update({name: d for name, d in zip(result.member_names,
                                               result.loop.diverged)
                     if d is not None})
    rows = [rundir.read_rows(d.jsonl_path) for d in member_dirs]
    summary = [sweep_summary.summarize_member(
        m.name, m.values, member_rows, diverged.get(m.name))
               for m, member_rows in zip(members, rows)]
    outcome = None if rungs is None else sweep_summary.halving_outcome(
        summary, rows, rungs.recorded([m.name for m in members]),
        base.num_epochs)
    rundir.atomic_write(
        os.path.join(workdir, rundir.SUMMARY_JSON),
        json.dumps({'members': summary, **(outcome or {})}, indent=2,
                   sort_keys=True))
    rundir.atomic_write(
        os.path.join(workdir, rundir.SUMMARY_MD),
        sweep_summary.summary_markdown(base.to_dict(), keys, summary,
                                       outcome))
  return summary


def _chunk(steps, init, group: list, index: int, count: int,
           workdir: str, rungs: Optional[halving.Rungs]) -> loop.Chunk:
  """Chunk `index` of `count`: `group`'s (member, Workdir) pairs; rungs:
  the sweep's halving, or None."""
  chunk_steps = steps.for_members([m for m, _ in group])

  def init_chunk():
    logging.info('Chunk %d/%d: %d members (%s) at once on %d x %d '
                 'device(s) (grid x data)%s.', index + 1, count, len(group),
                 ', '.join(chunk_steps.member_names),
                 steps.mesh.shape[grid.GRID_AXIS],
                 steps.mesh.shape[grid.DATA_AXIS],
                 f', padded to {len(chunk_steps.padded_members)}'
                 if len(chunk_steps.padded_members) > len(group) else '')
    return grid.init_grid(init, chunk_steps.padded_members)

  return loop.Chunk(chunk_steps, init_chunk, [d for _, d in group],
                    rundir.chunk_dir(workdir, index),
                    f'chunk {index + 1}/{count}', rungs)
