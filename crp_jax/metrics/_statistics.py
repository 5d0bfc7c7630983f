"""Confidence intervals of a metric over boxes (percentile bootstrap)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from crp_jax.errors import InputError
from crp_jax.metrics._validation import as_real_array, check_finite, positive_int


def _stat_rows(stat: Callable, samples: np.ndarray) -> np.ndarray:
    """Apply ``stat`` to each row; use its ``axis=`` keyword when it has one."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(stat(row)) for row in samples])


def bootstrap_ci(
    values: Any,
    stat: Callable = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of ``stat(values)``.

    NaN entries are dropped first (a metric that is undefined for some boxes is reported
    over the others); ``values`` of any shape are flattened. With the remaining ``n`` values
    ``v``: draw ``n_boot`` resamples of size ``n`` with replacement (``numpy`` generator seeded
    with ``seed``), compute ``stat`` on each, and return::

        (stat(v), quantile_{alpha/2}(stats), quantile_{1 - alpha/2}(stats))

    ``stat`` is called as ``stat(samples, axis=1)`` when it accepts ``axis`` (numpy
    reductions do), else once per resample; it must return a scalar per resample.

    Raises:
      InputError: no non-NaN value, +-Inf values, ``n_boot < 1`` or ``alpha`` not in (0, 1).
    """
    v = as_real_array(values, "values").reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        raise InputError("values has no non-NaN entry to bootstrap")
    check_finite(v, "values")
    n_boot = positive_int(n_boot, "n_boot")
    if not isinstance(alpha, (int, float, np.floating)) or not 0.0 < float(alpha) < 1.0:
        raise InputError(f"alpha must lie in (0, 1), got {alpha!r}")
    if not callable(stat):
        raise InputError(f"stat must be callable, got {stat!r}")
    estimate = np.asarray(stat(v), dtype=np.float64)
    if estimate.shape != ():
        raise InputError(f"stat must return a scalar, got shape {estimate.shape}")
    gen = np.random.default_rng(seed)
    n = v.size
    chunk = max(1, min(n_boot, 2_000_000 // n))
    stats = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        stats.append(_stat_rows(stat, v[gen.integers(0, n, size=(m, n))]))
    boot = np.concatenate(stats)
    if not np.all(np.isfinite(boot)) or not np.isfinite(estimate):
        raise InputError("stat returned a non-finite value on the data or a resample")
    lo, hi = np.quantile(boot, [float(alpha) / 2.0, 1.0 - float(alpha) / 2.0])
    return float(estimate), float(lo), float(hi)
