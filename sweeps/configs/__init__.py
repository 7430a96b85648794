"""Sweep presets: train configs plus a `sweep` grid (see sweeps/spec.py)."""
