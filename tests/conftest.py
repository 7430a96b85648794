"""Shared test set-up: run from the repository root so `models`, `training` import."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Location of the genuine CIFAR-10 subset shipped beside the checkout.
SHARED_CIFAR10_SUBSET = os.path.join(
    os.path.dirname(ROOT), 'shared', 'data', 'cifar10-subset')
