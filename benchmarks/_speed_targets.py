"""The targets ``benchmarks/speed.py`` explains: the target sets (:data:`TARGET_SETS`, uniform,
first-source, detection-like, BlazeFace faces) and their cotangents for the paths that do
not go through ``explain`` (the floor, the naive loop, torch)."""

from __future__ import annotations

import numpy as np

import crp_jax as cj
from crp_jax.relevance.targets import COORDS, ClassTarget, LocTarget, encode_targets


def make_targets(cfg, num_images: int, T: int, seed: int = 0) -> list:
    """``T`` class targets, round-robin over the images, anchors drawn over all sources,
    classes cycling through the foreground classes. ``contrast=None``: the method's default
    (crp: all other classes; LRP/gradient: one-hot)."""
    rng = np.random.default_rng(seed)
    A, K = cfg.num_anchors(), cfg.num_classes
    anchors = rng.choice(A, size=T, replace=T > A)
    return [ClassTarget(t % num_images, int(anchors[t]), 1 + t % (K - 1)) for t in range(T)]


def first_source_targets(cfg, num_images: int, T: int, seed: int = 0) -> list:
    """``T`` class targets at anchors of the first source (SSD300: conv4_3, 38x38x4 = 5776
    anchors), drawn uniformly, round-robin over the images."""
    rng = np.random.default_rng(seed)
    f, a = cfg.feature_sizes()[0], cfg.anchors_per_cell[0]
    anchors = rng.choice(f * f * a, size=T, replace=T > f * f * a)
    return [ClassTarget(t % num_images, int(anchors[t]), 1 + t % (cfg.num_classes - 1)) for t in range(T)]


# COCO's object sizes (the data torchvision's SSD300 is trained on): the share of objects by
# area, small < 32^2 <= medium < 96^2 <= large, in images of about 640 x 480 (Lin et al.,
# "Microsoft COCO", 2014: 41% / 34% / 24%). SSD resizes to 300 x 300, about 0.54x per side.
COCO_SIZE_CLASSES = ((0.41, 8.0, 32.0), (0.34, 32.0, 96.0), (0.24, 96.0, 640.0))  # (share, min side, max side)
COCO_TO_300 = 0.54


def detection_like_targets(cfg, num_images: int, T: int, seed: int = 0, sizes: str = "coco") -> list:
    """``T`` class targets drawn like real detections: one object per target, the target
    being the default box with the highest IoU with it (the anchor that detects it).
    Object sides: ``sizes="coco"``, COCO's size classes (:data:`COCO_SIZE_CLASSES`) scaled
    to the input, log-uniform within each class; ``"loguniform"``, log-uniform between
    0.07 and 1.0 of the image (the range of SSD300's default-box scales). Aspect ratio from
    {1/2, 1, 2}, centre uniform inside the image."""
    rng = np.random.default_rng(seed)
    S = cfg.image_size
    boxes = cj.default_boxes_xyxy(cfg)
    shares = np.array([c[0] for c in COCO_SIZE_CLASSES])
    out = []
    for t in range(T):
        if sizes == "coco":
            _, lo, hi = COCO_SIZE_CLASSES[rng.choice(len(shares), p=shares / shares.sum())]
            side = min(S, COCO_TO_300 * S / 300 * np.exp(rng.uniform(np.log(lo), np.log(hi))))
        else:
            side = S * np.exp(rng.uniform(np.log(0.07), 0.0))
        r = rng.choice([0.5, 1.0, 2.0])
        w, h = min(S, side * np.sqrt(r)), min(S, side / np.sqrt(r))
        cx, cy = rng.uniform(w / 2, S - w / 2), rng.uniform(h / 2, S - h / 2)
        obj = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        lt = np.maximum(boxes[:, :2], obj[:2])
        rb = np.minimum(boxes[:, 2:], obj[2:])
        inter = np.clip(rb - lt, 0, None).prod(1)
        union = (boxes[:, 2:] - boxes[:, :2]).prod(1) + w * h - inter
        out.append(ClassTarget(t % num_images, int(np.argmax(inter / union)), 1 + t % (cfg.num_classes - 1)))
    return out


def face_targets(cfg, num_images: int, T: int, seed: int = 0, first: bool = False) -> list:
    """BlazeFace (``_common.BlazeFaceDims``): ``T`` targets at anchors drawn uniformly (of the
    first source, 16x16 cells x 2 at 128 px, with ``first``), round-robin over the images,
    cycling through the face logit and the 16 regressors (+1)."""
    rng = np.random.default_rng(seed)
    n = cfg.feature_sizes()[0] ** 2 * cfg.anchors_per_cell[0] if first else cfg.num_anchors()
    anchors = rng.choice(n, size=T, replace=T > n)
    kinds = ("cls", *cfg.regressor_names)
    return [
        ClassTarget(t % num_images, int(a), 0) if k == "cls" else LocTarget(t % num_images, int(a), k, 1)
        for t, (a, k) in enumerate(zip(anchors, [kinds[t % len(kinds)] for t in range(T)]))
    ]


TARGET_SETS = {
    "uniform": make_targets,
    "first": first_source_targets,
    "faces": face_targets,
    "faces_first": lambda cfg, B, T, seed=0: face_targets(cfg, B, T, seed, first=True),
    "coco": detection_like_targets,
    "loguniform": lambda cfg, B, T, seed=0: detection_like_targets(cfg, B, T, seed, sizes="loguniform"),
}


def source_histogram(cfg, targets) -> list[int]:
    """How many of ``targets`` fall on each source."""
    edges = np.cumsum([0] + [f * f * a for f, a in zip(cfg.feature_sizes(), cfg.anchors_per_cell)])
    return np.bincount(
        np.searchsorted(edges, [t.anchor for t in targets], side="right") - 1, minlength=len(edges) - 1
    ).tolist()


def encoded(cfg, targets, num_images: int):
    """Cotangents for the non-explain paths: crp's initial relevance (contrast vs all
    other classes), so every path propagates the same vectors."""
    regressors = getattr(cfg, "regressor_names", COORDS)  # BlazeFace: 16
    return encode_targets(targets, num_images, cfg.num_anchors(), cfg.num_classes, "others", regressors)
