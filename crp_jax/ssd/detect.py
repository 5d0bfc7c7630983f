"""Preprocessing and detection (post-processing) for the SSD detector.

``preprocess`` turns images into the model's input; ``detect`` runs the model and
reproduces torchvision's ``SSD.postprocess_detections`` (softmax, per-class score threshold
and top-k, decode, clip, per-class NMS, top detections), remembering for every detection the
default box (anchor) it came from so that it can be explained later.

Resizing (a choice, documented): bilinear with half-pixel centres (``align_corners=False``)
and *no* antialiasing, exactly ``torch.nn.functional.interpolate(mode="bilinear")`` as
torchvision's SSD transform applies it; as there, pixels are normalised first and resized
second. It is implemented in numpy, so images of any size cost no XLA compilation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from crp_jax.checks import check_image_batch
from crp_jax.compiled import cached
from crp_jax.errors import ConfigError, InputError, NumericsError
from crp_jax.numerics import check_finite_forward
from crp_jax.ssd.anchors import default_boxes_xyxy
from crp_jax.ssd.boxes import batched_nms, clip_boxes, decode, xyxy_to_cxcywh
from crp_jax.ssd.meta import SSD300_POSTPROCESS, Postprocess, check_preprocessing

# Float images may overshoot [0, 1] by rounding (e.g. after a resize); more than this is
# almost surely a 0..255 image passed as float, which would silently break the z^B bounds.
_FLOAT_RANGE_TOL = 1e-3


# ---- preprocessing --------------------------------------------------------------------------


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} with shape {tuple(shape)}" if shape is not None else type(value).__name__


def _to_numpy(value, where: str) -> np.ndarray:
    """A PIL image, numpy or jax array -> numpy array; anything else is an InputError."""
    if isinstance(value, Image.Image):
        return np.asarray(value.convert("RGB"))
    if not isinstance(value, (np.ndarray, jax.Array)):
        raise InputError(f"{where} must be a uint8 or float array (or PIL image), got {_describe(value)}")
    return np.asarray(value)


def _to_rgb01(img: np.ndarray, index: int) -> np.ndarray:
    """One image ``[H, W]``, ``[H, W, 1|3|4]`` (uint8 0..255 or float 0..1) -> ``[H, W, 3]``
    float32 in [0, 1]. Grey is repeated to RGB, alpha is dropped (as PIL's RGBA->RGB)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise InputError(f"image {index} must be HxW (grey), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise InputError(f"image {index} is empty: shape {img.shape}")
    if img.dtype == np.bool_ or not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise InputError(f"image {index} has dtype {img.dtype}; use uint8 (0..255) or float (0..1)")
    if np.issubdtype(img.dtype, np.integer):
        lo, hi = img.min(), img.max()
        if lo < 0 or hi > 255:
            raise InputError(f"image {index} is an integer image with values in [{lo}, {hi}], expected 0..255")
        v = img.astype(np.float32) / np.float32(255.0)
    else:
        v = img.astype(np.float32)
        if not np.all(np.isfinite(v)):
            raise InputError(f"image {index} contains NaN or Inf pixels")
        lo, hi = float(v.min()), float(v.max())
        if lo < -_FLOAT_RANGE_TOL or hi > 1.0 + _FLOAT_RANGE_TOL:
            raise InputError(
                f"image {index} is a float image with values in [{lo:g}, {hi:g}]; float images must be "
                "in [0, 1] (pass uint8 for 0..255 images)"
            )
    if v.shape[-1] == 1:
        v = np.repeat(v, 3, axis=-1)
    return v[..., :3]


def _as_image_list(images) -> list[np.ndarray]:
    """Split the accepted input forms into a list of single images (numpy, not yet converted)."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InputError("got an empty list of images")
        return [_to_numpy(im, f"image {i}") for i, im in enumerate(images)]
    arr = _to_numpy(images, "images")
    if arr.ndim == 4:
        if arr.shape[0] == 0:
            raise InputError(f"empty batch: images have shape {arr.shape}")
        return list(arr)
    if arr.ndim in (2, 3):
        return [arr]
    raise InputError(f"images must be HxW, HxWxC, a [B, H, W, C] batch or a list of images; got shape {arr.shape}")


def _linear_taps(n_in: int, n_out: int):
    """Source indices and weights of a 1-D bilinear resize, as torch's CPU kernel computes
    them (float32, half-pixel centres, source clamped at 0, no antialias)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, i1, (np.float32(1.0) - w1), w1


def resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """``[H, W, C]`` float32 -> ``[size, size, C]``, torch ``interpolate(mode="bilinear",
    align_corners=False)`` without antialias."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    c0, c1, cw0, cw1 = _linear_taps(w, size)
    rows = img[:, c0] * cw0[None, :, None] + img[:, c1] * cw1[None, :, None]  # along width
    r0, r1, rw0, rw1 = _linear_taps(h, size)
    return rows[r0] * rw0[:, None, None] + rows[r1] * rw1[:, None, None]  # then along height


def preprocess_with_sizes(images, meta) -> tuple[jax.Array, list[tuple[int, int]]]:
    """Images -> (model input ``[B, S, S, 3]`` float32, original ``(H, W)`` of each image).

    Accepts a uint8 (0..255) or float (0..1) image ``HxW``, ``HxWx1``, ``HxWx3`` or
    ``HxWx4``, a list of such images of any sizes, a ``[B, H, W, C]`` batch, or PIL images.
    Each is made RGB, normalised ``(v - meta.mean) / meta.std`` and resized to
    ``meta.image_size`` (see the module doc for the resize). Float images outside [0, 1]
    (beyond rounding), integer images outside 0..255 and NaN/Inf pixels raise
    :class:`InputError` naming the image, as do shapes other than those above. Pass the sizes to
    ``detect(..., image_sizes=sizes)`` to get boxes in original pixels.

    A meta with its own ``preprocess_with_sizes(images)`` method (a detector outside
    ``crp_jax.ssd``, e.g. BlazeFace's letterbox: crp_jax/blazeface/meta.py) does its own.
    """
    if own_pipeline(meta, "preprocess_with_sizes"):
        return meta.preprocess_with_sizes(images)
    if not all(hasattr(meta, k) for k in ("image_size", "mean", "std")):
        raise ConfigError(f"preprocess needs a crp_jax Meta (image_size, mean, std), got {type(meta).__name__}")
    # A Meta is checked when made; this also covers duck-typed meta objects, so that finite
    # pixels can never come out as NaN/Inf (see crp_jax/ssd/meta.py for the ranges).
    mean, std = check_preprocessing(meta.mean, meta.std, meta.image_size)
    size = int(meta.image_size)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    out, sizes = [], []
    for i, raw in enumerate(_as_image_list(images)):
        v = _to_rgb01(raw, i)
        sizes.append((int(v.shape[0]), int(v.shape[1])))
        out.append(resize_bilinear((v - mean) / std, size))
    return jnp.asarray(np.stack(out).astype(np.float32)), sizes


def preprocess(images, meta) -> jax.Array:
    """Images -> model input ``[B, S, S, 3]`` float32; see :func:`preprocess_with_sizes`."""
    return preprocess_with_sizes(images, meta)[0]


# ---- detection ------------------------------------------------------------------------------


def own_pipeline(meta, method: str) -> bool:
    """Whether ``meta`` brings its own pre/post-processing (a detector outside ``crp_jax.ssd``
    whose meta defines ``method``; the SSD :class:`Meta` does not)."""
    return meta is not None and callable(getattr(type(meta), method, None))


@dataclass(eq=False)  # holds arrays: == would be ambiguous, so compare by identity
class Detections:
    """The detections of one image (numpy arrays, N detections, by descending score).

    Attributes:
      boxes: ``[N, 4]`` float32 (x1, y1, x2, y2) in pixels (model input, or original image
        when ``detect`` got ``image_sizes``).
      scores: ``[N]`` float32 softmax probability of ``labels``.
      labels: ``[N]`` int64 class index in 1..K-1 (background is never reported).
      anchors: ``[N]`` int64 index of the default box each detection was decoded from.
      image: index of the image in the batch.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    anchors: np.ndarray
    image: int = 0

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@cached("detect", maxsize=16)
def _raw_fn(model):
    """The jitted ``(variables, x) -> (scores [B, A, K], boxes [B, A, 4] xyxy input pixels,
    input_finite [B], output_finite [B])`` of ``model``: everything that is the same shape for
    every image. ``output_finite`` is whether the raw logits and offsets of an image are all
    finite (one reduction; the slow search for the culprit layer runs only when it is not)."""
    config = model.config
    size = config.image_size
    # Anchors as torchvision decodes them: pixel xyxy in float32, back to (cx, cy, w, h).
    anchors = xyxy_to_cxcywh(default_boxes_xyxy(config))
    num_anchors = anchors.shape[0]

    def raw(variables, x):
        cls_logits, loc = model.apply(variables, x)
        if cls_logits.shape[1] != num_anchors or loc.shape[1] != num_anchors:
            raise ConfigError(
                f"model outputs {cls_logits.shape[1]} / {loc.shape[1]} boxes but its config has "
                f"{num_anchors} default boxes"
            )
        scores = jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)
        boxes = clip_boxes(decode(loc.astype(jnp.float32), jnp.asarray(anchors)), size, size)
        finite = jnp.all(jnp.isfinite(x), axis=(1, 2, 3))
        out_finite = jnp.all(jnp.isfinite(cls_logits), axis=(1, 2)) & jnp.all(jnp.isfinite(loc), axis=(1, 2))
        return scores, boxes, finite, out_finite

    return jax.jit(raw)


def _select_candidates(scores: np.ndarray, score_threshold: float, topk: int):
    """Per class 1..K-1: anchors with score > threshold, the top ``topk`` by score.

    ``scores [A, K]`` -> (anchor indices [M], labels [M], scores [M]), classes in order and
    each class by descending score, as torchvision concatenates them.
    """
    idx_parts, lab_parts = [], []
    for label in range(1, scores.shape[1]):
        s = scores[:, label]
        idx = np.flatnonzero(s > score_threshold)
        idx = idx[np.argsort(-s[idx], kind="stable")[:topk]]
        idx_parts.append(idx)
        lab_parts.append(np.full(idx.shape, label, dtype=np.int64))
    idx = np.concatenate(idx_parts).astype(np.int64)
    labels = np.concatenate(lab_parts)
    return idx, labels, scores[idx, labels]


def nms_candidates(scores, boxes, score_threshold: float, topk_candidates: int):
    """The candidates ``detect`` hands to NMS in one image, before NMS.

    ``scores [A, K]`` softmax and ``boxes [A, 4]`` decoded xyxy (from :func:`anchor_outputs`)
    -> ``(anchors [M], labels [M], scores [M], boxes [M, 4])``: per foreground class the
    anchors scoring above ``score_threshold``, at most ``topk_candidates`` of them, classes
    in order and each by descending score (what ``detect``'s per-class NMS then thins).
    """
    scores, boxes = np.asarray(scores), np.asarray(boxes)
    anchors, labels, cand_scores = _select_candidates(scores, float(score_threshold), int(topk_candidates))
    return anchors, labels, cand_scores, boxes[anchors]


def anchor_outputs(model, variables, x) -> tuple[np.ndarray, np.ndarray]:
    """Every anchor's outputs as ``detect`` reads them, before any selection: ``(scores
    [B, A, K]`` softmax over classes, ``boxes [B, A, 4]`` decoded xyxy in model-input pixels,
    clipped to the input``)`` (numpy). NaN/Inf pixels raise :class:`InputError`; finite
    pixels with non-finite outputs :class:`NumericsError` naming the first such layer."""
    check_image_batch(x, model.config.image_size)
    scores, boxes, finite, out_finite = jax.device_get(_raw_fn(model)(variables, x))
    bad = np.flatnonzero(~np.asarray(finite))
    if bad.size:
        raise InputError(f"image {int(bad[0])} of the batch contains NaN or Inf pixels (images {bad.tolist()})")
    bad = np.flatnonzero(~np.asarray(out_finite))
    if bad.size:
        _raise_nonfinite(model, variables, x, bad)
    return np.asarray(scores), np.asarray(boxes)


def _postprocess_image(scores, boxes, image, settings, out_size, model_size) -> Detections:
    score_threshold, nms_threshold, max_detections, topk = settings
    anchors, labels, cand_scores = _select_candidates(scores, score_threshold, topk)
    cand_boxes = boxes[anchors]
    keep = batched_nms(cand_boxes, cand_scores, labels, nms_threshold)[:max_detections]
    det_boxes = cand_boxes[keep].astype(np.float32)
    if out_size is not None:
        # torchvision's resize_boxes: float32 ratios original / model input.
        rh = np.float32(out_size[0]) / np.float32(model_size)
        rw = np.float32(out_size[1]) / np.float32(model_size)
        det_boxes = det_boxes * np.array([rw, rh, rw, rh], dtype=np.float32)
    return Detections(
        boxes=det_boxes,
        scores=cand_scores[keep].astype(np.float32),
        labels=labels[keep],
        anchors=anchors[keep],
        image=image,
    )


def _check_settings(score_threshold, nms_threshold, max_detections, topk_candidates):
    for name, v in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v!r}")
    for name, v, lo in (("max_detections", max_detections, 0), ("topk_candidates", topk_candidates, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")
    return float(score_threshold), float(nms_threshold), int(max_detections), int(topk_candidates)


def _check_image_sizes(image_sizes, batch: int):
    if image_sizes is None:
        return [None] * batch
    sizes = list(image_sizes)
    if len(sizes) != batch:
        raise InputError(f"image_sizes has {len(sizes)} entries for a batch of {batch} images")
    out = []
    for i, hw in enumerate(sizes):
        try:
            h, w = (int(v) for v in hw)
        except (TypeError, ValueError):
            raise InputError(f"image_sizes[{i}] must be a (height, width) pair, got {hw!r}") from None
        if h <= 0 or w <= 0:
            raise InputError(f"image_sizes[{i}] must be positive, got {hw!r}")
        out.append((h, w))
    return out


def _raise_nonfinite(model, variables, x, bad: np.ndarray):
    """The model's outputs for images ``bad`` hold NaN/Inf from finite pixels: raise
    :class:`NumericsError` naming the first layer whose output is not finite (searched on
    the first such image alone: SSD treats the images of a batch independently)."""
    i = int(bad[0])
    where = f"image {i} of the batch" + (f" (and images {bad[1:].tolist()})" if bad.size > 1 else "")
    check_finite_forward(model.apply, variables, x[i : i + 1], where=where)
    raise NumericsError(  # the search found every layer finite on its own: say what we know
        f"{where}: the model's outputs hold NaN/Inf for finite pixels (no single layer could be blamed)"
    )


def postprocess_settings(
    meta=None,
    *,
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
    max_detections: int | None = None,
    topk_candidates: int | None = None,
) -> tuple[float, float, int, int]:
    """``(score_threshold, nms_threshold, max_detections, topk_candidates)`` that
    :func:`detect` uses: each given value (checked, :class:`ConfigError` naming it), else
    ``meta.postprocess``'s, else SSD300's."""
    pp = getattr(meta, "postprocess", None)
    pp = pp if isinstance(pp, Postprocess) else SSD300_POSTPROCESS
    return _check_settings(
        pp.score_threshold if score_threshold is None else score_threshold,
        pp.nms_threshold if nms_threshold is None else nms_threshold,
        pp.max_detections if max_detections is None else max_detections,
        pp.topk_candidates if topk_candidates is None else topk_candidates,
    )


def detect(
    model,
    variables,
    x,
    meta=None,
    *,
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
    max_detections: int | None = None,
    topk_candidates: int | None = None,
    image_sizes=None,
) -> list[Detections]:
    """Detect objects: ``x [B, S, S, 3]`` preprocessed -> one :class:`Detections` per image.

    Exactly torchvision's ``SSD.postprocess_detections``: softmax
    over classes; decode the offsets against the default boxes and clip to the input; per
    foreground class keep scores > ``score_threshold``, at most ``topk_candidates`` of them;
    per-class NMS at ``nms_threshold``; the ``max_detections`` best. Every detection keeps
    the index of its default box.

    Raises :class:`InputError` for NaN/Inf pixels and :class:`NumericsError` (naming the
    first layer whose output is not finite) when finite pixels give NaN/Inf logits or
    offsets, e.g. with weights that overflow float32, rather than report "no detections".

    Args:
      model: an ``SSD`` (anything with ``.config`` and ``.apply(variables, x)``).
      variables: the model's variables.
      x: preprocessed batch (see :func:`preprocess`).
      meta: optional :class:`Meta`; checked to describe ``model``.
      score_threshold, nms_threshold, max_detections, topk_candidates: None (default):
        ``meta.postprocess``, the settings of the weights' source (a converted SSDlite:
        torchvision's 0.001, 0.55, 300, 300); without ``meta``, SSD300's 0.01, 0.45, 200, 400.
      image_sizes: optional ``(H, W)`` per image (from :func:`preprocess_with_sizes`):
        boxes are rescaled from the model input to those pixels, as torchvision's
        ``transform.postprocess`` does.

    A meta with its own ``detect`` method (BlazeFace: crp_jax/blazeface/meta.py) runs its own
    post-processing on the same arguments (None: that detector's defaults).
    """
    settings = {
        "score_threshold": score_threshold,
        "nms_threshold": nms_threshold,
        "max_detections": max_detections,
        "topk_candidates": topk_candidates,
    }
    if own_pipeline(meta, "detect"):
        return meta.detect(model, variables, x, image_sizes=image_sizes, **settings)
    config = model.config
    if meta is not None and meta.config != config:
        raise ConfigError(
            f"meta describes a different architecture than the model (meta: {meta.config}, model: {config})"
        )
    settings = postprocess_settings(meta, **settings)
    check_image_batch(x, config.image_size)
    out_sizes = _check_image_sizes(image_sizes, x.shape[0])
    scores, boxes = anchor_outputs(model, variables, x)
    return [
        _postprocess_image(scores[i], boxes[i], i, settings, out_sizes[i], config.image_size)
        for i in range(scores.shape[0])
    ]
