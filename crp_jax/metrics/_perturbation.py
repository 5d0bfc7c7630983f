"""Perturbation curves: baselines, the one remove-and-rescore loop, AOPC, region perturbation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from crp_jax.errors import InputError
from crp_jax.metrics._validation import as_real_array, check_finite, image_and_heatmap, make_rng, positive_int

# Orders accepted by region_perturbation.
ORDERS = ("most_relevant_first", "least_relevant_first", "random")
# Named baselines accepted by region_perturbation / remove_positive_evidence.
BASELINES = ("uniform", "mean", "blur")


def box_blur(image: np.ndarray, size: int) -> np.ndarray:
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


def baseline_image(
    image: np.ndarray,
    baseline: Any,
    low: Any,
    high: Any,
    rng: np.random.Generator,
    blur_size: int,
) -> np.ndarray:
    """The ``[H, W, C]`` values that replace removed pixels (see :func:`region_perturbation`)."""
    h, w, c = image.shape
    if callable(baseline):
        return _image_shaped(baseline(image), "baseline(image)", image.shape)
    if isinstance(baseline, str):
        if baseline == "uniform":
            lo = image.reshape(-1, c).min(axis=0) if low is None else as_real_array(low, "low")
            hi = image.reshape(-1, c).max(axis=0) if high is None else as_real_array(high, "high")
            for v, nm in ((lo, "low"), (hi, "high")):
                if v.shape not in ((), (c,)):
                    raise InputError(f"{nm} must be a scalar or have {c} entries, got shape {v.shape}")
                check_finite(v, nm)
            if np.any(hi < lo):
                raise InputError(f"high {hi.tolist()} is below low {lo.tolist()}")
            u = rng.random((h, w, c))
            return lo + u * (hi - lo)
        if baseline == "mean":
            return np.broadcast_to(image.reshape(-1, c).mean(axis=0), image.shape)
        if baseline == "blur":
            return box_blur(image, blur_size)
        raise InputError(
            f"unknown baseline {baseline!r}; expected one of {BASELINES}, a number, an array or a callable"
        )
    return _image_shaped(baseline, "baseline", image.shape)


def _image_shaped(values: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Finite ``values`` broadcast to the image's ``shape``."""
    arr = as_real_array(values, name)
    try:
        arr = np.broadcast_to(arr, shape)
    except ValueError:
        raise InputError(f"{name} has shape {arr.shape}, not broadcastable to the image's {shape}") from None
    check_finite(arr, name)
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
    c = as_real_array(curve, "curve")
    if c.ndim != 1 or c.size == 0:
        raise InputError(f"curve must be a non-empty 1-D array, got shape {c.shape}")
    check_finite(c, "curve")
    return float(np.mean(c[0] - c))


def perturbation_inputs(fn: Any, fn_name: str, image: Any, heatmap: Any) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """Checked ``(image [H, W, C] float64, heatmap [H, W], dtype of the perturbed images)``."""
    if not callable(fn):
        raise InputError(f"{fn_name} must be callable, got {fn!r}")
    return image_and_heatmap(image, heatmap)


def rank(relevance: np.ndarray, order: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``relevance`` (1-D) in removal ``order`` (one of :data:`ORDERS`); ties keep
    their index order, ``"random"`` draws a permutation from ``rng``."""
    if order == "most_relevant_first":
        return np.argsort(-relevance, kind="stable")
    if order == "least_relevant_first":
        return np.argsort(relevance, kind="stable")
    return rng.permutation(relevance.size)


def rescore(
    fn: Callable[[np.ndarray], Any],
    fn_name: str,
    image: np.ndarray,
    fill: np.ndarray,
    removals: list[np.ndarray],
    out_dtype: np.dtype,
    batch_size: int,
    per_image: tuple[int, ...] = (),
) -> np.ndarray:
    """The one perturb-and-score loop: ``fn`` of the image and of each cumulative removal.

    ``x^(0) = image``; ``x^(k)`` is ``x^(k-1)`` with the pixels ``removals[k - 1]`` (flat
    indices into ``H * W``) set to ``fill`` in every channel. The ``L + 1`` images go to
    ``fn`` as ``[N, H, W, C]`` in ``out_dtype``, ``batch_size`` at a time, built as they are
    needed (memory: one batch), and ``fn`` must return ``N`` finite results of shape
    ``per_image`` (``()`` for scores, ``(4,)`` for boxes; scores may come as ``[N, 1]``).

    Returns:
      ``[L + 1, *per_image]`` float64.
    """
    h, w, c = image.shape
    x = image.reshape(h * w, c).copy()
    fill = fill.reshape(h * w, c)
    size = int(np.prod(per_image, dtype=np.int64))
    expected = "[" + ", ".join(["N", *map(str, per_image)]) + "]"
    results: list[np.ndarray] = []

    def flush(batch: list[np.ndarray]) -> None:
        n = len(batch)
        got = np.asarray(fn(np.stack(batch).astype(out_dtype, copy=False)))
        if got.size != n * size or (got.ndim > 0 and got.shape[0] != n):
            raise InputError(
                f"{fn_name} returned shape {got.shape} for a batch of {n} images; expected {expected} with N = {n}"
            )
        got = as_real_array(got, f"{fn_name} output").reshape(n, *per_image)
        check_finite(got, f"{fn_name} output")
        results.append(got)

    batch = [image.copy()]
    for idx in removals:
        x[idx] = fill[idx]
        batch.append(x.reshape(h, w, c).copy())
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    return np.concatenate(results)


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
    img, r, out_dtype = perturbation_inputs(score_fn, "score_fn", image, heatmap)
    h, w, _ = img.shape
    if isinstance(patch, (bool, np.bool_)) or not isinstance(patch, (int, np.integer)):
        raise InputError(f"patch must be an int, got {patch!r}")
    if not 1 <= patch <= min(h, w):
        raise InputError(f"patch={patch} must lie in [1, min(H, W)] = [1, {min(h, w)}]")
    patch = int(patch)
    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; expected one of {ORDERS}")
    batch_size = positive_int(batch_size, "batch_size")
    gen = make_rng(rng)

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
    ranking = rank(region_rel.ravel(), order, gen)[:steps]
    fill = baseline_image(img, baseline, low, high, gen, 2 * (patch // 2) + 1)
    # Flat pixel indices [H, W]: a region's pixels are a slice of it.
    pixels = np.arange(h * w).reshape(h, w)
    removals = []
    for k in ranking:
        i, j = divmod(int(k), n_cols)
        removals.append(pixels[i * patch : (i + 1) * patch, j * patch : (j + 1) * patch].ravel())
    curve = rescore(score_fn, "score_fn", img, fill, removals, out_dtype, batch_size)
    return {
        "curve": curve,
        "aopc": aopc(curve),
        "order": ranking.astype(np.int64),
        "region_relevance": region_rel,
        "steps": steps,
        "patch": patch,
    }
