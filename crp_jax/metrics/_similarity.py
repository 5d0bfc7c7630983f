"""How alike two heatmaps are: Pearson (class discriminativeness), Spearman, SSIM."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crp_jax.errors import InputError
from crp_jax.metrics._validation import as_mask, positive_int, same_shape


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-D float arrays, robust to tiny scales. A constant array
    has no correlation: ``1.0`` if the two are identical, ``0.0`` otherwise, never NaN."""
    if np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return 1.0 if np.array_equal(x, y) else 0.0
    x = x / np.max(np.abs(x))  # positive rescaling leaves r unchanged, avoids underflow
    y = y / np.max(np.abs(y))
    xc = x - x.mean()
    yc = y - y.mean()
    # elementwise sums, not np.dot: BLAS threads make a dot of 16k values 20x slower on a busy CPU
    denom = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    if denom == 0.0:  # only reachable through rounding on near-constant inputs
        return 0.0
    return float(np.clip((xc * yc).sum() / denom, -1.0, 1.0))


def class_discriminativeness(heatmap_a: Any, heatmap_b: Any, mask: Any = None) -> float:
    """Pearson correlation between two heatmaps of the same box (lower = more discriminative).

    With ``a``, ``b`` the two heatmaps flattened (restricted to ``mask`` if given, e.g.
    ``box_mask(box, shape)``)::

        r = sum_i (a_i - mean a)(b_i - mean b)
            / sqrt(sum_i (a_i - mean a)^2 * sum_i (b_i - mean b)^2)      in [-1, 1]

    Heatmaps of two target classes that are nearly identical (LRP-alpha1beta0 by the CRP
    paper's observation) give ``r`` near 1; a class-discriminative method gives lower values.

    Zero variance: if either heatmap is constant over the selected pixels (including a
    one-pixel mask), ``r`` is undefined. This returns ``1.0`` if the two selections are
    exactly identical (the heatmaps cannot be told apart) and ``0.0`` otherwise (no linear
    relation can be measured). Never NaN.

    Raises:
      InputError: shapes differ, the mask has the wrong shape or selects no pixel.
    """
    a, b = same_shape(heatmap_a, heatmap_b)
    if mask is not None:
        m = as_mask(mask, a.shape, "mask")
        if not m.any():
            raise InputError("mask selects no pixel")
        a, b = a[m], b[m]
    else:
        a, b = a.ravel(), b.ravel()
    return _correlation(a, b)


def _rankdata(v: np.ndarray) -> np.ndarray:
    """Ranks ``1..n`` of a 1-D array, ties given their average rank."""
    order = np.argsort(v, kind="stable")
    s = v[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(v.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(heatmap_a: Any, heatmap_b: Any) -> float:
    """Spearman rank correlation of two heatmaps over all pixels.

    Pearson correlation of the ranks (ties get their average rank)::

        rho = pearson(rank(a), rank(b))      in [-1, 1]

    Take ``np.abs`` of both first for the rank correlation of magnitudes (Adebayo et al.
    2018 report both). A constant heatmap has no ranking: the result is ``1.0`` if the two
    heatmaps are identical, ``0.0`` otherwise. Never NaN.

    Raises:
      InputError: invalid heatmaps or different shapes.
    """
    a, b = same_shape(heatmap_a, heatmap_b)
    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0.0 or np.ptp(b) == 0.0:  # no ranking; decided on the values, not the ranks
        return 1.0 if np.array_equal(a, b) else 0.0
    return _correlation(_rankdata(a), _rankdata(b))


SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03


def ssim(heatmap_a: Any, heatmap_b: Any, *, window: int = SSIM_WINDOW, normalize: bool = True) -> float:
    """Structural similarity (Wang et al. 2004) of two heatmaps, uniform ``window`` x
    ``window`` windows (7, as scikit-image's default).

    With ``normalize`` (default) each heatmap is first mapped to ``[0, 1]`` by
    ``(R / max |R| + 1) / 2`` (zero relevance at 0.5; an all-zero map is all 0.5), so maps
    of any scale compare, data range ``L = 1``, and a sign flip reads as anti-correlation
    (SSIM near -1) rather than being muddled by SSIM's luminance term near a zero mean.
    For every window position fully inside the map (no padding), with the window's means
    ``mu``, population variances ``var`` and covariance ``cov``::

        SSIM_w = (2 mu_a mu_b + C1) (2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1) (var_a + var_b + C2))
        C1 = (0.01 L)^2,  C2 = (0.03 L)^2

    and the result is the mean of ``SSIM_w`` over the windows: 1 for identical maps, near 0
    for unrelated ones, negative for anti-correlated ones. ``normalize=False`` keeps the
    values and uses ``L = max - min`` over both maps (1 if that is 0).

    Raises:
      InputError: invalid or differently shaped heatmaps, a map smaller than the window, or
        ``window`` not a positive int.
    """
    a, b = same_shape(heatmap_a, heatmap_b)
    window = positive_int(window, "window")
    if min(a.shape) < window:
        raise InputError(f"heatmaps of shape {a.shape} are smaller than the {window}x{window} SSIM window")
    if normalize:
        a = (a / np.abs(a).max() + 1) / 2 if np.any(a) else np.full_like(a, 0.5)
        b = (b / np.abs(b).max() + 1) / 2 if np.any(b) else np.full_like(b, 0.5)
        L = 1.0
    else:
        L = float(max(a.max(), b.max()) - min(a.min(), b.min())) or 1.0
    c1, c2 = (SSIM_K1 * L) ** 2, (SSIM_K2 * L) ** 2

    def mean(v):
        return np.lib.stride_tricks.sliding_window_view(v, (window, window)).mean(axis=(-2, -1))

    mu_a, mu_b = mean(a), mean(b)
    var_a = mean(a * a) - mu_a**2
    var_b = mean(b * b) - mu_b**2
    cov = mean(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(np.mean(s))
