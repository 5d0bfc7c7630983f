"""Checks of user-supplied arrays shared across the package: the detector and the engine
(:func:`check_image_batch`), the metrics and viz (:func:`as_heatmap`). This module imports
neither of them, and no JAX at import time (viz and metrics run on numpy alone). Each check
raises :class:`crp_jax.errors.InputError` naming the bad value, before anything reaches XLA
as a shape error or a metric as a silent NaN."""

from __future__ import annotations

from typing import Any

import numpy as np

from crp_jax.errors import InputError

#: What :func:`as_heatmap` does with NaN/Inf: raise (metrics) or set them to 0 (display).
NONFINITE_POLICIES = ("raise", "zero")


def check_image_batch(x, image_size: int | None = None, channels: int | None = 3) -> None:
    """Static checks of a model input: ``[B, H, W, C]`` floating, B >= 1; ``C == channels``
    unless ``channels`` is None, and ``H == W == image_size`` when that is given."""
    import jax.numpy as jnp  # here, not at the top: viz and metrics import this module without JAX

    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise InputError(f"images must be an array [B, H, W, 3], got {type(x).__name__}")
    if len(shape) != 4:
        raise InputError(f"images must have rank 4 [B, H, W, 3] (NHWC), got shape {tuple(shape)}")
    if shape[0] == 0:
        raise InputError(f"empty batch: images have shape {tuple(shape)}")
    if channels is not None and shape[-1] != channels:
        raise InputError(f"images must have {channels} channels last (NHWC), got shape {tuple(shape)}")
    if image_size is not None and (shape[1] != image_size or shape[2] != image_size):
        raise InputError(
            f"images must be {image_size}x{image_size} for this model, got shape {tuple(shape)}; "
            "use crp_jax.preprocess to resize"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise InputError(f"images must be floating point (preprocessed), got dtype {dtype}; use crp_jax.preprocess")


def as_real_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array; a non-numeric, object or complex dtype raises."""
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise InputError(f"{name} could not be converted to an array: {e}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
        raise InputError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} must be real, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def count_nonfinite(arr: np.ndarray) -> int:
    """How many entries of ``arr`` are NaN or +-Inf."""
    return int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise naming how many entries of ``arr`` are NaN or +-Inf, if any are."""
    n_bad = count_nonfinite(arr)
    if n_bad:
        raise InputError(f"{name} has {n_bad} non-finite (NaN/Inf) value(s)")


def as_heatmap(x: Any, name: str = "heatmap", *, nonfinite: str = "raise", dtype=np.float64) -> np.ndarray:
    """A signed relevance map as a numpy ``[H, W]`` array of ``dtype``: the one conversion
    that :mod:`crp_jax.metrics` and :mod:`crp_jax.viz` share.

    ``[H, W]`` is taken as it is; relevance ``[H, W, C]`` with ``C`` in ``(1, 3)`` (relevance
    at the RGB input, per target, as ``explain`` returns it) is summed over its channels, in
    ``dtype``. Any other rank, an empty map or a non-numeric dtype raises InputError.

    Non-finite values (NaN, +-Inf, and values that overflow ``dtype``), counted after the
    channel sum:

    * ``nonfinite="raise"`` (the default, and what every metric uses): InputError naming how
      many there are. A metric of a map with NaN in it is meaningless, and zeroing them would
      turn it into a plausible-looking low score. ``explain`` returns finite relevance or
      raises NumericsError itself, so a NaN here is the caller's own arithmetic.
    * ``nonfinite="zero"``: they become 0, i.e. no relevance. Only for display (viz asks for
      it explicitly): a picture with a few blank pixels still shows where the rest lies.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise InputError(f"nonfinite {nonfinite!r} unknown; use one of {NONFINITE_POLICIES}")
    arr = as_real_array(x, name).astype(dtype, copy=False)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3):
        arr = arr.sum(axis=-1)
    elif arr.ndim != 2:
        raise InputError(f"{name} must have shape [H, W] or [H, W, 3], got shape {tuple(np.shape(x))}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {tuple(np.shape(x))})")
    if nonfinite == "zero":
        return np.where(np.isfinite(arr), arr, 0).astype(dtype, copy=False)
    check_finite(arr, name)
    return arr
