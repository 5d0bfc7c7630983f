"""The numbers and relevance arrays of one report page (no HTML here; see ``html.py``).

Per detection (``crp_jax.detect``'s order, so ``data-detection="N"`` means what ``crp-jax
detect`` prints as its N-th line) the report asks:

- "why class k (and not all others)?": CRP's class target, contrast "others";
- "why k and not k2?": CRP with contrast ``(k2,)``, k2 the *runner-up*: the foreground class
  other than k with the highest logit at the detection's anchor. Background is left out:
  "why E and not background" is the objectness question that the all-others map answers;
- the same class question with each comparison method (LRP-ab by default: its one-hot map);
- "what moves the box right / left / down / up / wider / narrower / taller / shorter": CRP's
  eight localization targets (cx, cy, w, h with sign +1 / -1);
- for a detector with keypoints (BlazeFace), "what moves this keypoint right / down": CRP's
  target +1 on every keypoint regressor (``right_eye_x`` ... ``left_ear_y``);
- the class-pair correlation of every comparison method: Pearson r over the whole image
  between the heatmaps of k and of k2 at the same anchor (``crp_jax.metrics``; near 1 means
  the method cannot tell the two classes apart, the CRP paper's point about LRP);
- conservation: input relevance summed against the initial relevance (0 for a contrast,
  1 for a one-hot LRP-ab target, and for CRP on a single-logit head, whose "others" is the
  logit itself: docs/design.md §3; ``metrics.conservation``);
- the per-layer relevance flow of the CRP and LRP-ab class targets (``relevance_flow``):
  total and absolute relevance at each layer's output.

All targets of one method go through one ``explain`` (or ``relevance_flow``) call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import numpy as np

import crp_jax as cj
from crp_jax import metrics
from crp_jax.apps.explanations import keypoint_regressors, on_image, partner, per_method
from crp_jax.compiled import cached

CHUNK = 8
#: The eight localization questions: (coordinate, sign, "what moves the box <word>").
LOC_QUESTIONS: tuple[tuple[str, int, str], ...] = (
    ("cx", 1, "right"),
    ("cx", -1, "left"),
    ("cy", 1, "down"),
    ("cy", -1, "up"),
    ("w", 1, "wider"),
    ("w", -1, "narrower"),
    ("h", 1, "taller"),
    ("h", -1, "shorter"),
)
#: Methods whose class target also records the per-layer relevance flow.
FLOW_METHODS = ("crp", "lrp_ab")
#: Methods whose rules conserve relevance (bias-free rules: docs/design.md §2); the others
#: (epsilon keeps the bias, gradients) have no conservation law to check.
CONSERVING = ("crp", "lrp_ab")


def loc_key(coord: str, sign: int) -> str:
    """Name of a localization map: ``loc_cx+``, ``loc_h-``; a keypoint's: ``loc_nose_tip_x+``."""
    return f"loc_{coord}{'+' if sign > 0 else '-'}"


@dataclass
class DetectionExplanation:
    """Everything the report shows for one detection.

    ``relevance`` maps a map name to the input relevance ``[S, S, 3]`` at the model input
    size: each method name (class k, the method's default contrast), ``"<method>_runner_up"``
    (class k2), ``"crp_pair"`` (k vs k2), ``loc_key(coord, sign)`` (8 maps), for a detector
    with keypoints ``loc_key(name, +1)`` per keypoint regressor (:attr:`keypoint_maps`) and,
    with partners, ``"<method>_partner"`` / ``"crp_vs_partner"``. ``flow`` maps a method of
    :data:`FLOW_METHODS` to ``[L, 2]`` (total, absolute) over ``flow_layers``. ``numbers`` is
    JSON-ready.
    """

    index: int
    label: int
    score: float
    box: np.ndarray  # [4] xyxy in the original image's pixels
    anchor: int
    runner_up: int | None
    partner: int | None
    keypoints: np.ndarray | None = None  # [P, 2] (x, y) in the original image's pixels
    relevance: dict[str, np.ndarray] = field(default_factory=dict)
    flow: dict[str, np.ndarray] = field(default_factory=dict)
    flow_layers: tuple[str, ...] = ()
    numbers: dict = field(default_factory=dict)


def runner_up(logits: np.ndarray, label: int) -> int | None:
    """The foreground class (index >= 1) other than ``label`` with the highest logit, or
    None when there is no other foreground class. ``logits``: ``[K]`` at one anchor."""
    order = [int(k) for k in np.argsort(-np.asarray(logits, np.float64), kind="stable")]
    return next((k for k in order if k not in (0, int(label))), None)


@cached("report_logits", maxsize=8)
def _logits(model):
    """The jitted ``(variables, x) -> cls_logits [B, A, K]`` (compiled once per model)."""
    return jax.jit(lambda variables, x: model.apply(variables, x)[0])


def _run(model, variables, meta, x, targets: list, method: str, layers: bool):
    """``(R [T, S, S, 3], flow)`` of ``targets`` (flow empty unless ``layers``)."""
    if layers:
        return cj.relevance_flow(model, variables, x, targets, method=method, meta=meta, chunk_size=CHUNK)
    return cj.explain(model, variables, x, targets, method=method, meta=meta, chunk_size=CHUNK), {}


def detection_explanations(
    model,
    variables,
    meta,
    x,
    det,
    image_size: tuple[int, int],
    methods: Sequence[str] = ("crp", "lrp_ab"),
    partners: bool = False,
) -> list[DetectionExplanation]:
    """Explain every detection of one image.

    Args:
      model, variables, meta: as ``cj.load_pretrained()`` returns them.
      x: the preprocessed image ``[1, S, S, 3]``.
      det: its ``Detections`` (boxes in the original image's pixels).
      image_size: ``(H, W)`` of the original image.
      methods: comparison methods; "crp" is always computed, first.
      partners: also explain the confusable partner class (data-set mode's quality table).

    Returns:
      one :class:`DetectionExplanation` per detection, in detection order.
    """
    methods = ["crp"] + [m for m in methods if m != "crp"]
    logits = np.asarray(_logits(model)(variables, x))[0]  # [A, K]
    kp_names = keypoint_regressors(meta)
    kps = getattr(det, "keypoints", None)
    exps = []
    for i in range(len(det)):
        a, k = int(det.anchors[i]), int(det.labels[i])
        p = partner(meta, k) if partners else None
        e = DetectionExplanation(
            i, k, float(det.scores[i]), np.asarray(det.boxes[i], np.float64), a, runner_up(logits[a], k), p
        )
        if kp_names and kps is not None:
            e.keypoints = np.asarray(kps[i], np.float64)
        exps.append(e)
    if not exps:
        return []

    def asks_of(m: str) -> list[tuple[int, str, object]]:  # (detection, map name, target)
        asks = []
        for e in exps:
            asks.append((e.index, m, cj.ClassTarget(0, e.anchor, e.label)))
            for other, suffix in ((e.runner_up, "runner_up"), (e.partner, "partner")):
                if other is not None:
                    asks.append((e.index, f"{m}_{suffix}", cj.ClassTarget(0, e.anchor, other)))
            if m == "crp":
                for other, name in ((e.runner_up, "crp_pair"), (e.partner, "crp_vs_partner")):
                    if other is not None:
                        asks.append((e.index, name, cj.ClassTarget(0, e.anchor, e.label, (other,))))
                for coord, sign, _ in LOC_QUESTIONS:
                    asks.append((e.index, loc_key(coord, sign), cj.LocTarget(0, e.anchor, coord, sign)))
                if e.keypoints is not None:
                    for name in kp_names:
                        asks.append((e.index, loc_key(name, 1), cj.LocTarget(0, e.anchor, name, 1)))
        return asks

    def run(m: str):
        asks = asks_of(m)
        return asks, _run(model, variables, meta, x, [t for _, _, t in asks], m, m in FLOW_METHODS)

    for m, (asks, (R, flow)) in per_method(run, methods).items():
        for t, (i, name, _) in enumerate(asks):
            exps[i].relevance[name] = R[t]
            if m in FLOW_METHODS and name == m:
                exps[i].flow_layers = tuple(flow)
                exps[i].flow[m] = np.stack([flow[layer][t] for layer in flow])
    for e in exps:
        e.numbers = _numbers(e, meta, logits[e.anchor], methods, image_size)
    return exps


def keypoint_map_names(e: DetectionExplanation, meta) -> list[tuple[str, str]]:
    """``(regressor, map name)`` of the keypoint maps of ``e``, in the meta's order (empty for
    a detection without keypoints)."""
    if e.keypoints is None:
        return []
    return [(n, loc_key(n, 1)) for n in keypoint_regressors(meta)]


def _initial_total(meta, method: str, target) -> float | None:
    """Total initial relevance of a class ``target`` under ``method``'s default contrast
    (None for a method without a conservation law): the sum of its coefficients, so 0 for a
    contrast over K > 1 classes and 1 for a one-hot or a single-logit head's "others"."""
    from crp_jax.relevance.composite import get_composite

    if method not in CONSERVING:
        return None
    coef, _ = target.coefficients(meta.num_classes, get_composite(method, meta).contrast)
    # float32 coefficients 1 - 6 * (1/6) leave ~1e-8; the true totals are short fractions
    return round(float(coef.astype(np.float64).sum()), 6)


def _class_name(meta, k: int | None) -> str | None:
    if k is None:
        return None
    names = meta.class_names
    return names[k] if 0 <= k < len(names) else str(k)


def _numbers(e: DetectionExplanation, meta, logits: np.ndarray, methods: list[str], image_size) -> dict:
    """JSON-ready numbers of one detection (everything the page prints, and a little more)."""
    # heatmaps cut to the part that covers the image (letterbox bands off), so that the box
    # scaled to their size lines up
    heat = {name: on_image(meta, cj.heatmap(R), image_size) for name, R in e.relevance.items()}
    out: dict = {
        "detection": e.index,
        "class": _class_name(meta, e.label),
        "label": e.label,
        "score": e.score,
        "box": [float(v) for v in e.box],
        "anchor": e.anchor,
        "logits": {_class_name(meta, k): float(v) for k, v in enumerate(logits)},
        "runner_up": None
        if e.runner_up is None
        else {"class": _class_name(meta, e.runner_up), "label": e.runner_up, "logit": float(logits[e.runner_up])},
        "methods": list(methods),
    }
    cons = {}
    target = cj.ClassTarget(0, e.anchor, e.label)
    for name, r0 in [(m, _initial_total(meta, m, target)) for m in methods] + [("crp_pair", 0.0)]:
        if r0 is not None and name in e.relevance:
            cons[name] = metrics.conservation(e.relevance[name], r0)
    out["conservation"] = cons
    if e.runner_up is not None:
        out["class_pair_r"] = {m: metrics.class_discriminativeness(heat[m], heat[f"{m}_runner_up"]) for m in methods}
    else:
        out["class_pair_r"] = {}
    # the detected box at the heatmaps' size, for the share of positive relevance inside it
    H, W = image_size
    h_, w_ = next(iter(heat.values())).shape
    box_s = e.box * np.array([w_ / W, h_ / H, w_ / W, h_ / H])
    out["positive_share_in_box"] = {name: metrics.energy_pointing_game(h, box_s) for name, h in heat.items()}
    out["max_abs"] = {name: float(np.abs(h).max()) for name, h in heat.items()}
    out["sum"] = {name: float(R.sum()) for name, R in e.relevance.items()}
    if e.flow:
        # the input first, then the layers that carry relevance for this box (forward order)
        keep = [j for j in range(len(e.flow_layers)) if any(f[j, 1] > 0 for f in e.flow.values())]
        out["flow"] = {"layers": ["input"] + [e.flow_layers[j] for j in keep]}
        for m, f in e.flow.items():
            R = e.relevance[m]
            out["flow"][m] = {
                "total": [float(R.sum())] + [float(f[j, 0]) for j in keep],
                "abs": [float(np.abs(R).sum())] + [float(f[j, 1]) for j in keep],
            }
    if e.partner is not None:
        out["partner"] = {"class": _class_name(meta, e.partner), "label": e.partner}
    if e.keypoints is not None:
        names = list(meta.keypoint_names)
        out["keypoints"] = {n: [float(v) for v in e.keypoints[k]] for k, n in enumerate(names)}
        out["keypoint_maps"] = [{"regressor": r, "map": name} for r, name in keypoint_map_names(e, meta)]
    return out
