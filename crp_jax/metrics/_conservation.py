"""Conservation: how well the input relevance sums to the initial relevance."""

from __future__ import annotations

from typing import Any

import numpy as np

from crp_jax.errors import InputError
from crp_jax.metrics._validation import as_real_array, check_finite


def conservation(relevance: Any, initial_total: float, *, atol: float = 1e-9) -> dict:
    """How well the input relevance sums to the initial relevance.

    With ``S = sum of all entries of relevance`` (any shape, e.g. ``[H, W, 3]``) and
    ``R0 = initial_total`` (1 for an LRP-alpha1beta0 class target, 0 for a CRP contrast,
    +-1 for a localization target)::

        error          = S - R0                                   (signed)
        scale          = |R0|          if |R0| >  atol
                         sum |R|       if |R0| <= atol            (a contrast: R0 is 0)
        relative_error = |error| / scale                          (0.0 if scale == 0)

    For a contrast the initial total is zero, so the error is measured against the total
    amount of relevance, ``sum |R|``: the share of it that does not cancel out. ``atol``
    absorbs the rounding of a contrast vector whose entries sum to 0 only mathematically.
    If ``scale`` is 0 (zero initial total and all-zero relevance) the relevance is exactly
    conserved and ``relative_error`` is 0.0.

    Returns:
      dict with ``"total"`` (S), ``"initial"`` (R0), ``"error"``, ``"relative_error"`` and
      ``"scale"``, all floats.
    """
    r = as_real_array(relevance, "relevance")
    if r.size == 0:
        raise InputError(f"relevance is empty (shape {r.shape})")
    check_finite(r, "relevance")
    r0 = as_real_array(initial_total, "initial_total")
    if r0.shape != ():
        raise InputError(f"initial_total must be a scalar, got shape {r0.shape}")
    check_finite(r0, "initial_total")
    r0 = float(r0)
    total = float(r.sum())
    error = total - r0
    scale = abs(r0) if abs(r0) > atol else float(np.abs(r).sum())
    rel = abs(error) / scale if scale > 0.0 else 0.0
    return {"total": total, "initial": r0, "error": error, "relative_error": rel, "scale": scale}
