"""Where positive relevance lies against a box or part: (energy) pointing game, part enrichment."""

from __future__ import annotations

from typing import Any

import numpy as np

from crp_jax.errors import InputError
from crp_jax.metrics._boxes import box_mask
from crp_jax.metrics._validation import as_box, as_heatmap, as_mask, as_real_array, positive_int


def energy_pointing_game(heatmap: Any, box: Any) -> float:
    """Share of the positive relevance that falls inside ``box``.

    With ``R+ = max(R, 0)`` and ``B`` the pixels inside the box (:func:`box_mask`)::

        EPG = sum_{p in B} R+_p / sum_p R+_p        in [0, 1]

    Negative relevance is ignored. If the heatmap has no positive relevance at all the ratio
    is undefined; this returns ``0.0`` then (nothing points into the box), never NaN.
    """
    r = as_heatmap(heatmap)
    m = box_mask(box, r.shape)
    pos = np.maximum(r, 0.0)
    total = pos.sum()
    if total <= 0.0:
        return 0.0
    return float(min(1.0, pos[m].sum() / total))


def part_enrichment(heatmap: Any, part_mask: Any, object_mask: Any) -> float:
    """How much more positive relevance the discriminative part gets than its area's share.

    Let ``U = object_mask | part_mask`` be the reference region (the object; the union covers
    the case of the *smaller* glyph of a pair, whose discriminative part -- the pixels the
    larger glyph has and it lacks -- lies outside its own ink), ``P = part_mask`` (a subset of
    ``U`` by construction) and ``R+ = max(R, 0)``. Then::

        relevance_share = sum_{p in P} R+_p / sum_{p in U} R+_p
        area_share      = |P| / |U|
        enrichment      = relevance_share / area_share

    Only relevance inside ``U`` counts: the metric asks *where on the object* the evidence
    lies (relevance off the object is what :func:`energy_pointing_game` measures). So

    * ``1.0``: no better than relevance spread uniformly over the object;
    * ``1 / area_share`` (the maximum): all positive relevance on the object is in the part;
    * ``0.0``: none of it is in the part. A heatmap with no positive relevance inside ``U``
      also returns ``0.0`` (nothing points at the part), never NaN.

    If the part covers all of ``U``, ``area_share == 1`` and the result is 1.0 or 0.0.

    Raises:
      InputError: a mask has the wrong shape, or ``part_mask`` is empty (then there is no
        discriminative part to point at and the ratio has no meaning).
    """
    r = as_heatmap(heatmap)
    part = as_mask(part_mask, r.shape, "part_mask")
    obj = as_mask(object_mask, r.shape, "object_mask")
    n_part = int(part.sum())
    if n_part == 0:
        raise InputError("part_mask is empty: there is no discriminative part to score")
    region = obj | part
    n_region = int(region.sum())
    pos = np.maximum(r, 0.0)
    total = pos[region].sum()
    if total <= 0.0:
        return 0.0
    relevance_share = pos[part].sum() / total
    area_share = n_part / n_region
    return float(relevance_share / area_share)


# The pointing game's usual tolerance: 15 px at a 224 px input (Zhang et al. 2016, as in
# TorchRay); pointing_tolerance scales it to other input sizes.
POINTING_TOLERANCE_PX = 15.0
POINTING_REFERENCE_SIZE = 224


def pointing_tolerance(size: int) -> float:
    """The pointing game's 15 px tolerance scaled to an input of side ``size`` px:
    ``15 * size / 224`` (8.57 px at 128 px, 20.1 px at 300 px)."""
    size = positive_int(size, "size")
    return POINTING_TOLERANCE_PX * size / POINTING_REFERENCE_SIZE


def pointing_game(heatmap: Any, box: Any, tolerance: float | None = None) -> bool:
    """Does the heatmap's maximum point into ``box``, up to ``tolerance`` pixels?

    The maximum is taken over the signed heatmap (channel-summed). Pixel ``(r, c)`` stands at
    its centre ``(c + 0.5, r + 0.5)``; its distance to the closed box rectangle
    ``[x0, x1] x [y0, y1]`` is ``sqrt(dx^2 + dy^2)`` with ``dx = max(x0 - px, 0, px - x1)``
    (``dy`` alike). A hit: some maximal pixel (ties all count) lies at distance
    ``<= tolerance``. A constant heatmap points nowhere and is a miss.

    Args:
      heatmap: ``[H, W]`` or ``[H, W, 3]``.
      box: ``(x0, y0, x1, y1)`` pixels.
      tolerance: pixels; ``None`` means :func:`pointing_tolerance` ``(max(H, W))``, the usual
        15 px at 224 px scaled to the input; 0 asks for the maximum inside the rectangle.

    Raises:
      InputError: an invalid heatmap or box, or a negative / non-finite tolerance.
    """
    r = as_heatmap(heatmap)
    b = as_box(box)
    if tolerance is None:
        tol = pointing_tolerance(max(r.shape))
    else:
        t = as_real_array(tolerance, "tolerance")
        if t.shape != () or not np.isfinite(t) or t < 0:
            raise InputError(f"tolerance must be a finite number >= 0 (pixels), got {tolerance!r}")
        tol = float(t)
    if np.ptp(r) == 0.0:
        return False
    rows, cols = np.nonzero(r == r.max())
    px, py = cols + 0.5, rows + 0.5
    dx = np.maximum(np.maximum(b[0] - px, 0.0), px - b[2])
    dy = np.maximum(np.maximum(b[1] - py, 0.0), py - b[3])
    return bool(np.any(np.hypot(dx, dy) <= tol))
