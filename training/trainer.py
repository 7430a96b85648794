"""`train_and_evaluate(config, workdir)`: one run, as train.py trains it.

Faults (see docs/reliability.md): a run killed at any moment resumes from its
newest readable checkpoint and ends bit-identical to an uninterrupted run; a
stop request (SIGTERM, SIGINT) saves a checkpoint at the next step boundary,
mid-epoch if need be, and raises faults.RunStopped; a non-finite loss or
gradient follows `config.nonfinite_policy`; bad input is refused, with one
message naming the key, the value and what is allowed, before any file is
written. The epoch loop itself is training/loop.py, shared with sweeps.
"""

import os

import jax
import ml_collections

import models
from training import configuration
from training import faults
from training import input_pipeline
from training import loop
from training import optimizers
from training import profiling
from training import train_lib
from training import workdir as workdir_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, data: input_pipeline.CifarData = None,
                       progress: bool = True,
                       profile_steps: int = 0) -> dict:
  """Trains per `config`, resuming from `workdir`'s latest checkpoint.

  Everything that can be refused (config values, optimizer hyperparameters,
  data, batch sizes the data cannot fill, a conflicting stored config or
  data, a workdir not writable, in use, holding unreadable or inconsistent
  files) is checked before any file is written. Returns the last epoch's metrics row.
  Raises faults.RunStopped after a stop request (a checkpoint saved),
  faults.Diverged on a non-finite loss (nothing saved after it),
  faults.WriteError when a file cannot be written (the previous intact).
  `profile_steps` > 0 writes a profiler trace of that many steps, after 5
  warm-up steps, to WORKDIR/profile.
  """
  configuration.validate(config, num_devices=jax.device_count())
  run_dir = workdir_lib.Workdir(workdir, config)
  run_dir.check()
  workdir = run_dir.path
  lock = workdir_lib.RunLock(workdir)
  lock.check_free()
  if data is None:
    data = input_pipeline.load(config)
  configuration.check_against_data(config, data,
                                   num_devices=jax.device_count())
  identity = input_pipeline.fingerprint(data)
  run_dir.check_data(identity, f' ({data.source})')
  loop.check_history(config, [run_dir], run_dir.checkpoint_dir, data)
  steps_per_epoch = input_pipeline.steps_per_epoch(
      data.train.num_examples, config.batch_size)
  optimizer = optimizers.create_optimizer(config, steps_per_epoch)
  model = models.create_model(config.model, data.num_classes,
                              dtype=configuration.DTYPES[config.dtype])
  steps = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer,
                              nonfinite=config.nonfinite_policy)

  with lock, faults.StopRequests() as stop, profiling.step_trace(
      os.path.join(workdir, 'profile'), profile_steps) as trace:
    run_dir.prepare(identity)
    store = run_dir.checkpoint_store(config.keep_checkpoints)
    # Closed on every exit: an error must not leave a save thread behind.
    try:
      state = jax.jit(
          lambda rng: train_lib.create_train_state(rng, model, optimizer),
          out_shardings=steps.state_sharding)(jax.random.key(config.seed))
      result = loop.train_epochs(config, steps, state, store=store,
                                 member_dirs=[run_dir], data=data, stop=stop,
                                 progress=progress, trace=trace)
    finally:
      store.close()
  rows = result.rows[0]
  return rows[-1] if rows else {}
