"""Bad input is refused at construction with a message naming it (issue 2, point 4)."""

import jax.numpy as jnp
import optax
import pytest

import padax

S = padax.scale_by_partial_adaptive
# (description, constructor, fragments the message must contain)
BAD_INPUTS = [
    ('p above 1/2', lambda: padax.padam(0.1, p=0.75),
     ['p=0.75', 'out of range', '0 <= p <= 0.5']),
    ('p negative', lambda: S(p=-0.1), ['p=-0.1', '0 <= p <= 0.5']),
    ('p NaN', lambda: padax.padam(0.1, p=float('nan')), ['p=nan', '0 <= p <= 0.5']),
    ('p concrete array', lambda: padax.padam(0.1, p=jnp.asarray(0.6)),
     ['p=', '0.6', '0 <= p <= 0.5']),
    ('b1 = 1', lambda: padax.padam(0.1, b1=1.0), ['b1=1.0', '0 <= b1 < 1']),
    ('b1 negative', lambda: S(b1=-0.5), ['b1=-0.5', '0 <= b1 < 1']),
    ('b2 = 1', lambda: padax.padamw(0.1, b2=1.0), ['b2=1.0', '0 <= b2 < 1']),
    ('b2 > 1', lambda: S(b2=1.5), ['b2=1.5', '0 <= b2 < 1']),
    ('eps negative', lambda: padax.padam(0.1, eps=-1e-8), ['eps=-1e-08', 'eps >= 0']),
    ('negative lr', lambda: padax.padam(-0.1), ['learning_rate=-0.1', 'learning_rate >= 0']),
    ('negative lr padamw', lambda: padax.padamw(-1.0), ['padamw', 'learning_rate=-1.0']),
    ('negative weight decay', lambda: padax.padam(0.1, weight_decay=-5e-4),
     ['weight_decay=-0.0005', 'weight_decay >= 0']),
    ('negative weight decay padamw', lambda: padax.padamw(0.1, weight_decay=-1.0),
     ['weight_decay=-1.0']),
    ('unknown formulation', lambda: padax.padam(0.1, formulation='pytorch'),
     ["formulation='pytorch'", "'authors', 'paper', 'report'"]),
    ('amsgrad not bool', lambda: S(amsgrad='yes'), ["amsgrad='yes'", 'bool']),
    ('p not a number', lambda: S(p='0.1'), ["p='0.1'", 'not a number']),
    ('lr not a number', lambda: padax.padam('fast'),
     ["learning_rate='fast'", 'not a number']),
]


@pytest.mark.parametrize('constructor, fragments',
                         [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_message(constructor, fragments):
  with pytest.raises(ValueError) as info:
    constructor()
  message = str(info.value)
  for fragment in fragments:
    assert fragment in message, (fragment, message)


def test_boundaries_are_accepted():
  for p in (0.0, 0.5):
    padax.padam(0.0, p=p, b1=0.0, b2=0.0, eps=0.0, weight_decay=0.0)


def test_schedules_pass_unchecked_until_used():
  # Documented: a schedule's values cannot be checked at construction.
  padax.padam(optax.constant_schedule(-1.0), p=optax.constant_schedule(0.9))
