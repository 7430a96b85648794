"""`run_sweep(config, workdir)`: every member of a grid, chunk after chunk.

Each chunk (sweeps/spec.py) is trained by the epoch loop that train.py uses
(training/loop.py), through the vmapped steps of sweeps/grid.py.

Workdir layout:
  config.json                     the sweep config (chunk resolved)
  members/<name>/config.json      the member's effective train config (+
                                  `sweep_member`: how its data order was drawn)
  members/<name>/metrics.jsonl|csv  the same rows and columns as train.py
  checkpoints/chunk-NNN/<step>    Orbax checkpoints of a chunk's stacked state
  summary.json, summary.md        per member: p, lr, seed, final and best test
                                  error, best epoch (reporting/sweep_summary.py)
Running again on the same workdir resumes every chunk from its latest
checkpoint and ends bit-identical to an uninterrupted sweep.
"""

import json
import logging
import os
from typing import Callable, Optional

import jax
import ml_collections

from reporting import sweep_summary
from sweeps import grid
from sweeps import spec
from training import checkpoints
from training import configuration
from training import faults
from training import input_pipeline
from training import loop
from training import profiling
from training import workdir as workdir_lib


def _stored_chunk(workdir: str) -> Optional[int]:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return None  # Or not a file: Workdir.check says so.
  sweep = workdir_lib.read_json_object(path).get('sweep')
  return sweep.get('chunk') if isinstance(sweep, dict) else None


def _chunk_dir(workdir: str, index: int) -> str:
  return os.path.join(workdir, 'checkpoints', f'chunk-{index:03d}')


def _chunk_store(workdir: str, index: int,
                 keep: int) -> checkpoints.CheckpointStore:
  return checkpoints.CheckpointStore(_chunk_dir(workdir, index), keep)


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *,
              chunk: Optional[int] = None,
              data: input_pipeline.CifarData = None, progress: bool = True,
              after_epoch: Optional[Callable[[int, int], None]] = None,
              profile_steps: int = 0) -> list:
  """Trains every member of `config`'s grid; resumes from `workdir`.

  chunk: overrides config.sweep.chunk. Everything that can be refused (grid,
  config, optimizer values, data, a workdir holding another sweep) is checked
  before any file is written. `after_epoch(chunk_index, epoch)` (for tests)
  runs after an epoch's metrics are written, before its checkpoint. Returns
  the summary: one dict per member. `profile_steps` > 0 writes a profiler
  trace of that many grid steps, after 5 warm-up steps, to WORKDIR/profile.
  """
  members = spec.grid_members(config)
  options = spec.sweep_options(config)
  if chunk is not None:
    options['chunk'] = spec.sweep_options(ml_collections.ConfigDict(
        {'sweep': {'chunk': chunk}}))['chunk']
  base = spec.train_config(config)
  # Members spread over the devices, not batches: no batch size to divide.
  configuration.validate(base)
  if jax.process_count() > 1:
    raise ValueError(f'jax.process_count()={jax.process_count()} is not '
                     'allowed; allowed: 1 (a sweep runs in one process, its '
                     'members spread over that process\'s devices).')
  workdir = workdir_lib.check_and_resolve(workdir)
  requested_chunk = options['chunk']
  if requested_chunk == spec.AUTO_CHUNK:
    requested_chunk = _stored_chunk(workdir) or spec.AUTO_CHUNK

  def resolved(chunk_size):
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.sweep.chunk = chunk_size
    return c

  def check_workdirs(chunk_size):
    stored = _stored_chunk(workdir)
    if stored is not None and stored != chunk_size:
      raise ValueError(
          f'sweep.chunk={chunk_size} is not allowed for workdir={workdir!r}: '
          f'it holds a sweep trained {stored} members at a time; allowed: '
          f'{stored} (--chunk {stored}), as the grouping changes float '
          'rounding, so a resumed sweep would not match an uninterrupted '
          'one.')
    sweep_dir = workdir_lib.Workdir(workdir, resolved(chunk_size))
    sweep_dir.check()
    member_dirs = []
    for m in members:
      cfg = spec.member_config(config, m)
      cfg.sweep_member = {'name': m.name, 'own_batches': options['own_batches'],
                          'data_seed': m.seed if options['own_batches']
                                       else base.seed}
      member_dirs.append(workdir_lib.Workdir(
          os.path.join(workdir, 'members', m.name), cfg))
      member_dirs[-1].check(data_file=sweep_dir.data_path)
    return sweep_dir, member_dirs

  # All members for AUTO_CHUNK until the memory estimate below.
  chunk_size = spec.first_chunk_size(len(members), requested_chunk)
  if requested_chunk != spec.AUTO_CHUNK:
    check_workdirs(chunk_size)
  lock = workdir_lib.RunLock(workdir)
  lock.check_free()
  if data is None:
    data = input_pipeline.load(base)
  configuration.check_against_data(base, data)
  steps_per_epoch = input_pipeline.steps_per_epoch(
      data.train.num_examples, base.batch_size)
  model, optimizer, steps, init = grid.build(
      base, data.num_classes, steps_per_epoch, options['own_batches'],
      data=grid.devices_per_member(base, jax.device_count(), chunk_size))
  num_devices = steps.mesh.shape[grid.GRID_AXIS]
  if requested_chunk == spec.AUTO_CHUNK:
    member_bytes = grid.estimate_member_bytes(model, optimizer,
                                              base.batch_size)
    chunk_size = grid.auto_chunk(len(members), member_bytes,
                                 grid.free_memory_bytes(),
                                 reserved_bytes=data.train.images.nbytes,
                                 num_devices=num_devices)
    logging.info('Auto chunk: %d of %d members at once (~%.1f MiB each)',
                 chunk_size, len(members), member_bytes / 2**20)
  sweep_dir, member_dirs = check_workdirs(chunk_size)
  identity = input_pipeline.fingerprint(data)
  sweep_dir.check_data(identity, f' ({data.source})')
  groups = spec.chunks_of(list(zip(members, member_dirs)), chunk_size)
  for ci, group in enumerate(groups):
    loop.check_history(base, [d for _, d in group],
                       _chunk_dir(workdir, ci), data)

  with lock, faults.StopRequests() as stop, profiling.step_trace(
      os.path.join(workdir, 'profile'), profile_steps) as trace:
    sweep_dir.prepare(identity)
    for d in member_dirs:
      d.prepare()
    diverged = {}
    for ci, group in enumerate(groups):
      chunk_steps = steps.for_members([m for m, _ in group])
      logging.info('Chunk %d/%d: %d members (%s) at once on %d x %d '
                   'device(s) (grid x data)%s.', ci + 1, len(groups),
                   len(group), ', '.join(chunk_steps.member_names),
                   num_devices, steps.mesh.shape[grid.DATA_AXIS],
                   f', padded to {len(chunk_steps.padded_members)}'
                   if len(chunk_steps.padded_members) > len(group) else '')
      store = _chunk_store(workdir, ci, base.keep_checkpoints)
      # Closed on every exit: an error must not leave a save thread behind.
      try:
        result = loop.train_epochs(
            base, chunk_steps,
            grid.init_grid(init, chunk_steps.padded_members), store=store,
            member_dirs=[d for _, d in group], data=data, stop=stop,
            progress=progress, trace=trace,
            after_epoch=(None if after_epoch is None else
                         lambda epoch, ci=ci: after_epoch(ci, epoch)),
            name=f'chunk {ci + 1}/{len(groups)}')
      finally:
        store.close()
      diverged.update({name: d for name, d in zip(chunk_steps.member_names,
                                                 result.loop.diverged)
                       if d is not None})
      summary = write_summary(workdir, config, members, member_dirs,
                              diverged)
  return summary


def write_summary(path: str, config, members: list, member_dirs: list,
                  diverged: Optional[dict] = None) -> list:
  """summary.json and summary.md; diverged: {member name: watch record}."""
  diverged = diverged or {}
  summary = [sweep_summary.summarize_member(m.name, m.values, d.read_metrics(),
                                            diverged.get(m.name))
             for m, d in zip(members, member_dirs)]
  if jax.process_index() == 0:
    keys = [k for k in spec.GRID_KEYS if k in members[0].values]
    workdir_lib.atomic_write(
        os.path.join(path, 'summary.json'),
        json.dumps({'members': summary}, indent=2, sort_keys=True))
    workdir_lib.atomic_write(
        os.path.join(path, 'summary.md'),
        sweep_summary.summary_markdown(spec.train_config(config).to_dict(),
                                       keys, summary))
  return summary


def restore_chunk(workdir: str, chunk_index: int, *, num_classes: int,
                  steps_per_epoch: int):
  """(members, stacked TrainState) of a chunk's newest readable checkpoint.

  Reads the sweep config from `workdir`/config.json; `num_classes` and
  `steps_per_epoch` (of the dataset trained on) rebuild the state's shape.
  The state comes back on one device.
  """
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  members = spec.chunks_of(spec.grid_members(config),
                           config.sweep.chunk)[chunk_index]
  _, _, steps, init = grid.build(
      spec.train_config(config), num_classes, steps_per_epoch,
      config.sweep.own_batches, devices=jax.devices()[:1])
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  template = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device),
      jax.eval_shape(lambda: grid.init_grid(init, members)))
  store = _chunk_store(workdir, chunk_index, config.keep_checkpoints)
  try:
    restored = store.restore_latest(template, lambda step, meta: None)
  finally:
    store.close()
  if restored is None:
    raise ValueError(f'{store.directory} holds no checkpoint.')
  return members, restored[1]
