"""`train_and_evaluate(config, workdir)`: one run, as train.py trains it.

The epoch loop is training/loop.py, shared with sweeps. Faults: see
docs/reliability.md.
"""

import jax
import ml_collections

import models
from training import configuration
from training import input_pipeline
from training import loop
from training import optimizers
from training import rundir
from training import train_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, data: input_pipeline.CifarData = None,
                       progress: bool = True,
                       profile_steps: int = 0) -> dict:
  """Trains per `config`, resuming from `workdir`'s latest checkpoint.

  Returns the last epoch's metrics row. Bad input (config, data, a workdir
  in use or holding another run or inconsistent files) is refused
  (ValueError) before any file is written. Raises faults.RunStopped after a
  stop request (a checkpoint saved at the next step), faults.Diverged on a
  non-finite loss (nothing saved after it), faults.WriteError when a file
  cannot be written (the previous intact). A killed run resumes bit-identical.
  `profile_steps` > 0 traces that many steps to WORKDIR/profile.
  """
  configuration.validate(config, num_devices=jax.device_count())
  run_dir = rundir.Workdir(workdir, config, writer=jax.process_index() == 0)
  run_dir.check()
  data, shape = loop.load_data(config, run_dir.path, data=data,
                               num_devices=jax.device_count(),
                               profile_steps=profile_steps)
  optimizer = optimizers.create_optimizer(config, shape.steps_per_epoch)
  model = models.create_model(config.model, shape.num_classes,
                              dtype=configuration.compute_dtype(config.dtype))
  steps = train_lib.MeshSteps(train_lib.make_mesh(), model, optimizer,
                              nonfinite=config.nonfinite_policy,
                              dataset=data.spec)
  # The seed's key and the initial hyperparameters are arguments, not
  # constants of the program: a run with other values loads the compiled
  # init from the persistent cache.
  init = lambda: jax.jit(
      lambda rng, values: train_lib.create_train_state(
          rng, model, optimizers.create_optimizer(
              config, shape.steps_per_epoch, values), shape.image_shape),
      out_shardings=steps.state_sharding)(
          jax.random.key(config.seed), optimizers.injected_values(config))
  chunk = loop.Chunk(steps, init, [run_dir], run_dir.checkpoint_dir)
  [(_, result)] = loop.run(config, shape, data, run_dir, [chunk],
                           progress=progress, profile_steps=profile_steps)
  rows = result.rows[0]
  return rows[-1] if rows else {}
