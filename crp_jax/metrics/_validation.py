"""Argument checks shared by every metric: arrays, heatmaps, masks, boxes, images, seeds."""

from __future__ import annotations

from typing import Any

import numpy as np

from crp_jax.checks import as_heatmap, as_real_array, check_finite
from crp_jax.errors import InputError


def as_mask(x: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """A boolean mask of the heatmap's ``shape``; 0/1 numbers are accepted."""
    arr = np.asarray(x)
    if arr.shape != tuple(shape):
        raise InputError(f"{name} has shape {arr.shape}, expected {tuple(shape)} (the heatmap's)")
    if arr.dtype == np.bool_:
        return arr
    vals = as_real_array(arr, name)
    if not np.all((vals == 0) | (vals == 1)):
        raise InputError(f"{name} must be boolean or contain only 0 and 1")
    return vals.astype(bool)


def as_box(box: Any) -> np.ndarray:
    """A finite xyxy box ``[4]`` with ``x1 >= x0`` and ``y1 >= y0``."""
    b = as_real_array(box, "box")
    if b.shape != (4,):
        raise InputError(f"box must be (x0, y0, x1, y1), got shape {b.shape}")
    check_finite(b, "box")
    x0, y0, x1, y1 = b
    if x1 < x0 or y1 < y0:
        raise InputError(f"box {tuple(b.tolist())} has x1 < x0 or y1 < y0 (expected xyxy)")
    return b


def as_image(x: Any, name: str = "image") -> np.ndarray:
    """A finite, non-empty float64 image ``[H, W, C]``."""
    arr = as_real_array(x, name)
    if arr.ndim != 3 or arr.shape[-1] < 1:
        raise InputError(f"{name} must have shape [H, W, C], got shape {tuple(np.shape(x))}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {tuple(np.shape(x))})")
    check_finite(arr, name)
    return arr


def same_shape(heatmap_a: Any, heatmap_b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two heatmaps of one shape, for the metrics that compare them."""
    a = as_heatmap(heatmap_a, "heatmap_a")
    b = as_heatmap(heatmap_b, "heatmap_b")
    if a.shape != b.shape:
        raise InputError(f"heatmap_a has shape {a.shape} but heatmap_b has shape {b.shape}")
    return a, b


def image_and_heatmap(image: Any, heatmap: Any) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """``(image [H, W, C] float64, heatmap [H, W], dtype of the images handed back)``.

    Perturbed images keep the input's float dtype (float32 for non-float inputs)."""
    raw_dtype = np.asarray(image).dtype
    out_dtype = raw_dtype if np.issubdtype(raw_dtype, np.floating) else np.dtype(np.float32)
    img = as_image(image)
    r = as_heatmap(heatmap)
    if r.shape != img.shape[:2]:
        raise InputError(f"heatmap has shape {r.shape} but the image is {img.shape[0]}x{img.shape[1]}")
    return img, r, out_dtype


def positive_int(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def check_sign(sign: Any, name: str = "sign") -> np.ndarray:
    """``sign`` as float64, every entry +1 or -1."""
    s = as_real_array(sign, name)
    if not np.all((s == 1.0) | (s == -1.0)):
        raise InputError(f"{name} must be +1 or -1, got {np.asarray(sign).tolist()!r}")
    return s


def make_rng(rng: Any) -> np.random.Generator:
    """``None`` (seed 0), an int seed or a Generator -> a Generator."""
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        return np.random.default_rng(int(rng))
    raise InputError(f"rng must be None, an int seed or a numpy Generator, got {rng!r}")
