"""Box formats, SSD box coding, IoU and non-maximum suppression.

Conversions, ``encode``, ``decode`` and ``box_iou`` work on numpy arrays and on jax arrays
(also under ``jit``): they use ``jax.numpy`` when any argument is a jax array, else numpy.
``nms`` / ``batched_nms`` run on the host with numpy (their output size is data dependent).

Box coding follows torchvision's ``BoxCoder(weights=(10, 10, 5, 5))``, i.e. SSD variances
(0.1, 0.2): offsets are ``((cx - cx_a) / w_a / 0.1, (cy - cy_a) / h_a / 0.1,
log(w / w_a) / 0.2, log(h / h_a) / 0.2)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.errors import InputError

# torchvision's BoxCoder clamp: keeps exp(dw) finite for any logit the network produces.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _xp(*arrays):
    """The array namespace of the arguments: jax.numpy if any is a jax array, else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _asarray(xp, a):
    if xp is np:
        a = np.asarray(a)
        # Integer boxes would make the arithmetic below integer division / truncation.
        return a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float32)
    a = jnp.asarray(a)
    return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.float32)


def _check_last4(name: str, a) -> None:
    if a.ndim < 1 or a.shape[-1] != 4:
        raise InputError(f"{name} must have shape [..., 4], got {tuple(a.shape)}")


def cxcywh_to_xyxy(boxes):
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x1, y1, x2, y2)."""
    xp = _xp(boxes)
    b = _asarray(xp, boxes)
    _check_last4("boxes", b)
    half = 0.5 * b[..., 2:]
    return xp.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


def xyxy_to_cxcywh(boxes):
    """``[..., 4]`` (x1, y1, x2, y2) -> ``[..., 4]`` (cx, cy, w, h).

    The centre is ``x1 + 0.5 * w`` (not ``(x1 + x2) / 2``), as torchvision's BoxCoder
    computes it, so float32 results agree with it bit for bit.
    """
    xp = _xp(boxes)
    b = _asarray(xp, boxes)
    _check_last4("boxes", b)
    wh = b[..., 2:] - b[..., :2]
    return xp.concatenate([b[..., :2] + 0.5 * wh, wh], axis=-1)


def _weights(variances) -> tuple[float, float, float, float]:
    v_c, v_s = (float(v) for v in variances)
    if not (v_c > 0 and v_s > 0):
        raise InputError(f"variances must be two positive numbers, got {tuple(variances)}")
    # Divide by the BoxCoder weights (1/variance) rather than multiply by the variance:
    # 1/0.1 == 10.0 and 1/0.2 == 5.0 exactly, so this reproduces torchvision's rounding.
    return 1.0 / v_c, 1.0 / v_c, 1.0 / v_s, 1.0 / v_s


def encode(boxes_xyxy, anchors_cxcywh, variances=(0.1, 0.2)):
    """Offsets of boxes against default boxes: ``[..., N, 4]`` xyxy, ``[N, 4]`` cxcywh ->
    ``[..., N, 4]`` (cx, cy, w, h) offsets. Both boxes must be in the same units.

    Boxes with zero width or height give ``-inf`` log-size offsets, as in torchvision.
    """
    xp = _xp(boxes_xyxy, anchors_cxcywh)
    b = xyxy_to_cxcywh(_asarray(xp, boxes_xyxy))
    a = _asarray(xp, anchors_cxcywh)
    _check_last4("anchors", a)
    wx, wy, ww, wh = _weights(variances)
    dx = wx * (b[..., 0] - a[..., 0]) / a[..., 2]
    dy = wy * (b[..., 1] - a[..., 1]) / a[..., 3]
    dw = ww * xp.log(b[..., 2] / a[..., 2])
    dh = wh * xp.log(b[..., 3] / a[..., 3])
    return xp.stack([dx, dy, dw, dh], axis=-1)


def decode(loc, anchors_cxcywh, variances=(0.1, 0.2)):
    """Boxes from offsets: ``[..., N, 4]`` offsets, ``[N, 4]`` cxcywh -> ``[..., N, 4]`` xyxy
    in the anchors' units.

    Same arithmetic as torchvision's ``BoxCoder.decode_single``, including the clamp of the
    log-size offsets at ``log(1000 / 16)`` so that ``exp`` never overflows.
    """
    xp = _xp(loc, anchors_cxcywh)
    d = _asarray(xp, loc)
    a = _asarray(xp, anchors_cxcywh).astype(d.dtype)
    _check_last4("loc", d)
    _check_last4("anchors", a)
    wx, wy, ww, wh = _weights(variances)
    dx, dy = d[..., 0] / wx, d[..., 1] / wy
    dw = xp.minimum(d[..., 2] / ww, BBOX_XFORM_CLIP)
    dh = xp.minimum(d[..., 3] / wh, BBOX_XFORM_CLIP)
    cx = dx * a[..., 2] + a[..., 0]
    cy = dy * a[..., 3] + a[..., 1]
    half_w = 0.5 * (xp.exp(dw) * a[..., 2])
    half_h = 0.5 * (xp.exp(dh) * a[..., 3])
    return xp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def clip_boxes(boxes, height, width):
    """Clamp ``[..., 4]`` xyxy boxes into an image of ``height`` x ``width`` pixels
    (torchvision's ``clip_boxes_to_image``)."""
    xp = _xp(boxes)
    b = _asarray(xp, boxes)
    _check_last4("boxes", b)
    x = xp.clip(b[..., 0::2], 0, width)
    y = xp.clip(b[..., 1::2], 0, height)
    return xp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def box_area(boxes):
    """``[..., 4]`` xyxy -> ``[...]`` areas."""
    xp = _xp(boxes)
    b = _asarray(xp, boxes)
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(a, b):
    """Pairwise IoU: ``[N, 4]`` xyxy, ``[M, 4]`` xyxy -> ``[N, M]``.

    Two empty boxes give 0/0 = NaN, as torchvision's ``box_iou`` does.
    """
    xp = _xp(a, b)
    a, b = _asarray(xp, a), _asarray(xp, b)
    _check_last4("a", a)
    _check_last4("b", b)
    lt = xp.maximum(a[:, None, :2], b[None, :, :2])
    rb = xp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = xp.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


# ---- non-maximum suppression (host) -------------------------------------------------------


def _nms_inputs(boxes, scores):
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise InputError(f"boxes must have shape [N, 4], got {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise InputError(f"scores must have shape [{boxes.shape[0]}], got {scores.shape}")
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float32)
    return boxes, scores


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS over ``[N, 4]`` boxes: indices kept, by descending score.

    Same algorithm as torchvision's kernel: visit boxes by descending score (stable, so
    equal scores keep their input order), keep a box unless an already kept box overlaps
    it with IoU > threshold. One vectorised IoU row per kept box.
    """
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = i + 1 + np.flatnonzero(alive[i + 1 :])
        if rest.size == 0:
            break
        w = np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0])
        h = np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1])
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (area[i] + area[rest] - inter)
        alive[rest[iou > iou_threshold]] = False  # NaN (empty boxes) never suppresses
    return order[np.asarray(keep, dtype=np.int64)]


def nms(boxes, scores, iou_threshold: float) -> np.ndarray:
    """Non-maximum suppression: ``[N, 4]`` xyxy, ``[N]`` -> int64 indices kept, by
    descending score. Discards boxes with IoU > ``iou_threshold`` to a higher-scoring
    kept box (torchvision.ops.nms)."""
    boxes, scores = _nms_inputs(boxes, scores)
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    return _greedy_nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes, scores, labels, iou_threshold: float) -> np.ndarray:
    """Per-class NMS: boxes of different ``labels`` never suppress each other.

    ``[N, 4]`` xyxy, ``[N]`` scores, ``[N]`` int labels -> int64 indices kept, sorted by
    descending score (ties in input order), as torchvision.ops.batched_nms.
    """
    boxes, scores = _nms_inputs(boxes, scores)
    labels = np.asarray(labels)
    if labels.shape != scores.shape:
        raise InputError(f"labels must have shape {scores.shape}, got {labels.shape}")
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    kept = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        kept.append(idx[_greedy_nms(boxes[idx], scores[idx], float(iou_threshold))])
    kept = np.sort(np.concatenate(kept))
    return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)
