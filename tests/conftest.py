"""Shared pytest setup: make the checkout importable without installing it, so that plain
``pytest`` works as well as ``python -m pytest`` (which puts the working directory first)."""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
