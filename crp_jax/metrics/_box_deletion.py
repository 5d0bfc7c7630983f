"""Box-aware deletion (DExT-style): delete the pixels relevant to a coordinate, follow the box."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from crp_jax.errors import InputError
from crp_jax.metrics._boxes import box_coordinate, checked_coord
from crp_jax.metrics._perturbation import aopc, baseline_image, perturbation_inputs, rank, rescore
from crp_jax.metrics._validation import check_sign, make_rng, positive_int
from crp_jax.ssd.boxes import box_iou

DELETION_ORDERS = ("most_relevant_first", "random")


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
    img, r, out_dtype = perturbation_inputs(box_fn, "box_fn", image, heatmap)
    h, w, _ = img.shape
    checked_coord(coord)
    s = check_sign(sign)
    if s.shape != ():
        raise InputError(f"sign must be a scalar +1 or -1, got {sign!r}")
    steps = positive_int(steps, "steps")
    if isinstance(max_fraction, (bool, np.bool_)) or not isinstance(max_fraction, (int, float, np.number)):
        raise InputError(f"max_fraction must be a number in (0, 1], got {max_fraction!r}")
    if not 0.0 < float(max_fraction) <= 1.0:
        raise InputError(f"max_fraction must lie in (0, 1], got {max_fraction!r}")
    if order not in DELETION_ORDERS:
        raise InputError(f"unknown order {order!r}; expected one of {DELETION_ORDERS}")
    batch_size = positive_int(batch_size, "batch_size")
    gen = make_rng(rng)
    n_pix = h * w
    ranking = rank(r.ravel(), order, gen)
    counts = np.rint(np.arange(steps + 1) * float(max_fraction) * n_pix / steps).astype(np.int64)
    fill = baseline_image(img, baseline, low, high, gen, 9)
    removals = [ranking[a:b] for a, b in zip(counts[:-1], counts[1:])]  # counts never decrease
    boxes = rescore(box_fn, "box_fn", img, fill, removals, out_dtype, batch_size, per_image=(4,))
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
