"""Hyperparameter sweeps: a grid of members trained at once (see grid.py)."""
