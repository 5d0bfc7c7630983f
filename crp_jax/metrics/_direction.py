"""Localization direction: remove the evidence for a coordinate, check the box moves back."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crp_jax.errors import InputError
from crp_jax.metrics._perturbation import baseline_image
from crp_jax.metrics._validation import as_heatmap, as_real_array, check_finite, check_sign, image_and_heatmap, make_rng


def localization_direction(center_before: Any, center_after: Any, sign: int) -> bool:
    """Did removing the evidence for ``sign * coordinate`` move the coordinate the other way?

    The coordinate is the one the localization target asked about (cx or cy of the predicted
    box; w or h read the same way). The evidence for ``+cx`` (``sign=+1``) pushes the box
    right; removing it (see :func:`remove_positive_evidence`) must move the predicted centre
    left::

        sign = +1:  center_after < center_before
        sign = -1:  center_after > center_before

    Strict: a coordinate that does not move counts as a failure.

    Raises:
      InputError: a non-scalar or non-finite centre, or ``sign`` not in {+1, -1}.
    """
    b = as_real_array(center_before, "center_before")
    a = as_real_array(center_after, "center_after")
    if b.shape != () or a.shape != ():
        raise InputError(
            f"centres must be scalars, got shapes {b.shape} and {a.shape}; use localization_direction_share for arrays"
        )
    check_finite(b, "center_before")
    check_finite(a, "center_after")
    s = check_sign(sign)
    if s.shape != ():
        raise InputError(f"sign must be a scalar, got shape {s.shape}")
    return bool(s * (a - b) < 0.0)


def localization_direction_share(centers_before: Any, centers_after: Any, signs: Any) -> float:
    """Share of boxes for which :func:`localization_direction` holds.

    ``centers_before`` and ``centers_after`` are ``[N]`` coordinates (one per box / target);
    ``signs`` is ``+1``/``-1``, a scalar for all boxes or ``[N]``::

        share = (1 / N) * #{i : signs_i * (after_i - before_i) < 0}      in [0, 1]

    Raises:
      InputError: empty or mismatched arrays, non-finite values, signs not in {+1, -1}.
    """
    b = np.atleast_1d(as_real_array(centers_before, "centers_before"))
    a = np.atleast_1d(as_real_array(centers_after, "centers_after"))
    if b.ndim != 1 or a.ndim != 1:
        raise InputError(f"centres must be 1-D, got shapes {b.shape} and {a.shape}")
    if b.shape != a.shape:
        raise InputError(f"centers_before has shape {b.shape} but centers_after has {a.shape}")
    if b.size == 0:
        raise InputError("no centres given (empty arrays)")
    check_finite(b, "centers_before")
    check_finite(a, "centers_after")
    s = check_sign(signs, "signs")
    if s.shape not in ((), b.shape):
        raise InputError(f"signs has shape {s.shape}; expected a scalar or {b.shape}")
    return float(np.mean(s * (a - b) < 0.0))


def top_positive_mask(heatmap: Any, fraction: float = 0.1) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the ``k = ceil(fraction * H * W)`` most relevant pixels,
    restricted to pixels with strictly positive relevance (so fewer than ``k`` pixels are
    selected when fewer are positive; none when nothing is). Ties keep raster order.

    Raises:
      InputError: ``fraction`` not in (0, 1], or an invalid heatmap.
    """
    r = as_heatmap(heatmap)
    if (
        isinstance(fraction, (bool, np.bool_))
        or not isinstance(fraction, (int, float, np.number))
        or not 0.0 < float(fraction) <= 1.0
    ):
        raise InputError(f"fraction must lie in (0, 1], got {fraction!r}")
    k = int(math.ceil(float(fraction) * r.size))
    flat = r.ravel()
    idx = np.argsort(-flat, kind="stable")[:k]
    idx = idx[flat[idx] > 0.0]
    mask = np.zeros(r.size, dtype=bool)
    mask[idx] = True
    return mask.reshape(r.shape)


def remove_positive_evidence(
    image: Any,
    heatmap: Any,
    fraction: float = 0.1,
    baseline: Any = "mean",
    rng: Any = None,
    *,
    low: Any = None,
    high: Any = None,
) -> np.ndarray:
    """Replace the most positively relevant pixels of ``image`` with a baseline.

    The pixels of :func:`top_positive_mask` ``(heatmap, fraction)`` -- the ``ceil(fraction *
    H * W)`` most relevant pixels among those with positive relevance -- take the baseline's
    values in all channels; every other pixel is unchanged. Run the detector on the result to
    test :func:`localization_direction`.

    Args:
      image: ``[H, W, C]`` float model input.
      heatmap: ``[H, W]`` or ``[H, W, 3]`` relevance of the localization target.
      fraction: in (0, 1].
      baseline: ``"mean"`` (default: the image's per-channel mean), ``"uniform"`` (noise in
        ``[low, high]``, as in :func:`region_perturbation`), ``"blur"`` (9-pixel box blur),
        a number, an array broadcastable to ``[H, W, C]`` or a callable.
      rng: seed / generator for ``"uniform"``.
      low, high: bounds of the uniform noise.

    Returns:
      The perturbed image, ``[H, W, C]``, in the input's float dtype (float32 otherwise).
    """
    img, r, out_dtype = image_and_heatmap(image, heatmap)
    mask = top_positive_mask(r, fraction)
    fill = baseline_image(img, baseline, low, high, make_rng(rng), 9)
    out = np.where(mask[..., None], fill, img)
    return out.astype(out_dtype)
