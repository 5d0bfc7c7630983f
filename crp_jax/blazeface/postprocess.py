"""BlazeFace's raw outputs -> faces, as MediaPipe's calculators compute them (numpy).

- :func:`decode` is ``TensorsToDetectionsCalculator``'s box decoding with
  ``reverse_output_order: true`` (regressors in x, y, w, h order) and ``x_scale = y_scale =
  w_scale = h_scale = `` the input size: ``cx = r0 / scale * anchor_w + anchor_cx``,
  ``w = r2 / scale * anchor_w`` (no exponential), keypoints like the centre;
- :func:`sigmoid_scores`: raw logits clipped to ``[-score_clip, score_clip]`` (MediaPipe's
  ``score_clipping_thresh: 100``) then the logistic function (written so that it cannot
  overflow);
- :func:`weighted_nms`: ``NonMaxSuppressionCalculator`` with ``algorithm: WEIGHTED`` and
  ``overlap_type: INTERSECTION_OVER_UNION``: take the best remaining detection, collect every
  remaining one (itself included) whose IoU with it exceeds the threshold, and emit the
  score-weighted mean of their boxes and keypoints with the best one's score and anchor.

All coordinates here are in the model input's [0, 1] units (x right, y down).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def decode(loc: np.ndarray, anchors: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``loc [A, 4 + 2K]`` raw regressors, ``anchors [A, 4]`` (cx, cy, w, h) -> (boxes
    ``[A, 4]`` (x1, y1, x2, y2), keypoints ``[A, K, 2]`` (x, y)), float32, [0, 1] units."""
    loc = np.asarray(loc, dtype=np.float32)
    a = np.asarray(anchors, dtype=np.float32)
    s = np.float32(scale)
    cx = loc[:, 0] / s * a[:, 2] + a[:, 0]
    cy = loc[:, 1] / s * a[:, 3] + a[:, 1]
    w = loc[:, 2] / s * a[:, 2]
    h = loc[:, 3] / s * a[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    kp = loc[:, 4:].reshape(loc.shape[0], -1, 2)
    kx = kp[..., 0] / s * a[:, 2:3] + a[:, 0:1]
    ky = kp[..., 1] / s * a[:, 3:4] + a[:, 1:2]
    return boxes.astype(np.float32), np.stack([kx, ky], axis=-1).astype(np.float32)


def sigmoid_scores(logits: np.ndarray, score_clip: float = 100.0) -> np.ndarray:
    """``sigmoid(clip(logits, -score_clip, score_clip))`` in float32, without overflow."""
    z = np.clip(np.asarray(logits, dtype=np.float32), -score_clip, score_clip)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of ``box [4]`` with each of ``boxes [N, 4]`` (x1, y1, x2, y2); 0 when disjoint."""
    ix = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    iy = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.where((ix > 0) & (iy > 0), ix * iy, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class Faces:
    """Blended detections of one image, best first: ``boxes [N, 4]``, ``keypoints [N, K, 2]``
    ([0, 1] input units), ``scores [N]`` (each the best member's), ``anchors [N]`` (its anchor)."""

    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    anchors: np.ndarray


def weighted_nms(
    boxes: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    *,
    min_score: float,
    iou_threshold: float,
    max_detections: int | None = None,
) -> Faces:
    """MediaPipe's weighted (blending) NMS over the anchors with ``score >= min_score`` and a
    box of non-negative width and height (module doc)."""
    scores = np.asarray(scores, dtype=np.float32)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    keep = np.flatnonzero((scores >= min_score) & (w >= 0) & (h >= 0))
    order = keep[np.argsort(-scores[keep], kind="stable")]
    out_b, out_k, out_s, out_a = [], [], [], []
    remaining = order
    while remaining.size and (max_detections is None or len(out_s) < max_detections):
        best = remaining[0]
        sim = iou(boxes[best], boxes[remaining])
        members = remaining[sim > iou_threshold]
        if members.size:
            wts = scores[members][:, None]
            total = wts.sum()
            box = (boxes[members] * wts).sum(0) / total
            kps = (keypoints[members] * wts[:, :, None]).sum(0) / total
        else:  # a NaN box: MediaPipe keeps the detection as it is
            box, kps = boxes[best], keypoints[best]
        out_b.append(box)
        out_k.append(kps)
        out_s.append(scores[best])
        out_a.append(best)
        rest = remaining[~(sim > iou_threshold)]
        if rest.size == remaining.size:
            break
        remaining = rest
    k = keypoints.shape[1]
    return Faces(
        boxes=np.asarray(out_b, dtype=np.float32).reshape(-1, 4),
        keypoints=np.asarray(out_k, dtype=np.float32).reshape(-1, k, 2),
        scores=np.asarray(out_s, dtype=np.float32),
        anchors=np.asarray(out_a, dtype=np.int64),
    )
