"""``diagnose``: a detector's errors against ground truth, each with the questions that explain it.

Detection metrics say how many objects were missed; they do not say why. ``diagnose`` turns
ground truth and a detector's outputs into typed cases, each carrying the contrastive
targets (``crp_jax.relevance``) whose heatmaps answer "why":

============== ======================================== =====================================
case            when (per image, boxes in model-input    questions (targets)
                pixels, IoU threshold ``iou``)
============== ======================================== =====================================
Correct         a detection matched to a ground truth    "why <class>" (ClassTarget, CRP's
                of its class (VOC matching)              default contrast)
Missed          a ground truth no detection matched and  "why not <true>": the true class
                no wrong label covers                    against the class that won at the
                                                         anchor that should have fired
                                                         (background included); "what is
                                                         missing": the evidence for the true
                                                         class there (one-hot); when NMS
                                                         removed its box: "why that box and
                                                         not this one" (anchor contrast)
FalseAlarm      a detection that overlaps no ground      "why <class> and not background"
                truth by ``iou``
WrongLabel      a detection that overlaps a ground       "why <predicted> and not <true>"
                truth of another class by ``iou``
Duplicate       a second box on an object already        "why this box and not that one"
                found: a detection that survived NMS,    (anchor contrast), with the IoU and
                or (``suppressed``) a candidate NMS      score margins
                removed although it fits the object
                clearly better than the box that was
                kept (IoU margin >= 0.1)
============== ======================================== =====================================

Matching is the VOC matching of ``crp-jax evaluate`` (:func:`crp_jax.eval.voc.match_to_ground_truth`:
by descending score, each detection takes the free ground truth of its label it overlaps most),
so a correct detection here is a true positive there. Detections are ``crp_jax.detect``'s with
``score_threshold`` (default 0.5: the boxes a person would be shown; ``crp-jax evaluate`` ranks
everything above 0.01 for AP); NMS candidates are the same anchors before NMS
(:func:`crp_jax.ssd.detect.nms_candidates`).

"The anchor that should have fired" for a missed object: the anchor whose *decoded* box overlaps
it most (``anchor``; what the detector would have reported), and beside it the default box that
matches it best (``default_anchor``; the one training assigned it to), with their IoUs and the
anchor's class scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from crp_jax.errors import ConfigError, InputError
from crp_jax.eval.voc import match_to_ground_truth
from crp_jax.relevance.pairs import AnchorContrastTarget
from crp_jax.relevance.targets import ClassTarget
from crp_jax.ssd.anchors import default_boxes_xyxy
from crp_jax.ssd.boxes import batched_nms, box_iou
from crp_jax.ssd.detect import anchor_outputs, nms_candidates, own_pipeline, postprocess_settings

__all__ = [
    "ERROR_KINDS",
    "Correct",
    "Missed",
    "FalseAlarm",
    "WrongLabel",
    "Duplicate",
    "Suppression",
    "ImageDiagnosis",
    "diagnose",
    "diagnose_outputs",
]

#: The error kinds, as reports name them (``data-error="..."``).
ERROR_KINDS = ("missed", "false_alarm", "wrong_label", "duplicate")

#: A box NMS removed is reported as a duplicate that fit better when its IoU with the object
#: exceeds the kept box's by this much: NMS keeps the highest score, not the best fit, so a
#: removed box that fits a little better is the rule rather than an error (on the shipped
#: model about every second object has one).
DUPLICATE_IOU_MARGIN = 0.1

Box = tuple[float, float, float, float]


def _box(b) -> Box:
    return tuple(float(v) for v in np.asarray(b, np.float64).reshape(4))


@dataclass(frozen=True)
class Correct:
    """Detection ``detection`` (index into the image's detections) matched ground truth ``gt``."""

    kind = "correct"
    image: int
    detection: int
    gt: int
    label: int
    anchor: int
    box: Box
    score: float
    iou: float

    def targets(self) -> dict[str, ClassTarget]:
        return {"why": ClassTarget(self.image, self.anchor, self.label)}


@dataclass(frozen=True)
class Suppression:
    """A box removed by NMS: the candidate at ``anchor`` (score ``score``, IoU ``gt_iou`` with
    the object) lost to the kept detection at ``by_anchor`` (score ``by_score``); ``iou`` is
    the two boxes' IoU (above the NMS threshold)."""

    anchor: int
    box: Box
    score: float
    gt_iou: float
    by_detection: int
    by_anchor: int
    by_box: Box
    by_score: float
    iou: float

    @property
    def score_margin(self) -> float:
        """Kept score minus removed score (>= 0: NMS keeps the higher score)."""
        return self.by_score - self.score


@dataclass(frozen=True)
class Missed:
    """Ground truth ``gt`` (class ``label``, ``box``) that no detection found.

    ``anchor``: the anchor whose decoded box (``anchor_box``) overlaps it most (IoU
    ``anchor_iou``); ``scores``: that anchor's softmax ``[K]``; ``winner``: its top class
    (0 = background). ``default_anchor`` / ``default_iou``: the default box matching it best.
    ``suppressed``: when a candidate of its class that fits it (IoU >= ``iou``) was removed by
    NMS, the best fitting one.
    """

    kind = "missed"
    image: int
    gt: int
    label: int
    box: Box
    anchor: int
    anchor_box: Box
    anchor_iou: float
    scores: tuple[float, ...]
    winner: int
    default_anchor: int
    default_iou: float
    suppressed: Suppression | None = None

    @property
    def score(self) -> float:
        """The true class's score at ``anchor``."""
        return self.scores[self.label]

    def targets(self) -> dict[str, ClassTarget | AnchorContrastTarget]:
        """``why_not``: true class against the winner at ``anchor`` (against every other class
        when the true class itself won there, its score being below the threshold);
        ``missing``: the true class's own evidence (one-hot); ``suppressed``: why the kept
        neighbour's box and not this object's."""
        contrast = "others" if self.winner == self.label else (self.winner,)
        out: dict = {
            "why_not": ClassTarget(self.image, self.anchor, self.label, contrast),
            "missing": ClassTarget(self.image, self.anchor, self.label, "none"),
        }
        if self.suppressed is not None:
            s = self.suppressed
            out["suppressed"] = AnchorContrastTarget(self.image, s.by_anchor, s.anchor, cls=self.label)
        return out


@dataclass(frozen=True)
class FalseAlarm:
    """Detection ``detection`` overlaps no ground truth by the IoU threshold (best IoU:
    ``best_iou`` with ground truth ``best_gt``, -1 when the image has none)."""

    kind = "false_alarm"
    image: int
    detection: int
    label: int
    anchor: int
    box: Box
    score: float
    best_gt: int
    best_iou: float

    def targets(self) -> dict[str, ClassTarget]:
        return {"why": ClassTarget(self.image, self.anchor, self.label, (0,))}


@dataclass(frozen=True)
class WrongLabel:
    """Detection ``detection`` (class ``label``) lies on ground truth ``gt`` of class
    ``true_label`` (IoU ``iou``)."""

    kind = "wrong_label"
    image: int
    detection: int
    label: int
    true_label: int
    gt: int
    anchor: int
    box: Box
    score: float
    iou: float

    def targets(self) -> dict[str, ClassTarget]:
        return {"why": ClassTarget(self.image, self.anchor, self.label, (self.true_label,))}


@dataclass(frozen=True)
class Duplicate:
    """A second box of class ``label`` on ground truth ``gt``, found already by detection
    ``kept`` (anchor ``kept_anchor``). ``suppressed=False``: detection ``detection`` survived
    NMS (the VOC matching counts it a false positive); ``suppressed=True``: the candidate at
    ``anchor`` was removed by NMS (``detection`` is -1) although it fits the object clearly
    better (``gt_iou >= kept_gt_iou +`` :data:`DUPLICATE_IOU_MARGIN`). ``iou``: the two boxes' IoU."""

    kind = "duplicate"
    image: int
    gt: int
    label: int
    detection: int
    anchor: int
    box: Box
    score: float
    gt_iou: float
    kept: int
    kept_anchor: int
    kept_box: Box
    kept_score: float
    kept_gt_iou: float
    iou: float
    suppressed: bool

    @property
    def score_margin(self) -> float:
        return self.kept_score - self.score

    @property
    def iou_margin(self) -> float:
        """How much better the kept box fits the object (negative: the removed one fit better)."""
        return self.kept_gt_iou - self.gt_iou

    def targets(self) -> dict[str, AnchorContrastTarget]:
        """``why``: the kept box against this one ("why that box and not this one")."""
        return {"why": AnchorContrastTarget(self.image, self.kept_anchor, self.anchor, cls=self.label)}


Case = Correct | Missed | FalseAlarm | WrongLabel | Duplicate


@dataclass(frozen=True)
class ImageDiagnosis:
    """The cases of one image. ``annotated=False``: the image had no ground truth given (not
    "no objects"): its detections are listed as ``unannotated`` and no error is claimed."""

    image: int
    annotated: bool
    correct: tuple[Correct, ...] = ()
    missed: tuple[Missed, ...] = ()
    false_alarms: tuple[FalseAlarm, ...] = ()
    wrong_labels: tuple[WrongLabel, ...] = ()
    duplicates: tuple[Duplicate, ...] = ()
    unannotated: tuple[int, ...] = field(default=())

    @property
    def errors(self) -> tuple:
        """Every error case, in :data:`ERROR_KINDS` order."""
        return (*self.missed, *self.false_alarms, *self.wrong_labels, *self.duplicates)

    def counts(self) -> dict[str, int]:
        """Cases per error kind (:data:`ERROR_KINDS`)."""
        return {k: sum(c.kind == k for c in self.errors) for k in ERROR_KINDS}


def diagnose(
    model,
    variables,
    x,
    gt_boxes: Sequence,
    gt_labels: Sequence,
    meta=None,
    *,
    iou: float = 0.5,
    score_threshold: float = 0.5,
    max_detections: int | None = None,
) -> list[ImageDiagnosis]:
    """Errors of ``model`` on images ``x`` against their ground truth, with explaining targets.

    Args:
      model, variables: an SSD-style detector (``crp_jax.detect`` post-processing).
      x: preprocessed images ``[B, S, S, 3]``.
      gt_boxes: per image ``[G, 4]`` xyxy in model-input pixels (0..S), or None for an image
        without annotations (reported as such, never as "no objects").
      gt_labels: per image ``[G]`` class indices 1..K-1 (None where ``gt_boxes`` is).
      meta: the weights' meta (NMS settings, classes).
      iou: IoU threshold of a match (VOC: 0.5).
      score_threshold: a detection is a box with score above this (default 0.5).
      max_detections: at most this many per image (default: the meta's, as ``detect``).

    Returns:
      one :class:`ImageDiagnosis` per image.

    Raises:
      InputError: ground truth that does not fit the images (named image, index, value).
      ConfigError: thresholds out of range; a meta with its own post-processing (BlazeFace).
    """
    if own_pipeline(meta, "detect"):
        raise ConfigError("diagnose supports SSD-style detectors (crp_jax.detect's post-processing) only")
    if meta is not None and getattr(meta, "config", None) != model.config:
        raise ConfigError(f"meta describes a different architecture than the model (meta: {meta.config})")
    settings = postprocess_settings(meta, score_threshold=score_threshold, max_detections=max_detections)
    scores, boxes = anchor_outputs(model, variables, x)
    return diagnose_outputs(scores, boxes, gt_boxes, gt_labels, model.config, settings, iou=iou)


def diagnose_outputs(scores, boxes, gt_boxes, gt_labels, config, settings, *, iou: float = 0.5) -> list:
    """:func:`diagnose` from every anchor's outputs (``crp_jax.ssd.detect.anchor_outputs``:
    ``scores [B, A, K]``, ``boxes [B, A, 4]``) and ``settings`` =
    ``(score_threshold, nms_threshold, max_detections, topk_candidates)``."""
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0.0 < iou <= 1.0:
        raise ConfigError(f"iou must be a number in (0, 1], got {iou!r}")
    if not 0.0 <= settings[0] < 1.0:
        raise ConfigError(f"score_threshold must be in [0, 1), got {settings[0]!r}")
    B, _, K = scores.shape
    gts = _check_ground_truth(gt_boxes, gt_labels, B, K, config.image_size)
    defaults = np.asarray(default_boxes_xyxy(config), np.float64)
    return [_one_image(b, scores[b], boxes[b], gts[b], defaults, settings, float(iou)) for b in range(B)]


# ---- internals ---------------------------------------------------------------------------


def _iou(a, b) -> np.ndarray:
    """``[N, M]`` IoU (the detector's :func:`box_iou`), two empty boxes counted as 0."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return np.nan_to_num(np.asarray(box_iou(a, b), np.float64))


def _one_image(b, scores, boxes, gt, defaults, settings, iou) -> ImageDiagnosis:
    score_thr, nms_thr, max_det, topk = settings
    c_anchor, c_label, c_score, c_box = nms_candidates(scores, boxes, score_thr, topk)
    keep = batched_nms(c_box, c_score, c_label, nms_thr)[:max_det]
    d_anchor, d_label, d_score = c_anchor[keep], c_label[keep], c_score[keep]
    d_box = np.asarray(c_box[keep], np.float64)
    if gt is None:
        return ImageDiagnosis(b, False, unannotated=tuple(range(len(keep))))
    g_box, g_label = gt
    matched = match_to_ground_truth(d_box, d_score, g_box, iou, det_labels=d_label, gt_labels=g_label)
    iou_dg = _iou(d_box, g_box)  # [D, G]
    correct, false_alarms, wrong, dups = [], [], [], []
    covered = np.zeros(len(g_label), bool)  # found, or lying under a wrong label
    kept_for = {}  # gt -> detection that found it
    for d in np.flatnonzero(matched >= 0):
        g = int(matched[d])
        covered[g] = True
        kept_for[g] = int(d)
        correct.append(
            Correct(
                b,
                int(d),
                g,
                int(d_label[d]),
                int(d_anchor[d]),
                _box(d_box[d]),
                float(d_score[d]),
                float(iou_dg[d, g]),
            )  # fmt: skip
        )
    for d in np.argsort(-d_score, kind="stable"):
        if matched[d] >= 0:
            continue
        same = np.where(g_label == d_label[d], iou_dg[d], -1.0) if len(g_label) else np.zeros(0)
        other = np.where(g_label != d_label[d], iou_dg[d], -1.0) if len(g_label) else np.zeros(0)
        if len(same) and same.max() >= iou and int(np.argmax(same)) in kept_for:
            g = int(np.argmax(same))
            k = kept_for[g]
            dups.append(
                Duplicate(
                    b,
                    g,
                    int(d_label[d]),
                    int(d),
                    int(d_anchor[d]),
                    _box(d_box[d]),
                    float(d_score[d]),
                    float(iou_dg[d, g]),
                    k,
                    int(d_anchor[k]),
                    _box(d_box[k]),
                    float(d_score[k]),
                    float(iou_dg[k, g]),
                    float(_iou(d_box[d], d_box[k])[0, 0]),
                    False,
                )  # fmt: skip
            )
        elif len(other) and other.max() >= iou:
            g = int(np.argmax(other))
            covered[g] = True
            wrong.append(
                WrongLabel(
                    b,
                    int(d),
                    int(d_label[d]),
                    int(g_label[g]),
                    g,
                    int(d_anchor[d]),
                    _box(d_box[d]),
                    float(d_score[d]),
                    float(iou_dg[d, g]),
                )  # fmt: skip
            )
        else:
            best = int(np.argmax(iou_dg[d])) if len(g_label) else -1
            false_alarms.append(
                FalseAlarm(
                    b,
                    int(d),
                    int(d_label[d]),
                    int(d_anchor[d]),
                    _box(d_box[d]),
                    float(d_score[d]),
                    best,
                    float(iou_dg[d, best]) if best >= 0 else 0.0,
                )  # fmt: skip
            )
    # NMS: every removed candidate lost to the first kept box (by descending score) of its class
    # that overlaps it by more than the NMS threshold (greedy NMS's own rule)
    removed = np.setdiff1d(np.arange(len(c_anchor)), keep)
    iou_cd = _iou(c_box[removed], d_box)  # [removed, D]
    order = np.argsort(-d_score, kind="stable")
    by = np.full(len(removed), -1)
    for i, c in enumerate(removed):
        for d in order:
            if d_label[d] == c_label[c] and d_score[d] >= c_score[c] and iou_cd[i, d] > nms_thr:
                by[i] = d
                break
    iou_cg = _iou(c_box[removed], g_box)  # [removed, G]
    for g, k in kept_for.items():  # a better fitting box of this object removed by NMS
        cand = [i for i in range(len(removed)) if by[i] == k and c_label[removed[i]] == g_label[g]]
        if not cand:
            continue
        i = max(cand, key=lambda j: iou_cg[j, g])
        c = removed[i]
        if iou_cg[i, g] >= iou_dg[k, g] + DUPLICATE_IOU_MARGIN and iou_cg[i, g] >= iou:
            dups.append(
                Duplicate(
                    b,
                    g,
                    int(c_label[c]),
                    -1,
                    int(c_anchor[c]),
                    _box(c_box[c]),
                    float(c_score[c]),
                    float(iou_cg[i, g]),
                    k,
                    int(d_anchor[k]),
                    _box(d_box[k]),
                    float(d_score[k]),
                    float(iou_dg[k, g]),
                    float(iou_cd[i, k]),
                    True,
                )  # fmt: skip
            )
    missed = []
    iou_ag = _iou(boxes, g_box)  # [A, G] decoded boxes
    iou_default = _iou(defaults, g_box)  # [A, G]
    for g in np.flatnonzero(~covered):
        a = int(np.argmax(iou_ag[:, g]))
        s = None
        fits = [i for i in range(len(removed)) if c_label[removed[i]] == g_label[g] and by[i] >= 0]
        fits = [i for i in fits if iou_cg[i, g] >= iou]
        if fits:
            i = max(fits, key=lambda j: iou_cg[j, g])
            c, k = removed[i], int(by[i])
            s = Suppression(
                int(c_anchor[c]), _box(c_box[c]), float(c_score[c]), float(iou_cg[i, g]),
                k, int(d_anchor[k]), _box(d_box[k]), float(d_score[k]), float(iou_cd[i, k]),
            )  # fmt: skip
        missed.append(
            Missed(
                b,
                int(g),
                int(g_label[g]),
                _box(g_box[g]),
                a,
                _box(boxes[a]),
                float(iou_ag[a, g]),
                tuple(float(v) for v in scores[a]),
                int(np.argmax(scores[a])),
                int(np.argmax(iou_default[:, g])),
                float(iou_default[:, g].max()),
                s,
            )  # fmt: skip
        )
    return ImageDiagnosis(b, True, tuple(correct), tuple(missed), tuple(false_alarms), tuple(wrong), tuple(dups), ())


def _check_ground_truth(gt_boxes, gt_labels, B: int, K: int, size: int) -> list:
    """Per image ``(boxes [G, 4] float64, labels [G] int64)`` or None, checked."""
    if gt_boxes is None or gt_labels is None or len(gt_boxes) != B or len(gt_labels) != B:
        n = None if gt_boxes is None else len(gt_boxes)
        m = None if gt_labels is None else len(gt_labels)
        raise InputError(f"ground truth for {B} images needs {B} box lists and {B} label lists, got {n} and {m}")
    out = []
    for i, (bx, lb) in enumerate(zip(gt_boxes, gt_labels)):
        if bx is None or lb is None:
            if (bx is None) != (lb is None):
                raise InputError(f"image {i}: gt_boxes and gt_labels must both be None (not annotated) or both given")
            out.append(None)
            continue
        bx = np.asarray(bx, np.float64)
        lb = np.asarray(lb)
        if bx.size == 0:
            bx = bx.reshape(0, 4)
        if bx.ndim != 2 or bx.shape[1] != 4:
            raise InputError(f"image {i}: gt_boxes must be [G, 4] xyxy, got shape {bx.shape}")
        if lb.shape != (bx.shape[0],):
            raise InputError(f"image {i}: gt_labels must be [{bx.shape[0]}], got shape {lb.shape}")
        if lb.size and not np.issubdtype(lb.dtype, np.integer):
            raise InputError(f"image {i}: gt_labels must be integer class indices, got {lb.tolist()}")
        for g in range(bx.shape[0]):
            x1, y1, x2, y2 = bx[g]
            if not all(math.isfinite(v) for v in bx[g]) or not (0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size):
                raise InputError(
                    f"image {i}: ground truth {g} box {bx[g].tolist()} is not a box inside the {size}x{size} "
                    "model input (x1 < x2, y1 < y2, in 0..size)"
                )
            if not 1 <= int(lb[g]) < K:
                raise InputError(f"image {i}: ground truth {g} label {int(lb[g])} out of range: valid is 1..{K - 1}")
        out.append((bx, lb.astype(np.int64)))
    return out
