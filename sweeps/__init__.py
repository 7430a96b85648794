"""Hyperparameter sweeps: a grid of members trained at once, behind sweep.py.

  spec.py   the grid a sweep config names: members, their configs, chunks
  grid.py   the vmapped steps over the members (GridSteps) and their state
  run.py    run_sweep: each chunk through training/loop.py, the summary
  configs/  sweep presets

May import: training, models, reporting (the summary), JAX and friends.
"""
