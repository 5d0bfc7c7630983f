"""Scenes, matched detections and the batched model probe of the quality benchmark
(:mod:`crp_jax.eval.quality`), with the settings the other parts share.

:func:`collect_cases` generates held-out scenes, runs the detector and keeps the detections
that match a ground-truth object of their label (VOC rule, :func:`crp_jax.eval.voc.
match_to_ground_truth`); each :class:`Case` carries its object and discriminative-part masks
at the model input resolution. :class:`Probe` queues perturbed images and runs them through
one jitted ``apply`` in fixed batches of ``PROBE_BATCH`` (one compilation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import crp_jax as cj
from crp_jax import metrics as M
from crp_jax.data import CLASS_NAMES, SceneSpec, generate_scene, partner_label
from crp_jax.errors import ConfigError
from crp_jax.eval.voc import match_to_ground_truth
from crp_jax.relevance.composite import PRESETS
from crp_jax.ssd.anchors import default_boxes_xyxy
from crp_jax.ssd.boxes import box_iou

DEFAULT_METHODS = PRESETS


METHOD_LABELS = {
    "crp": "crp",
    "crp_pair": "crp (pair)",
    "lrp_ab": "lrp_ab",
    "lrp_eps": "lrp_eps",
    "gradient": "gradient",
    "gradient_x_input": "gradient_x_input",
}


CHUNK = 8  # targets per vmapped backward (explain's chunk_size)


PROBE_BATCH = 64  # images per jitted apply of the perturbation probe


DETECT_BATCH = 20  # scenes per detect call (the last batch is padded: one compile)


FLOW_METHODS = ("crp", "lrp_ab")  # explained with relevance_flow (per-layer relevance flow)


@dataclass
class Case:
    """One matched detection, everything at the model input resolution."""

    image: int  # index into the batch of images that have cases
    scene: int  # scene index in the held-out data set
    anchor: int
    label: int
    partner: int
    score: float
    det_box: np.ndarray  # xyxy input pixels
    gt_box: np.ndarray
    obj_mask: np.ndarray  # bool [S, S]
    part_mask: np.ndarray
    source: int = 0  # which source feature map holds the anchor
    values: dict = field(default_factory=dict)  # metric name -> per row -> float


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool mask -> ``size x size``: pixels at least half covered (area average)."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    im = Image.fromarray(mask.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BOX)
    return np.asarray(im) >= 0.5


def _source_of(config, anchor: int) -> int:
    counts = [f * f * a for f, a in zip(config.feature_sizes(), config.anchors_per_cell)]
    return int(np.searchsorted(np.cumsum(counts), anchor, side="right"))


def collect_cases(
    model,
    variables,
    meta,
    n: int,
    seed: int,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    detector: str = "model",
    spec: SceneSpec | None = None,
):
    """Generate scenes ``0 .. n-1`` of data set ``seed``, detect, match.

    ``detector="oracle"`` skips the detector: each ground-truth object is explained at the
    default box that overlaps it most, labelled with its true class (for untrained models and
    tests; never used for reported numbers).

    Returns ``(x [I, S, S, 3] model inputs of the images with cases, display images uint8
    [I, S, S, 3], cases, stats)``.
    """
    spec = spec or SceneSpec()
    cfg = model.config
    S = cfg.image_size
    if tuple(meta.class_names) != tuple(CLASS_NAMES):
        raise ConfigError(f"the weights' classes {meta.class_names} are not the glyph classes {CLASS_NAMES}")
    anchors_xyxy = default_boxes_xyxy(cfg)
    xs, shown, cases = [], [], []
    stats = {
        "scenes": n,
        "objects": 0,
        "detections": 0,
        "matched": 0,
        "unmatched": 0,
        "empty_part": 0,
        "per_class": {name: 0 for name in CLASS_NAMES[1:]},
    }
    for start in range(0, n, DETECT_BATCH):
        scenes = [generate_scene(int(seed), i, spec) for i in range(start, min(n, start + DETECT_BATCH))]
        imgs = np.stack([s.image for s in scenes])
        pad = DETECT_BATCH - len(scenes) if n > DETECT_BATCH else 0
        batch = np.concatenate([imgs, np.repeat(imgs[-1:], pad, 0)]) if pad else imgs
        x = np.asarray(cj.preprocess(batch, meta))
        if detector == "model":
            dets = cj.detect(model, variables, x, meta, score_threshold=score_threshold)[: len(scenes)]
        elif detector != "oracle":
            raise ConfigError(f"detector must be 'model' or 'oracle', got {detector!r}")
        for j, sc in enumerate(scenes):
            scale = S / sc.image.shape[0]
            gt_boxes = sc.boxes.astype(np.float64) * scale
            stats["objects"] += sc.num_objects
            found = []
            if detector == "oracle":
                # empty boxes give 0/0 in box_iou (torchvision's convention): no overlap
                iou = np.nan_to_num(np.asarray(box_iou(gt_boxes, anchors_xyxy.astype(np.float64)), np.float64))
                for g in range(sc.num_objects):
                    found.append((int(np.argmax(iou[g])), int(sc.labels[g]), 1.0, gt_boxes[g], g))
            else:
                d = dets[j]
                stats["detections"] += len(d)
                matched = match_to_ground_truth(
                    d.boxes, d.scores, gt_boxes, iou_threshold, det_labels=d.labels, gt_labels=sc.labels
                )
                stats["unmatched"] += int(np.sum(matched < 0))
                for k in np.argsort(-np.asarray(d.scores), kind="stable"):  # the old visiting order
                    g = int(matched[k])
                    if g >= 0:
                        found.append(
                            (int(d.anchors[k]), int(d.labels[k]), float(d.scores[k]), d.boxes[k].astype(np.float64), g)
                        )
            if not found:
                continue
            img_idx = len(xs)
            xs.append(x[j])
            shown.append(
                np.asarray(Image.fromarray(sc.image).resize((S, S), Image.Resampling.BILINEAR))
                if sc.image.shape[0] != S
                else sc.image
            )
            for anchor, label, score, box, g in found:
                part = _resize_mask(sc.part_masks[g], S)
                if not part.any():
                    stats["empty_part"] += 1
                cases.append(
                    Case(
                        image=img_idx,
                        scene=start + j,
                        anchor=anchor,
                        label=label,
                        partner=partner_label(label),
                        score=score,
                        det_box=np.asarray(box, np.float64),
                        gt_box=gt_boxes[g],
                        obj_mask=_resize_mask(sc.masks[g], S),
                        part_mask=part,
                        source=_source_of(cfg, anchor),
                    )
                )
                stats["matched"] += 1
                stats["per_class"][CLASS_NAMES[label]] += 1
    x_all = np.stack(xs) if xs else np.zeros((0, S, S, 3), np.float32)
    shown_all = np.stack(shown) if shown else np.zeros((0, S, S, 3), np.uint8)
    return x_all, shown_all, cases, stats


class Probe:
    """Queue ``(image, anchor)`` pairs; run them through one jitted apply in fixed batches.

    Results (the anchor's K logits and 4 offsets) are kept, images are not: memory stays at
    one batch.
    """

    def __init__(self, model, variables, batch: int = PROBE_BATCH):
        self.variables = variables
        self.batch = batch
        self._imgs: list[np.ndarray] = []
        self._anchors: list[int] = []
        self._logits: list[np.ndarray] = []
        self._loc: list[np.ndarray] = []
        self.n = 0
        self.calls = 0

        def fn(variables, x, a):
            cls, loc = model.apply(variables, x)
            r = jnp.arange(x.shape[0])
            return cls[r, a], loc[r, a]

        self._fn = jax.jit(fn)

    def add(self, image: np.ndarray, anchor: int) -> int:
        self._imgs.append(np.asarray(image, np.float32))
        self._anchors.append(int(anchor))
        self.n += 1
        if len(self._imgs) == self.batch:
            self._run()
        return self.n - 1

    def _run(self) -> None:
        k = len(self._imgs)
        if k == 0:
            return
        pad = self.batch - k
        x = np.stack(self._imgs + [self._imgs[-1]] * pad)
        a = np.asarray(self._anchors + [self._anchors[-1]] * pad, np.int32)
        cls, loc = jax.device_get(self._fn(self.variables, x, a))
        self._logits.append(np.asarray(cls[:k], np.float64))
        self._loc.append(np.asarray(loc[:k], np.float64))
        self._imgs, self._anchors = [], []
        self.calls += 1

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        self._run()
        if not self._logits:
            return np.zeros((0, 0)), np.zeros((0, 4))
        return np.concatenate(self._logits), np.concatenate(self._loc)


def logit_margin(logits: np.ndarray, cls: int) -> np.ndarray:
    """``logit[cls] - max_{k != cls} logit[k]`` along the last axis."""
    others = np.delete(logits, cls, axis=-1)
    return logits[..., cls] - others.max(-1)


def queue_region_perturbation(
    region_kwargs: dict, image: np.ndarray, heat: np.ndarray, probe: Probe, anchor: int
) -> list[int]:
    """Run ``metrics.region_perturbation`` with a score function that only queues the
    perturbed images in ``probe``; returns their probe indices (the curve is scored later)."""
    got: list[int] = []

    def score_fn(batch):
        for im in batch:
            got.append(probe.add(im, anchor))
        return np.zeros(len(batch))

    M.region_perturbation(score_fn, image, heat, batch_size=region_kwargs["steps"] + 1, **region_kwargs)
    return got
