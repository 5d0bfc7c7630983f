"""Explanation quality metrics (docs/design.md §5), in plain numpy.

Every function accepts numpy or JAX arrays (converted with ``np.asarray``) and computes in
float64. Conventions shared by all of them:

Heatmaps
    A *heatmap* is a signed relevance map of shape ``[H, W]``. A relevance array of shape
    ``[H, W, C]`` with ``C`` in ``(1, 3)`` (relevance at the RGB input, as returned per target
    by ``cj.explain``) is accepted too and reduced to ``[H, W]`` by summing the channels.
    Heatmaps must be finite.

Boxes
    Boxes are ``(x0, y0, x1, y1)`` in pixels (xyxy, floats allowed). Pixel ``(r, c)`` (row,
    column) covers ``[c, c + 1) x [r, r + 1)``; it is *inside* a box iff its centre is:
    ``x0 <= c + 0.5 < x1`` and ``y0 <= r + 0.5 < y1`` (half-open, so two boxes that share an
    edge never share a pixel). See :func:`box_mask`.

Masks
    Masks are boolean ``[H, W]`` arrays (0/1 integer or float arrays are accepted).

Errors
    Invalid arguments (wrong rank or shape, empty arrays, non-finite values, bad patch sizes,
    unknown option names) raise :class:`crp_jax.errors.InputError` naming the bad value. No
    function returns NaN or Inf except where its docstring says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from crp_jax.errors import InputError

__all__ = [
    "box_mask",
    "energy_pointing_game",
    "class_discriminativeness",
    "part_enrichment",
    "region_perturbation",
    "aopc",
    "localization_direction",
    "localization_direction_share",
    "top_positive_mask",
    "remove_positive_evidence",
    "conservation",
    "bootstrap_ci",
    "pointing_game",
    "pointing_tolerance",
    "spearman",
    "ssim",
    "box_coordinate",
    "box_deletion",
]

# Orders accepted by region_perturbation.
ORDERS = ("most_relevant_first", "least_relevant_first", "random")
# Named baselines accepted by region_perturbation / remove_positive_evidence.
BASELINES = ("uniform", "mean", "blur")


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


def _as_float(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise InputError(f"{name} could not be converted to an array: {e}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
        raise InputError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} must be real, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InputError(f"{name} has {n_bad} non-finite (NaN/Inf) value(s)")


def _as_heatmap(x: Any, name: str = "heatmap") -> np.ndarray:
    """Return a finite float64 ``[H, W]`` heatmap; ``[H, W, C]`` (C in 1, 3) is channel-summed."""
    arr = _as_float(x, name)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3):
        arr = arr.sum(axis=-1)
    elif arr.ndim != 2:
        raise InputError(f"{name} must have shape [H, W] or [H, W, 3], got shape {tuple(np.shape(x))}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {tuple(np.shape(x))})")
    _check_finite(arr, name)
    return arr


def _as_mask(x: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.shape != tuple(shape):
        raise InputError(f"{name} has shape {arr.shape}, expected {tuple(shape)} (the heatmap's)")
    if arr.dtype == np.bool_:
        return arr
    vals = _as_float(arr, name)
    if not np.all((vals == 0) | (vals == 1)):
        raise InputError(f"{name} must be boolean or contain only 0 and 1")
    return vals.astype(bool)


def _as_box(box: Any) -> np.ndarray:
    b = _as_float(box, "box")
    if b.shape != (4,):
        raise InputError(f"box must be (x0, y0, x1, y1), got shape {b.shape}")
    _check_finite(b, "box")
    x0, y0, x1, y1 = b
    if x1 < x0 or y1 < y0:
        raise InputError(f"box {tuple(b.tolist())} has x1 < x0 or y1 < y0 (expected xyxy)")
    return b


def _as_image(x: Any, name: str = "image") -> np.ndarray:
    arr = _as_float(x, name)
    if arr.ndim != 3 or arr.shape[-1] < 1:
        raise InputError(f"{name} must have shape [H, W, C], got shape {tuple(np.shape(x))}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {tuple(np.shape(x))})")
    _check_finite(arr, name)
    return arr


def _positive_int(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _make_rng(rng: Any) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        return np.random.default_rng(int(rng))
    raise InputError(f"rng must be None, an int seed or a numpy Generator, got {rng!r}")


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------


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
    b = _as_box(box)
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


# --------------------------------------------------------------------------------------------
# localisation metrics
# --------------------------------------------------------------------------------------------


def energy_pointing_game(heatmap: Any, box: Any) -> float:
    """Share of the positive relevance that falls inside ``box``.

    With ``R+ = max(R, 0)`` and ``B`` the pixels inside the box (:func:`box_mask`)::

        EPG = sum_{p in B} R+_p / sum_p R+_p        in [0, 1]

    Negative relevance is ignored. If the heatmap has no positive relevance at all the ratio
    is undefined; this returns ``0.0`` then (nothing points into the box), never NaN.
    """
    r = _as_heatmap(heatmap)
    m = box_mask(box, r.shape)
    pos = np.maximum(r, 0.0)
    total = pos.sum()
    if total <= 0.0:
        return 0.0
    return float(min(1.0, pos[m].sum() / total))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two non-constant 1-D float arrays, robust to tiny scales."""
    x = x / np.max(np.abs(x))  # positive rescaling leaves r unchanged, avoids underflow
    y = y / np.max(np.abs(y))
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(float(np.dot(xc, xc)) * float(np.dot(yc, yc)))
    if denom == 0.0:  # only reachable through rounding on near-constant inputs
        return 0.0
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


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
    a = _as_heatmap(heatmap_a, "heatmap_a")
    b = _as_heatmap(heatmap_b, "heatmap_b")
    if a.shape != b.shape:
        raise InputError(f"heatmap_a has shape {a.shape} but heatmap_b has shape {b.shape}")
    if mask is not None:
        m = _as_mask(mask, a.shape, "mask")
        if not m.any():
            raise InputError("mask selects no pixel")
        a, b = a[m], b[m]
    else:
        a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0.0 or np.ptp(b) == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return _pearson(a, b)


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
    r = _as_heatmap(heatmap)
    part = _as_mask(part_mask, r.shape, "part_mask")
    obj = _as_mask(object_mask, r.shape, "object_mask")
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


# --------------------------------------------------------------------------------------------
# region perturbation (Samek et al. 2017)
# --------------------------------------------------------------------------------------------


def _box_blur(image: np.ndarray, size: int) -> np.ndarray:
    """Separable box blur with an odd window ``size`` and edge replication, per channel."""
    k = size // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (k + 1, k)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis)
        n = out.shape[axis]
        hi = np.take(c, np.arange(size, size + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = (hi - lo) / size
    return out


def _baseline_image(
    image: np.ndarray,
    baseline: Any,
    low: Any,
    high: Any,
    rng: np.random.Generator,
    blur_size: int,
) -> np.ndarray:
    """The ``[H, W, C]`` values that replace removed pixels (see region_perturbation)."""
    h, w, c = image.shape
    if callable(baseline):
        out = _as_float(baseline(image), "baseline(image)")
        try:
            out = np.broadcast_to(out, image.shape)
        except ValueError:
            raise InputError(
                f"baseline(image) returned shape {out.shape}, not broadcastable to {image.shape}"
            ) from None
        _check_finite(out, "baseline(image)")
        return out
    if isinstance(baseline, str):
        if baseline == "uniform":
            lo = image.reshape(-1, c).min(axis=0) if low is None else _as_float(low, "low")
            hi = image.reshape(-1, c).max(axis=0) if high is None else _as_float(high, "high")
            for v, nm in ((lo, "low"), (hi, "high")):
                if v.shape not in ((), (c,)):
                    raise InputError(f"{nm} must be a scalar or have {c} entries, got shape {v.shape}")
                _check_finite(v, nm)
            if np.any(hi < lo):
                raise InputError(f"high {hi.tolist()} is below low {lo.tolist()}")
            u = rng.random((h, w, c))
            return lo + u * (hi - lo)
        if baseline == "mean":
            return np.broadcast_to(image.reshape(-1, c).mean(axis=0), image.shape)
        if baseline == "blur":
            return _box_blur(image, blur_size)
        raise InputError(
            f"unknown baseline {baseline!r}; expected one of {BASELINES}, a number, an array or a callable"
        )
    arr = _as_float(baseline, "baseline")
    try:
        arr = np.broadcast_to(arr, image.shape)
    except ValueError:
        raise InputError(f"baseline has shape {arr.shape}, not broadcastable to the image's {image.shape}") from None
    _check_finite(arr, "baseline")
    return arr


def aopc(curve: Any) -> float:
    """Area over the perturbation curve (Samek et al. 2017, eq. 12).

    ``curve[k] = f(x^(k))`` is the score after ``k`` perturbation steps, ``k = 0..L``
    (``curve[0]`` is the unperturbed score)::

        AOPC = 1 / (L + 1) * sum_{k=0}^{L} (f(x^(0)) - f(x^(k)))

    Larger means the score fell faster, i.e. the ranking found the evidence sooner.

    Raises:
      InputError: the curve is not 1-D, is empty or has non-finite values.
    """
    c = _as_float(curve, "curve")
    if c.ndim != 1 or c.size == 0:
        raise InputError(f"curve must be a non-empty 1-D array, got shape {c.shape}")
    _check_finite(c, "curve")
    return float(np.mean(c[0] - c))


def _perturbation_inputs(fn: Any, fn_name: str, image: Any, heatmap: Any) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """Checked ``(image [H, W, C] float64, heatmap [H, W], dtype of the perturbed images)``."""
    if not callable(fn):
        raise InputError(f"{fn_name} must be callable, got {fn!r}")
    raw_dtype = np.asarray(image).dtype
    out_dtype = raw_dtype if np.issubdtype(raw_dtype, np.floating) else np.dtype(np.float32)
    img = _as_image(image)
    r = _as_heatmap(heatmap)
    if r.shape != img.shape[:2]:
        raise InputError(f"heatmap has shape {r.shape} but the image is {img.shape[0]}x{img.shape[1]}")
    return img, r, out_dtype


def region_perturbation(
    score_fn: Callable[[np.ndarray], Any],
    image: Any,
    heatmap: Any,
    patch: int = 8,
    steps: int | None = None,
    order: str = "most_relevant_first",
    baseline: Any = "uniform",
    rng: Any = None,
    *,
    low: Any = None,
    high: Any = None,
    batch_size: int = 32,
) -> dict:
    """Region perturbation curve and AOPC (Samek et al. 2017, "Evaluating the visualization
    of what a deep neural network has learned").

    The image is cut into a grid of non-overlapping ``patch x patch`` regions (regions on the
    bottom and right edges are smaller when ``patch`` does not divide ``H`` or ``W``). Each
    region's score is its summed relevance. Regions are ranked

    * ``"most_relevant_first"`` (MoRF): by summed relevance, descending;
    * ``"least_relevant_first"`` (LeRF): ascending;
    * ``"random"``: a random permutation drawn from ``rng`` (the reference curve);

    ties keep raster order (row-major over the grid). Perturbation is cumulative:
    ``x^(0) = image`` and ``x^(k)`` is ``x^(k-1)`` with the ``k``-th ranked region replaced by
    the baseline, for ``k = 1..L``. The ``L + 1`` images are passed, ``batch_size`` at a time,
    as a ``[N, H, W, C]`` array to ``score_fn``, which must return ``N`` finite scores (e.g. the
    target's logit margin, computed by the caller with the model).

    Baselines (the values a removed region takes):

    * ``"uniform"`` (default, as Samek et al.): i.i.d. uniform noise per pixel and channel in
      ``[low_c, high_c]``; pass the preprocessed pixel bounds, e.g. ``*meta.pixel_bounds``;
      without them the image's own per-channel min and max are used. The noise image is drawn
      once from ``rng`` (after the random permutation, if any), so a seed fixes the curve.
    * ``"mean"``: the image's per-channel mean.
    * ``"blur"``: the image box-blurred with a ``(2 * (patch // 2) + 1)``-pixel window.
    * a number or an array broadcastable to ``[H, W, C]`` (e.g. a per-channel ``[C]`` value);
    * a callable ``image [H, W, C] -> [H, W, C]``.

    Args:
      score_fn: ``[N, H, W, C] -> [N]`` scores; receives the image's float dtype (float32
        for non-float inputs).
      image: ``[H, W, C]`` float model input (preprocessed).
      heatmap: ``[H, W]`` or ``[H, W, 3]`` relevance for the same image.
      patch: region side in pixels, ``1 <= patch <= min(H, W)``.
      steps: ``L``, how many regions to remove, ``1 <= L <= number of regions``; ``None``
        means ``min(100, number of regions)`` (Samek et al. use 100 steps).
      order: one of ``"most_relevant_first"``, ``"least_relevant_first"``, ``"random"``.
      baseline: see above.
      rng: ``None`` (seed 0), an int seed or a ``numpy.random.Generator``.
      low, high: per-channel bounds (scalar or ``[C]``) of the uniform noise.
      batch_size: images per ``score_fn`` call.

    Returns:
      dict with ``"curve"`` (``[L + 1]`` float64 scores ``f(x^(0)) .. f(x^(L))``), ``"aopc"``
      (:func:`aopc` of the curve), ``"order"`` (``[L]`` indices of the removed regions into the
      row-major region grid), ``"region_relevance"`` (``[n_rows, n_cols]`` summed relevance per
      region), ``"steps"`` (``L``) and ``"patch"``.
    """
    img, r, out_dtype = _perturbation_inputs(score_fn, "score_fn", image, heatmap)
    h, w, _ = img.shape
    if isinstance(patch, (bool, np.bool_)) or not isinstance(patch, (int, np.integer)):
        raise InputError(f"patch must be an int, got {patch!r}")
    if not 1 <= patch <= min(h, w):
        raise InputError(f"patch={patch} must lie in [1, min(H, W)] = [1, {min(h, w)}]")
    patch = int(patch)
    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; expected one of {ORDERS}")
    batch_size = _positive_int(batch_size, "batch_size")
    gen = _make_rng(rng)

    n_rows, n_cols = -(-h // patch), -(-w // patch)
    n_regions = n_rows * n_cols
    if steps is None:
        steps = min(100, n_regions)
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)):
        raise InputError(f"steps must be an int or None, got {steps!r}")
    if not 1 <= steps <= n_regions:
        raise InputError(f"steps={steps} must lie in [1, {n_regions}] (the number of {patch}x{patch} regions)")
    steps = int(steps)

    # Summed relevance per region (pad with zeros so the edge regions sum what they hold).
    padded = np.zeros((n_rows * patch, n_cols * patch))
    padded[:h, :w] = r
    region_rel = padded.reshape(n_rows, patch, n_cols, patch).sum(axis=(1, 3))
    flat = region_rel.ravel()
    if order == "most_relevant_first":
        ranking = np.argsort(-flat, kind="stable")
    elif order == "least_relevant_first":
        ranking = np.argsort(flat, kind="stable")
    else:
        ranking = gen.permutation(n_regions)
    ranking = ranking[:steps]
    fill = _baseline_image(img, baseline, low, high, gen, 2 * (patch // 2) + 1)

    scores: list[np.ndarray] = []

    def flush(batch: list[np.ndarray]) -> None:
        arr = np.stack(batch).astype(out_dtype, copy=False)
        s = np.asarray(score_fn(arr))
        if s.size != len(batch) or (s.ndim > 1 and s.shape[0] != len(batch)):
            raise InputError(
                f"score_fn returned shape {s.shape} for a batch of {len(batch)} images; expected [{len(batch)}]"
            )
        s = _as_float(s, "score_fn output").reshape(-1)
        _check_finite(s, "score_fn output")
        scores.append(s)

    x = img.copy()
    batch: list[np.ndarray] = [x.copy()]
    for k in range(steps):
        i, j = divmod(int(ranking[k]), n_cols)
        sl = (slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch))
        x[sl] = fill[sl]
        batch.append(x.copy())
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    curve = np.concatenate(scores)
    return {
        "curve": curve,
        "aopc": aopc(curve),
        "order": ranking.astype(np.int64),
        "region_relevance": region_rel,
        "steps": steps,
        "patch": patch,
    }


# --------------------------------------------------------------------------------------------
# localization direction
# --------------------------------------------------------------------------------------------


def _check_sign(sign: Any, name: str = "sign") -> np.ndarray:
    s = _as_float(sign, name)
    if not np.all((s == 1.0) | (s == -1.0)):
        raise InputError(f"{name} must be +1 or -1, got {np.asarray(sign).tolist()!r}")
    return s


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
    b = _as_float(center_before, "center_before")
    a = _as_float(center_after, "center_after")
    if b.shape != () or a.shape != ():
        raise InputError(
            f"centres must be scalars, got shapes {b.shape} and {a.shape}; use localization_direction_share for arrays"
        )
    _check_finite(b, "center_before")
    _check_finite(a, "center_after")
    s = _check_sign(sign)
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
    b = np.atleast_1d(_as_float(centers_before, "centers_before"))
    a = np.atleast_1d(_as_float(centers_after, "centers_after"))
    if b.ndim != 1 or a.ndim != 1:
        raise InputError(f"centres must be 1-D, got shapes {b.shape} and {a.shape}")
    if b.shape != a.shape:
        raise InputError(f"centers_before has shape {b.shape} but centers_after has {a.shape}")
    if b.size == 0:
        raise InputError("no centres given (empty arrays)")
    _check_finite(b, "centers_before")
    _check_finite(a, "centers_after")
    s = _check_sign(signs, "signs")
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
    r = _as_heatmap(heatmap)
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
    raw_dtype = np.asarray(image).dtype
    out_dtype = raw_dtype if np.issubdtype(raw_dtype, np.floating) else np.dtype(np.float32)
    img = _as_image(image)
    r = _as_heatmap(heatmap)
    if r.shape != img.shape[:2]:
        raise InputError(f"heatmap has shape {r.shape} but the image is {img.shape[0]}x{img.shape[1]}")
    mask = top_positive_mask(r, fraction)
    fill = _baseline_image(img, baseline, low, high, _make_rng(rng), 9)
    out = np.where(mask[..., None], fill, img)
    return out.astype(out_dtype)


# --------------------------------------------------------------------------------------------
# conservation
# --------------------------------------------------------------------------------------------


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
    r = _as_float(relevance, "relevance")
    if r.size == 0:
        raise InputError(f"relevance is empty (shape {r.shape})")
    _check_finite(r, "relevance")
    r0 = _as_float(initial_total, "initial_total")
    if r0.shape != ():
        raise InputError(f"initial_total must be a scalar, got shape {r0.shape}")
    _check_finite(r0, "initial_total")
    r0 = float(r0)
    total = float(r.sum())
    error = total - r0
    scale = abs(r0) if abs(r0) > atol else float(np.abs(r).sum())
    rel = abs(error) / scale if scale > 0.0 else 0.0
    return {"total": total, "initial": r0, "error": error, "relative_error": rel, "scale": scale}


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


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
    v = _as_float(values, "values").reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        raise InputError("values has no non-NaN entry to bootstrap")
    _check_finite(v, "values")
    n_boot = _positive_int(n_boot, "n_boot")
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


# --------------------------------------------------------------------------------------------
# pointing game (Zhang et al. 2016) with a tolerance
# --------------------------------------------------------------------------------------------

# The pointing game's usual tolerance: 15 px at a 224 px input (Zhang et al. 2016, as in
# TorchRay); pointing_tolerance scales it to other input sizes.
POINTING_TOLERANCE_PX = 15.0
POINTING_REFERENCE_SIZE = 224


def pointing_tolerance(size: int) -> float:
    """The pointing game's 15 px tolerance scaled to an input of side ``size`` px:
    ``15 * size / 224`` (8.57 px at 128 px, 20.1 px at 300 px)."""
    size = _positive_int(size, "size")
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
    r = _as_heatmap(heatmap)
    b = _as_box(box)
    if tolerance is None:
        tol = pointing_tolerance(max(r.shape))
    else:
        t = _as_float(tolerance, "tolerance")
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


# --------------------------------------------------------------------------------------------
# similarity of two heatmaps (model-randomization test, crp_jax.sanity)
# --------------------------------------------------------------------------------------------


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
    a = _as_heatmap(heatmap_a, "heatmap_a")
    b = _as_heatmap(heatmap_b, "heatmap_b")
    if a.shape != b.shape:
        raise InputError(f"heatmap_a has shape {a.shape} but heatmap_b has shape {b.shape}")
    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0.0 or np.ptp(b) == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    # elementwise sums, not np.dot: BLAS threads make a dot of 16k values 20x slower on a busy CPU
    ra, rb = _rankdata(a), _rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float(np.clip((ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum()), -1.0, 1.0))


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
    a = _as_heatmap(heatmap_a, "heatmap_a")
    b = _as_heatmap(heatmap_b, "heatmap_b")
    if a.shape != b.shape:
        raise InputError(f"heatmap_a has shape {a.shape} but heatmap_b has shape {b.shape}")
    window = _positive_int(window, "window")
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


# --------------------------------------------------------------------------------------------
# box-aware deletion (DExT-style faithfulness of localization explanations)
# --------------------------------------------------------------------------------------------

BOX_COORDS = ("cx", "cy", "w", "h")
DELETION_ORDERS = ("most_relevant_first", "random")


def box_coordinate(boxes: Any, coord: str | int) -> np.ndarray:
    """``coord`` (cx, cy, w, h or 0..3) of xyxy boxes ``[..., 4]`` in pixels: ``[...]``."""
    b = _as_float(boxes, "boxes")
    if b.shape[-1:] != (4,):
        raise InputError(f"boxes must have shape [..., 4] (xyxy), got {b.shape}")
    k = _coord_index(coord)
    if k == 0:
        return (b[..., 0] + b[..., 2]) / 2
    if k == 1:
        return (b[..., 1] + b[..., 3]) / 2
    return b[..., k] - b[..., k - 2]


def _coord_index(coord) -> int:
    if isinstance(coord, str) and coord in BOX_COORDS:
        return BOX_COORDS.index(coord)
    if isinstance(coord, (int, np.integer)) and not isinstance(coord, bool) and 0 <= coord < 4:
        return int(coord)
    raise InputError(f"coord {coord!r} unknown; use one of {BOX_COORDS} or 0..3")


def box_deletion(
    box_fn: Callable[[np.ndarray], Any],
    image: Any,
    heatmap: Any,
    coord: str | int,
    sign: int,
    steps: int = 10,
    max_fraction: float = 0.2,
    order: str = "most_relevant_first",
    baseline: Any = "mean",
    rng: Any = None,
    *,
    low: Any = None,
    high: Any = None,
    batch_size: int = 32,
) -> dict:
    """Delete the most relevant pixels for "(coord, sign)" in steps; follow the box.

    The box-aware deletion test of localization explanations (as DExT does for detectors):
    the heatmap answers "what pushes the box's ``coord`` in direction ``sign``" (a
    ``LocTarget(coord, sign)``). Pixels are ranked by the channel-summed heatmap, descending
    (``"most_relevant_first"``; ties keep raster order) or in a random permutation
    (``"random"``, the reference). Step ``k = 1..L`` has the first ``n_k = round(k *
    max_fraction * H * W / L)`` ranked pixels replaced by the baseline (in every channel;
    cumulative). ``box_fn`` maps the ``L + 1`` images ``[N, H, W, C]`` to the box at the
    *same anchor*, xyxy pixels ``[N, 4]``. With ``c_k`` the decoded coordinate
    (:func:`box_coordinate`) and ``b_k`` the box after step ``k``::

        shift_k = -sign * (c_k - c_0)        pixels; positive = the box moved against the
                                             direction whose evidence was removed (correct)
        iou_k   = IoU(b_k, b_0)
        aopc_shift = mean_k shift_k          = aopc(sign * c)
        aopc_iou   = mean_k (1 - iou_k)      = aopc(iou)

    Args:
      box_fn: ``[N, H, W, C] -> [N, 4]`` boxes (the caller decodes the model's offsets at
        the target's anchor).
      image: ``[H, W, C]`` model input.
      heatmap: ``[H, W]`` or ``[H, W, 3]`` relevance of ``LocTarget(coord, sign)``.
      coord: "cx", "cy", "w", "h" (or 0..3).
      sign: +1 or -1, the target's direction.
      steps: ``L >= 1``.
      max_fraction: share of pixels deleted at the last step, in (0, 1].
      order: "most_relevant_first" or "random".
      baseline, rng, low, high: as :func:`region_perturbation` ("mean" by default, as
        :func:`remove_positive_evidence`).
      batch_size: images per ``box_fn`` call.

    Returns:
      dict with ``"shift"`` ``[L + 1]``, ``"iou"`` ``[L + 1]``, ``"boxes"`` ``[L + 1, 4]``,
      ``"fractions"`` ``[L + 1]`` (share of pixels deleted), ``"aopc_shift"``, ``"aopc_iou"``.
    """
    from crp_jax.ssd.boxes import box_iou

    img, r, out_dtype = _perturbation_inputs(box_fn, "box_fn", image, heatmap)
    h, w, _ = img.shape
    _coord_index(coord)
    s = _check_sign(sign)
    if s.shape != ():
        raise InputError(f"sign must be a scalar +1 or -1, got {sign!r}")
    steps = _positive_int(steps, "steps")
    if isinstance(max_fraction, (bool, np.bool_)) or not isinstance(max_fraction, (int, float, np.number)):
        raise InputError(f"max_fraction must be a number in (0, 1], got {max_fraction!r}")
    if not 0.0 < float(max_fraction) <= 1.0:
        raise InputError(f"max_fraction must lie in (0, 1], got {max_fraction!r}")
    if order not in DELETION_ORDERS:
        raise InputError(f"unknown order {order!r}; expected one of {DELETION_ORDERS}")
    batch_size = _positive_int(batch_size, "batch_size")
    gen = _make_rng(rng)
    n_pix = h * w
    ranking = np.argsort(-r.ravel(), kind="stable") if order == "most_relevant_first" else gen.permutation(n_pix)
    counts = np.rint(np.arange(steps + 1) * float(max_fraction) * n_pix / steps).astype(np.int64)
    fill = _baseline_image(img, baseline, low, high, gen, 9).reshape(n_pix, -1)
    flat = img.reshape(n_pix, -1)
    images = []
    for n in counts:
        cur = flat.copy()
        cur[ranking[:n]] = fill[ranking[:n]]
        images.append(cur.reshape(img.shape))
    boxes = []
    for start in range(0, len(images), batch_size):
        batch = np.stack(images[start : start + batch_size]).astype(out_dtype, copy=False)
        got = _as_float(box_fn(batch), "box_fn output")
        if got.shape != (len(batch), 4):
            raise InputError(f"box_fn returned shape {got.shape} for a batch of {len(batch)} images; expected [N, 4]")
        _check_finite(got, "box_fn output")
        boxes.append(got)
    boxes = np.concatenate(boxes)
    c = box_coordinate(boxes, coord)
    shift = -float(s) * (c - c[0])
    iou = np.nan_to_num(np.asarray(box_iou(boxes[:1], boxes), np.float64)[0])  # empty boxes: no overlap
    return {
        "shift": shift,
        "iou": iou,
        "boxes": boxes,
        "fractions": counts / n_pix,
        "aopc_shift": aopc(float(s) * c),
        "aopc_iou": aopc(iou),
    }
