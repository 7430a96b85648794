"""Training a CIFAR model with padax: everything behind train.py.

  configuration.py   the config's keys (base_config), the names, ranges and
                     optimizer defaults it allows, and its one validator
                     (JAX-free: train.py refuses bad input before JAX)
  input_pipeline.py  the datasets (DatasetSpec) and loading them (CIFAR, your
                     own .npz) on the host; augment.py: the device-side
                     augmentation and normalisation the step runs
  cifar10_subset.py  the folder of genuine images some tests read, from the
                     official release (python -m training.cifar10_subset)
  optimizers.py      the optimizers a config names, built from it
  train_lib.py       the pure train and eval steps, jitted over a mesh
                     (MeshSteps: also the loop's view of what it trains)
  loop.py            the one epoch loop, for runs and sweeps alike
  trainer.py         train_and_evaluate: one run, as train.py trains it
  records.py         the metrics schema (JAX-free, read by reporting/)
  run_shape.py       RunShape: steps per epoch and the other sizes a run's
                     config and data fix, derived once (JAX-free)
  rundir.py          a run directory: its file names, readers and writers,
                     the consistency checks and the checkpoint policy
                     (JAX-free, also read by reporting/); run_lock.py its lock
  checkpoints.py, faults.py
                     Orbax checkpoints with the loop's state; stop signals,
                     the non-finite policy and exit statuses
  paths.py           --workdir / --out checked before anything is written
                     (JAX-free, also used by report.py)
  cli.py, host_devices.py, allocator.py, profiling.py
                     process start-up and the command lines' shared flags

May import: padax, models, numpy, JAX, Flax, Optax, Orbax, ml_collections;
never configs/ presets, sweeps/ or reporting/.
"""
