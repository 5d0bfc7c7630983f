"""SSD's training objective: default-box matching and the multibox loss (``jax.numpy``).

- targets: every default box is matched to the ground-truth box it overlaps most when that
  IoU is >= 0.5, and every ground truth additionally claims its best default box; matched
  boxes are encoded with variances (0.1, 0.2) by :func:`crp_jax.ssd.boxes.encode`
  (:func:`assign_targets`, jit- and vmap-able, so matching runs inside the jitted step);
- loss: softmax cross-entropy on the positives and on the hardest negatives (3 per
  positive, per image), smooth-L1 (beta 1) on the positives' offsets, both summed and
  divided by the number of positives in the batch (:func:`multibox_loss`).

Detector code: nothing here knows about training loops, data sets or optimisers
(those are in :mod:`crp_jax.training`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from crp_jax.ssd.boxes import box_iou, encode, xyxy_to_cxcywh

__all__ = ["VARIANCES", "assign_targets", "assign_targets_batch", "smooth_l1", "multibox_loss"]

#: SSD's box-coding variances (centre, size), as torchvision's ``BoxCoder(10, 10, 5, 5)``.
VARIANCES = (0.1, 0.2)


def assign_targets(
    gt_boxes,
    gt_labels,
    gt_valid,
    anchors_xyxy,
    anchors_cxcywh=None,
    *,
    iou_threshold: float = 0.5,
    variances=VARIANCES,
):
    """SSD's matching for one image (``jax.numpy``; jit- and vmap-able).

    Args:
      gt_boxes: ``[M, 4]`` ground-truth boxes, xyxy (padded rows are ignored).
      gt_labels: ``[M]`` int class of each box (1..K-1).
      gt_valid: ``[M]`` bool, False for padding.
      anchors_xyxy: ``[A, 4]`` default boxes, xyxy, same units as ``gt_boxes``.
      anchors_cxcywh: the same default boxes as (cx, cy, w, h) (derived when None).
      iou_threshold: a default box is positive when its best IoU with a ground truth is at
        least this.
      variances: box-coding variances (centre, size).

    Returns:
      ``(labels [A] int32, loc_targets [A, 4] float32)``: 0 (background) or the class of
      the matched ground truth, and the encoded offsets of the matched box (0 for
      background). Each valid ground truth also claims the default box it overlaps most,
      whatever the IoU (so none is left unmatched).
    """
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_labels = jnp.asarray(gt_labels, jnp.int32)
    gt_valid = jnp.asarray(gt_valid, bool)
    anchors_xyxy = jnp.asarray(anchors_xyxy, jnp.float32)
    if anchors_cxcywh is None:
        anchors_cxcywh = xyxy_to_cxcywh(anchors_xyxy)
    anchors_cxcywh = jnp.asarray(anchors_cxcywh, jnp.float32)
    M = gt_boxes.shape[0]
    A = anchors_xyxy.shape[0]

    iou = box_iou(gt_boxes, anchors_xyxy)  # [M, A]
    iou = jnp.where(gt_valid[:, None] & jnp.isfinite(iou), iou, -1.0)
    best_gt = jnp.argmax(iou, axis=0)  # [A]
    best_gt_iou = jnp.max(iou, axis=0)
    best_anchor = jnp.argmax(iou, axis=1)  # [M]
    # every valid ground truth claims its best default box (padding scatters out of range)
    target = jnp.where(gt_valid, best_anchor, A)
    best_gt = best_gt.at[target].set(jnp.arange(M), mode="drop")
    best_gt_iou = best_gt_iou.at[target].set(2.0, mode="drop")

    pos = best_gt_iou >= iou_threshold
    labels = jnp.where(pos, gt_labels[best_gt], 0).astype(jnp.int32)
    matched = gt_boxes[best_gt]
    # background rows may hold padding (zero-size) boxes: encode them against a harmless box
    matched = jnp.where(pos[:, None], matched, jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32))
    loc = encode(matched, anchors_cxcywh, variances)
    loc = jnp.where(pos[:, None], loc, 0.0)
    return labels, jax.lax.stop_gradient(loc.astype(jnp.float32))


def assign_targets_batch(
    gt_boxes, gt_labels, gt_valid, anchors_xyxy, anchors_cxcywh=None, *, iou_threshold=0.5, variances=VARIANCES
):
    """:func:`assign_targets` over a batch: ``[B, M, 4]``, ``[B, M]``, ``[B, M]`` ->
    ``([B, A], [B, A, 4])``."""
    anchors_xyxy = jnp.asarray(anchors_xyxy, jnp.float32)
    if anchors_cxcywh is None:
        anchors_cxcywh = xyxy_to_cxcywh(anchors_xyxy)

    def one(b, l, v):
        return assign_targets(b, l, v, anchors_xyxy, anchors_cxcywh, iou_threshold=iou_threshold, variances=variances)

    return jax.vmap(one)(jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_labels), jnp.asarray(gt_valid))


def smooth_l1(d, beta: float = 1.0):
    """Elementwise smooth-L1 (Huber with slope 1): ``0.5 d^2 / beta`` below ``beta``, else
    ``|d| - 0.5 beta``."""
    a = jnp.abs(d)
    return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def multibox_loss(cls_logits, loc, cls_targets, loc_targets, *, neg_pos_ratio: float = 3.0):
    """SSD's multibox loss with hard-negative mining.

    Args:
      cls_logits: ``[B, A, K]`` raw class logits.
      loc: ``[B, A, 4]`` predicted offsets.
      cls_targets: ``[B, A]`` int, 0 = background.
      loc_targets: ``[B, A, 4]`` encoded offsets (used where ``cls_targets > 0``).
      neg_pos_ratio: hard negatives kept per positive, per image.

    Per image, the ``floor(neg_pos_ratio * positives)`` background boxes with the largest
    cross-entropy (ties: lower anchor index first) are the hard negatives. Returns
    ``(loss, aux)`` with ``loss = (CE over positives and hard negatives + smooth-L1 over the
    positives' 4 offsets) / max(1, positives in the batch)`` and ``aux`` the two parts and
    the number of positives.
    """
    cls_logits = jnp.asarray(cls_logits, jnp.float32)
    loc = jnp.asarray(loc, jnp.float32)
    cls_targets = jnp.asarray(cls_targets, jnp.int32)
    A = cls_logits.shape[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(cls_logits, cls_targets)  # [B, A]
    pos = cls_targets > 0
    num_pos = jnp.sum(pos, axis=1)  # [B]
    neg_loss = jax.lax.stop_gradient(jnp.where(pos, -jnp.inf, ce))
    order = jnp.argsort(-neg_loss, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1, stable=True)
    num_neg = jnp.minimum(jnp.floor(neg_pos_ratio * num_pos).astype(jnp.int32), A - num_pos)
    neg = (rank < num_neg[:, None]) & ~pos
    n = jnp.maximum(jnp.sum(num_pos), 1).astype(jnp.float32)
    cls_loss = jnp.sum(jnp.where(pos | neg, ce, 0.0)) / n
    loc_l = jnp.sum(smooth_l1(loc - loc_targets), axis=-1)
    loc_loss = jnp.sum(jnp.where(pos, loc_l, 0.0)) / n
    return cls_loss + loc_loss, {"cls_loss": cls_loss, "loc_loss": loc_loss, "num_pos": jnp.sum(num_pos)}
