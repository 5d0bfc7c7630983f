"""Detection quality of a model on held-out generated scenes: VOC-style AP per class and mAP.

Protocol (PASCAL VOC 2010+ "all-point" AP, no difficult flags):

- per class, the detections of all images are ranked by descending score (ties keep their
  image order, then their order within the image);
- walking down that ranking, a detection is a true positive when the ground truth of its
  class in its image that it overlaps most has IoU >= ``iou_threshold`` (0.5) and has not
  been claimed by a higher-ranked detection; otherwise (no such ground truth, IoU too low,
  or that ground truth already taken) it is a false positive. Each ground truth is matched
  at most once;
- AP is the area under the precision/recall curve after making precision monotonically
  non-increasing (the precision at recall r is the best precision at any recall >= r),
  summed over every recall step (all-point interpolation);
- mAP is the mean AP over the classes that have ground truth in the evaluated scenes
  (a class without ground truth has AP NaN and is left out).

IoU uses continuous box coordinates (the data set's pixel-edge convention, no "+1").

Held-out data: scenes of :data:`crp_jax.data.splits.HELDOUT_SEED` (reported in
``weights/TRAINING.md``); training refuses that seed (:mod:`crp_jax.data.splits`).

IoU is the one of the detector, :func:`crp_jax.ssd.boxes.box_iou`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.errors import ConfigError, MissingExtraError
from crp_jax.progress import Progress
from crp_jax.ssd.boxes import box_iou

__all__ = [
    "average_precision",
    "match_to_ground_truth",
    "match_detections",
    "evaluate_detections",
    "evaluate",
    "format_table",
]


def average_precision(scores, is_tp, num_gt: int) -> float:
    """VOC all-point interpolated AP.

    Args:
      scores: ``[D]`` detection scores (any order; ranked here, stable).
      is_tp: ``[D]`` bool, whether each detection is a true positive.
      num_gt: number of ground truths of the class (NaN AP when 0).
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, bool).reshape(-1)
    if scores.shape != is_tp.shape:
        raise ConfigError(f"scores and is_tp differ in length: {scores.shape[0]} vs {is_tp.shape[0]}")
    if num_gt <= 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order]).astype(np.float64)
    fp = np.cumsum(~is_tp[order]).astype(np.float64)
    rec = tp / float(num_gt)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def match_to_ground_truth(
    det_boxes, det_scores, gt_boxes, iou_threshold: float = 0.5, *, det_labels=None, gt_labels=None, taken=None
) -> np.ndarray:
    """VOC matching within one image: ``[D]`` int, the ground truth each detection matched,
    or -1.

    Detections are visited by descending score (stable); each takes the ground truth (of
    its own label, when ``det_labels`` ``[D]`` and ``gt_labels`` ``[G]`` are given) that it
    overlaps most (the first of equal IoUs) if that IoU is >= ``iou_threshold`` and it is
    still free; otherwise it stays unmatched (a false positive). ``taken`` (``[G]`` bool),
    when given, is updated in place. IoU is :func:`crp_jax.ssd.boxes.box_iou` with two
    empty boxes counted as no overlap.
    """
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if (det_labels is None) != (gt_labels is None):
        raise ConfigError("match_to_ground_truth: give both det_labels and gt_labels, or neither")
    matched = np.full(det_boxes.shape[0], -1, np.int64)
    if taken is None:
        taken = np.zeros(gt_boxes.shape[0], bool)
    if det_boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return matched
    # box_iou gives 0/0 = NaN for two empty boxes (torchvision's convention): no overlap here
    iou = np.nan_to_num(np.asarray(box_iou(det_boxes, gt_boxes), np.float64))
    if det_labels is not None:
        same = np.asarray(det_labels).reshape(-1, 1) == np.asarray(gt_labels).reshape(1, -1)
        iou = np.where(same, iou, -1.0)  # below any IoU: another label's box never wins
    for d in np.argsort(-det_scores, kind="stable"):
        g = int(np.argmax(iou[d]))
        if iou[d, g] >= iou_threshold and not taken[g]:
            taken[g] = True
            matched[d] = g
    return matched


def match_detections(det_boxes, det_scores, gt_boxes, iou_threshold: float = 0.5, taken=None) -> np.ndarray:
    """VOC matching within one image and class: ``[D]`` bool true-positive flags
    (:func:`match_to_ground_truth` >= 0). ``taken`` (``[G]`` bool), when given, is updated
    in place.
    """
    return match_to_ground_truth(det_boxes, det_scores, gt_boxes, iou_threshold, taken=taken) >= 0


def evaluate_detections(
    detections: Sequence,
    ground_truths: Sequence,
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict:
    """AP per class and mAP over a set of images.

    Args:
      detections: per image ``(boxes [D, 4] xyxy, scores [D], labels [D])`` or an object
        with those attributes (a :class:`crp_jax.ssd.detect.Detections`).
      ground_truths: per image ``(boxes [G, 4] xyxy, labels [G])`` or an object with
        ``boxes`` and ``labels`` (a :class:`crp_jax.data.Scene`).
      class_names: index 0 is background (never evaluated).
      iou_threshold: IoU for a true positive.

    Returns:
      ``{"ap": {name: AP}, "map": mAP, "num_gt": {name: count}, "num_det": {name: count},
      "iou_threshold": ..., "num_images": ...}``.
    """
    if len(detections) != len(ground_truths):
        raise ConfigError(f"{len(detections)} detection lists for {len(ground_truths)} images")
    K = len(class_names)
    scores_by_class = [[] for _ in range(K)]
    tp_by_class = [[] for _ in range(K)]
    num_gt = np.zeros(K, np.int64)
    for det, gt in zip(detections, ground_truths):
        d_boxes, d_scores, d_labels = detection_fields(det)
        g_boxes, g_labels = truth_fields(gt)
        for k in range(1, K):
            gsel = g_labels == k
            num_gt[k] += int(gsel.sum())
            dsel = d_labels == k
            if not dsel.any():
                continue
            tp = match_detections(d_boxes[dsel], d_scores[dsel], g_boxes[gsel], iou_threshold)
            scores_by_class[k].append(d_scores[dsel])
            tp_by_class[k].append(tp)
    ap, ndet = {}, {}
    for k in range(1, K):
        s = np.concatenate(scores_by_class[k]) if scores_by_class[k] else np.zeros(0)
        t = np.concatenate(tp_by_class[k]) if tp_by_class[k] else np.zeros(0, bool)
        ap[class_names[k]] = average_precision(s, t, int(num_gt[k]))
        ndet[class_names[k]] = int(s.shape[0])
    valid = [v for v in ap.values() if not math.isnan(v)]
    return {
        "ap": ap,
        "map": float(np.mean(valid)) if valid else float("nan"),
        "num_gt": {class_names[k]: int(num_gt[k]) for k in range(1, K)},
        "num_det": ndet,
        "iou_threshold": float(iou_threshold),
        "num_images": len(detections),
    }


def detection_fields(det) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes [N, 4] float64, scores [N] float64, labels [N] int64)`` of a
    :class:`~crp_jax.Detections` or a ``(boxes, scores, labels)`` tuple."""
    if hasattr(det, "boxes") and hasattr(det, "scores"):
        b, s, l = det.boxes, det.scores, det.labels
    else:
        b, s, l = det
    return (
        np.asarray(b, np.float64).reshape(-1, 4),
        np.asarray(s, np.float64).reshape(-1),
        np.asarray(l).reshape(-1).astype(np.int64),
    )


def truth_fields(gt) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes [M, 4] float64, labels [M] int64)`` of ground truth: an object with ``boxes``
    and ``labels`` or a ``(boxes, labels)`` tuple."""
    if hasattr(gt, "boxes") and hasattr(gt, "labels"):
        b, l = gt.boxes, gt.labels
    else:
        b, l = gt
    return np.asarray(b, np.float64).reshape(-1, 4), np.asarray(l).reshape(-1).astype(np.int64)


def evaluate(
    model,
    variables,
    meta,
    seed: int = HELDOUT_SEED,
    n: int = 500,
    *,
    batch_size: int = 50,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.01,
    spec=None,
    progress: bool = False,
) -> dict:
    """AP per class and mAP@``iou_threshold`` of ``model`` on scenes ``0 .. n-1`` of the
    generated data set ``seed`` (default :data:`HELDOUT_SEED`, never trained on).

    Scenes come from :func:`crp_jax.data.generate_scene` with ``spec`` (default
    ``SceneSpec()``, 128 px); detections from :func:`crp_jax.ssd.detect.detect` (its
    torchvision defaults, boxes mapped back to scene pixels). Returns the dict of
    :func:`evaluate_detections` plus ``"seed"``, ``"n"``, ``"seconds"`` and ``"coco"``: COCO's
    ``{"map", "map50", "map75"}`` by pycocotools (:func:`crp_jax.eval.coco.coco_map`), or
    ``{"missing": why}`` where pycocotools is not installed.
    """
    from crp_jax.data import SceneSpec, generate_scene
    from crp_jax.eval.coco import coco_map
    from crp_jax.ssd.detect import detect, preprocess_with_sizes

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    spec = spec or SceneSpec()
    t0 = time.time()
    dets, gts = [], []
    bar = Progress(n, "evaluate", progress, unit="scene")
    for start in range(0, n, batch_size):
        scenes = [generate_scene(int(seed), i, spec) for i in range(start, min(n, start + batch_size))]
        x, sizes = preprocess_with_sizes(np.stack([s.image for s in scenes]), meta)
        dets.extend(detect(model, variables, x, meta, score_threshold=score_threshold, image_sizes=sizes))
        gts.extend(scenes)
        bar.update(len(scenes))
    bar.close()
    res = evaluate_detections(dets, gts, meta.class_names, iou_threshold)
    try:  # COCO's mAP@[.5:.95] beside VOC's, when pycocotools is installed
        res["coco"] = coco_map(dets, gts, meta.class_names, [s.image.shape[:2] for s in gts])
    except MissingExtraError as e:
        res["coco"] = {"missing": str(e)}
    res.update(seed=int(seed), n=int(n), seconds=round(time.time() - t0, 1))
    return res


def format_table(result: dict) -> str:
    """The per-class AP table and mAP as text."""
    thr = result.get("iou_threshold", 0.5)
    lines = [f"{'class':<8}{'AP@' + format(thr, 'g'):>9}{'GT':>7}{'dets':>8}"]
    for name, ap in result["ap"].items():
        lines.append(f"{name:<8}{ap:>9.4f}{result['num_gt'][name]:>7d}{result['num_det'][name]:>8d}")
    lines.append(f"{'mAP':<8}{result['map']:>9.4f}")
    coco = result.get("coco")
    if coco is not None and "map" in coco:
        lines.append(
            f"COCO mAP@[.5:.95] {coco['map']:.4f} (AP@.5 {coco['map50']:.4f}, AP@.75 {coco['map75']:.4f}; pycocotools)"
        )
    elif coco is not None:
        lines.append(f"COCO mAP@[.5:.95]: not computed ({coco['missing']})")
    if "n" in result:
        lines.append(
            f"({result['n']} held-out scenes of data set seed {result['seed']}, {result.get('seconds', 0):.0f}s)"
        )
    return "\n".join(lines)
