"""padax: Padam (partially adaptive momentum estimation) for Optax.

`scale_by_partial_adaptive` is the rescaling as a composable
``optax.GradientTransformation``; `padam` and `padamw` chain it with weight
decay and the learning rate, like ``optax.adam`` and ``optax.adamw``.
`check_hyperparameters` checks values against padax's ranges. Imports only
jax, optax and numpy.
"""

from padax._checks import check_hyperparameters
from padax.alias import padam
from padax.alias import padamw
from padax.transform import AUTHORS
from padax.transform import FORMULATIONS
from padax.transform import PAPER
from padax.transform import REPORT
from padax.transform import scale_by_partial_adaptive
from padax.transform import ScaleByPartialAdaptiveState

__version__ = '0.1.0'

__all__ = (
    'AUTHORS',
    'FORMULATIONS',
    'PAPER',
    'REPORT',
    'ScaleByPartialAdaptiveState',
    'check_hyperparameters',
    'padam',
    'padamw',
    'scale_by_partial_adaptive',
)
