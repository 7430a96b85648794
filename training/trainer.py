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
from training import train_lib
from training import workdir as workdir_lib


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
  run_dir = workdir_lib.Workdir(workdir, config)
  run_dir.check()

  def plan(data):
    steps_per_epoch = input_pipeline.steps_per_epoch(
        data.train.num_examples, config.batch_size)
    optimizer = optimizers.create_optimizer(config, steps_per_epoch)
    model = models.create_model(config.model, data.num_classes,
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
                config, steps_per_epoch, values), data.spec.image_shape),
        out_shardings=steps.state_sharding)(
            jax.random.key(config.seed), optimizers.injected_values(config))
    return run_dir, [loop.Chunk(steps, init, [run_dir],
                                run_dir.checkpoint_dir)]

  [(_, result)] = loop.run(config, run_dir.path, plan, data=data,
                           num_devices=jax.device_count(), progress=progress,
                           profile_steps=profile_steps)
  rows = result.rows[0]
  return rows[-1] if rows else {}
