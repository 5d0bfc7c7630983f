"""Faces from a BlazeFace model: raw outputs (jitted) -> MediaPipe post-processing (numpy).

:func:`detect` is what ``cj.detect(model, variables, x, meta=blazeface_meta)`` runs. Each
image gives a :class:`FaceDetections`, an SSD :class:`~crp_jax.ssd.detect.Detections` with
the six keypoints added, so everything that draws or explains SSD detections takes it:
``anchors`` is the anchor of each blended detection's best member (the one whose score it
reports), the anchor a ``ClassTarget`` / ``LocTarget`` should name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.blazeface.postprocess import decode, sigmoid_scores, weighted_nms
from crp_jax.blazeface.preprocess import to_original
from crp_jax.checks import check_image_batch
from crp_jax.compiled import cached
from crp_jax.errors import ConfigError, InputError, NumericsError
from crp_jax.numerics import check_finite_forward
from crp_jax.ssd.detect import Detections


@dataclass(eq=False)
class FaceDetections(Detections):
    """Faces of one image (N, best first). As :class:`Detections` (``boxes [N, 4]`` x1, y1,
    x2, y2; ``scores [N]`` sigmoid; ``labels [N]`` all 0, the face logit; ``anchors [N]``)
    plus ``keypoints [N, 6, 2]`` (x, y) in the order of ``meta.keypoint_names``; pixels of
    the model input, or of the original image when ``detect`` got ``image_sizes``."""

    keypoints: np.ndarray | None = None


@cached("detect_blazeface", maxsize=8)
def _raw_fn(model):
    def raw(variables, x):
        cls, loc = model.apply(variables, x)
        finite = jnp.all(jnp.isfinite(cls), axis=(1, 2)) & jnp.all(jnp.isfinite(loc), axis=(1, 2))
        return cls, loc, finite

    return jax.jit(raw)


def _setting(value, default, name: str, kind=float):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return kind(value)


def detect(
    model,
    variables,
    x,
    meta,
    *,
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
    max_detections: int | None = None,
    image_sizes=None,
    topk_candidates=None,
) -> list[FaceDetections]:
    """Faces in a preprocessed batch ``x [B, S, S, 3]`` (see
    :func:`crp_jax.blazeface.preprocess.preprocess_with_sizes`).

    MediaPipe's pipeline (crp_jax/blazeface/postprocess.py): sigmoid of the clipped logits,
    keep ``score >= score_threshold`` (default ``meta.min_score``), decode against the
    anchors, weighted NMS at IoU ``nms_threshold`` (default ``meta.iou_threshold``), at most
    ``max_detections`` (default: all). ``image_sizes``: ``(H, W)`` per image from
    ``preprocess_with_sizes``: boxes and keypoints are mapped through the letterbox back to
    original pixels. ``topk_candidates`` is accepted for ``cj.detect``'s signature and unused.
    """
    del topk_candidates
    s = int(meta.image_size)
    check_image_batch(x, s)
    min_score = _setting(score_threshold, meta.min_score, "score_threshold")
    iou_thr = _setting(nms_threshold, meta.iou_threshold, "nms_threshold")
    if max_detections is not None and (isinstance(max_detections, bool) or int(max_detections) < 0):
        raise ConfigError(f"max_detections must be an int >= 0, got {max_detections!r}")
    b = x.shape[0]
    if image_sizes is not None:
        image_sizes = [tuple(int(v) for v in hw) for hw in image_sizes]
        if len(image_sizes) != b:
            raise InputError(f"image_sizes has {len(image_sizes)} entries for a batch of {b} images")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise InputError("the batch contains NaN or Inf pixels")
    cls, loc, finite = jax.device_get(_raw_fn(model)(variables, x))
    if cls.shape[1] != meta.num_anchors or loc.shape[1] != meta.num_anchors:
        raise ConfigError(f"model outputs {cls.shape[1]} anchors, {meta.name} has {meta.num_anchors}")
    bad = np.flatnonzero(~np.asarray(finite))
    if bad.size:
        i = int(bad[0])
        check_finite_forward(model.apply, variables, x[i : i + 1], where=f"image {i} of the batch")
        raise NumericsError(f"image {i}: the model's outputs hold NaN/Inf for finite pixels")
    anchors = meta.anchors
    out = []
    for i in range(b):
        boxes, kps = decode(loc[i], anchors, s)
        scores = sigmoid_scores(cls[i, :, 0], meta.score_clip)
        faces = weighted_nms(
            boxes, kps, scores, min_score=min_score, iou_threshold=iou_thr, max_detections=max_detections
        )
        if image_sizes is not None:
            corners = to_original(faces.boxes.reshape(-1, 2, 2), image_sizes[i]).reshape(-1, 4)
            points = to_original(faces.keypoints, image_sizes[i])
        else:
            corners, points = faces.boxes * s, faces.keypoints * s
        out.append(
            FaceDetections(
                boxes=corners.astype(np.float32),
                scores=faces.scores,
                labels=np.zeros(faces.scores.shape, np.int64),
                anchors=faces.anchors,
                image=i,
                keypoints=points.astype(np.float32),
            )
        )
    return out
