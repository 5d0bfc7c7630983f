"""Boxes in pixels: which pixels a box covers, and its coordinates by name."""

from __future__ import annotations

from typing import Any

import numpy as np

from crp_jax.errors import InputError, TargetError
from crp_jax.metrics._validation import as_box, as_real_array
from crp_jax.relevance.targets import COORDS, coord_index

#: The coordinate names of ``LocTarget`` (kept under this name for old imports).
BOX_COORDS = COORDS


def box_mask(box: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the pixels inside ``box``.

    Pixel ``(r, c)`` is inside ``box = (x0, y0, x1, y1)`` iff its centre is::

        x0 <= c + 0.5 < x1   and   y0 <= r + 0.5 < y1

    so ``(0, 0, W, H)`` covers the whole image, ``(2, 3, 5, 7)`` covers columns 2..4 and rows
    3..6, and boxes that share an edge share no pixel. Parts of the box outside the image are
    ignored; a box entirely outside (or of zero width or height) gives an empty mask.

    Args:
      box: four finite numbers, xyxy pixels, ``x1 >= x0`` and ``y1 >= y0``.
      shape: ``(H, W)``; a longer shape such as ``(H, W, 3)`` uses its first two entries.
    """
    b = as_box(box)
    shp = tuple(shape)
    if len(shp) < 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shp[:2]):
        raise InputError(f"shape must start with two positive ints (H, W), got {shape!r}")
    h, w = int(shp[0]), int(shp[1])
    x0, y0, x1, y1 = b
    cx = np.arange(w, dtype=np.float64) + 0.5
    cy = np.arange(h, dtype=np.float64) + 0.5
    cols = (cx >= x0) & (cx < x1)
    rows = (cy >= y0) & (cy < y1)
    return rows[:, None] & cols[None, :]


def checked_coord(coord: Any) -> int:
    """Index 0..3 of a coordinate named as ``LocTarget`` names it; InputError otherwise
    (here it is an argument of a metric, not a target)."""
    try:
        return coord_index(coord)
    except TargetError as e:
        raise InputError(str(e)) from None


def box_coordinate(boxes: Any, coord: str | int) -> np.ndarray:
    """``coord`` (cx, cy, w, h or 0..3) of xyxy boxes ``[..., 4]`` in pixels: ``[...]``."""
    b = as_real_array(boxes, "boxes")
    if b.shape[-1:] != (4,):
        raise InputError(f"boxes must have shape [..., 4] (xyxy), got {b.shape}")
    k = checked_coord(coord)
    if k == 0:
        return (b[..., 0] + b[..., 2]) / 2
    if k == 1:
        return (b[..., 1] + b[..., 3]) / 2
    return b[..., k] - b[..., k - 2]
