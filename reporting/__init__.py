"""Figures and tables from train.py workdirs and sweep dirs (report.py).

  runs.py    load workdirs / sweep members into `Run`s, default labels
  tables.py  the markdown tables (accuracy at epochs; the p x lr grid)
  plots.py   the figures (curves per metric, the 1x3 panel, the grid heatmap)
  sweep_summary.py  a sweep's summary.md / summary.json contents

May import: numpy, matplotlib and training/records.py (the metrics schema
the loop writes); nothing that imports JAX, so reporting runs anywhere
matplotlib and numpy do.
"""
