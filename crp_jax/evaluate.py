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

Held-out data: :data:`HELDOUT_SEED` is the data-set seed of the test scenes (used by
``crp-jax evaluate`` and reported in ``weights/TRAINING.md``); :data:`VALIDATION_SEED` is the
small set watched during training. Training (:mod:`crp_jax.train`) uses data-set ``seed``
(default 0) and refuses either of these.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import numpy as np

from crp_jax.errors import ConfigError, one_line

__all__ = [
    "HELDOUT_SEED",
    "VALIDATION_SEED",
    "average_precision",
    "match_detections",
    "evaluate_detections",
    "evaluate",
    "format_table",
    "evaluate_main",
]

#: Data-set seed of the held-out test scenes (never used for training).
HELDOUT_SEED = 1_000_003
#: Data-set seed of the validation scenes watched during training (never used for training).
VALIDATION_SEED = 1_000_002


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes (0 where the union is empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


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


def match_detections(det_boxes, det_scores, gt_boxes, iou_threshold: float = 0.5, taken=None) -> np.ndarray:
    """VOC matching within one image and class: ``[D]`` bool true-positive flags.

    Detections are visited by descending score (stable); each takes the ground truth it
    overlaps most if that IoU is >= ``iou_threshold`` and it is still free, else it is a
    false positive. ``taken`` (``[G]`` bool), when given, is updated in place.
    """
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    tp = np.zeros(det_boxes.shape[0], bool)
    if taken is None:
        taken = np.zeros(gt_boxes.shape[0], bool)
    if det_boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return tp
    iou = _iou_matrix(det_boxes, gt_boxes)
    for d in np.argsort(-det_scores, kind="stable"):
        g = int(np.argmax(iou[d]))
        if iou[d, g] >= iou_threshold and not taken[g]:
            taken[g] = True
            tp[d] = True
    return tp


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
        d_boxes, d_scores, d_labels = _det_fields(det)
        g_boxes, g_labels = _gt_fields(gt)
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


def _det_fields(det):
    if hasattr(det, "boxes") and hasattr(det, "scores"):
        b, s, l = det.boxes, det.scores, det.labels
    else:
        b, s, l = det
    return (
        np.asarray(b, np.float64).reshape(-1, 4),
        np.asarray(s, np.float64).reshape(-1),
        np.asarray(l).reshape(-1).astype(np.int64),
    )


def _gt_fields(gt):
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
    :func:`evaluate_detections` plus ``"seed"``, ``"n"`` and ``"seconds"``.
    """
    from crp_jax.data import SceneSpec, generate_scene
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
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="evaluate", unit="scene", file=sys.stderr)
        except ImportError:
            bar = None
    for start in range(0, n, batch_size):
        scenes = [generate_scene(int(seed), i, spec) for i in range(start, min(n, start + batch_size))]
        x, sizes = preprocess_with_sizes(np.stack([s.image for s in scenes]), meta)
        dets.extend(detect(model, variables, x, meta, score_threshold=score_threshold, image_sizes=sizes))
        gts.extend(scenes)
        if bar is not None:
            bar.update(len(scenes))
    if bar is not None:
        bar.close()
    res = evaluate_detections(dets, gts, meta.class_names, iou_threshold)
    res.update(seed=int(seed), n=int(n), seconds=round(time.time() - t0, 1))
    return res


def format_table(result: dict) -> str:
    """The per-class AP table and mAP as text."""
    thr = result.get("iou_threshold", 0.5)
    lines = [f"{'class':<8}{'AP@' + format(thr, 'g'):>9}{'GT':>7}{'dets':>8}"]
    for name, ap in result["ap"].items():
        lines.append(f"{name:<8}{ap:>9.4f}{result['num_gt'][name]:>7d}{result['num_det'][name]:>8d}")
    lines.append(f"{'mAP':<8}{result['map']:>9.4f}")
    if "n" in result:
        lines.append(
            f"({result['n']} held-out scenes of data set seed {result['seed']}, {result.get('seconds', 0):.0f}s)"
        )
    return "\n".join(lines)


def build_parser(prog: str = "crp-jax evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="VOC-style AP per class and mAP@0.5 of a detector on held-out generated glyph scenes.",
    )
    p.add_argument(
        "--weights", default=None, help="weights file (NAME.msgpack + NAME.json); default: the shipped model"
    )
    p.add_argument("--n", type=int, default=500, help="number of held-out scenes (default 500)")
    p.add_argument(
        "--seed",
        type=int,
        default=HELDOUT_SEED,
        help=f"data-set seed of the scenes (default {HELDOUT_SEED}, never trained on)",
    )
    p.add_argument("--batch-size", type=int, default=50, help="scenes per forward pass (default 50)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold for a true positive (default 0.5)")
    return p


def evaluate_main(argv=None, prog: str = "crp-jax evaluate") -> int:
    """``crp-jax evaluate``: 0 on success, 2 on a usage error, 1 on a runtime error (one line)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else 2
    if args.n < 1:
        print(f"{prog}: error: --n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"{prog}: error: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"{prog}: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if not 0.0 < args.iou <= 1.0:
        print(f"{prog}: error: --iou must be in (0, 1], got {args.iou}", file=sys.stderr)
        return 2
    try:
        from crp_jax.ssd.io import load_pretrained, load_weights

        model, variables, meta = load_weights(args.weights) if args.weights else load_pretrained()
        res = evaluate(
            model, variables, meta, seed=args.seed, n=args.n, batch_size=args.batch_size, iou_threshold=args.iou
        )
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # the package's errors and anything else (e.g. XLA's): one line
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(format_table(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(evaluate_main())
