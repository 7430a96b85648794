"""Train presets (ml_collections configs for `train.py --config`).

Each starts from default.py (training/configuration.py's keys) and changes a
few. May import training/configuration.py only: train.py loads them before JAX
starts.
"""
