"""The errors view of a report: an image's detector errors against its ground truth, each
with the CRP maps that explain it (``crp-jax report --scenes N`` or ``--annotations FILE``).

Per image, :func:`crp_jax.eval.diagnose.diagnose` (same detections as the page: the report's
score threshold and detection limit) gives the cases; the questions of every error case are
explained in one ``explain`` call with the report's first method (CRP). A case becomes a
dictionary (what ``report.json`` holds and the page shows): its kind (``missed``,
``false_alarm``, ``wrong_label``, ``duplicate``), a title, a sentence with its numbers, its
boxes in the image's pixels (``dashed``: the missed object, or the box NMS removed) and one
map per question.
"""

from __future__ import annotations

import numpy as np

from crp_jax.errors import AnnotationError
from crp_jax.eval.diagnose import ERROR_KINDS, diagnose

#: How the pages name the error kinds.
KIND_TITLES = {
    "missed": "missed objects",
    "false_alarm": "false alarms",
    "wrong_label": "wrong labels",
    "duplicate": "duplicates",
}


def ground_truth_in_model_pixels(boxes, size: tuple[int, int], model_size: int) -> np.ndarray:
    """``[G, 4]`` xyxy in an image of ``size = (H, W)`` -> in the ``model_size`` square input
    (the resize ``preprocess`` applies)."""
    H, W = size
    f = np.array([model_size / W, model_size / H, model_size / W, model_size / H])
    return np.asarray(boxes, np.float64).reshape(-1, 4) * f


def check_annotation_size(ann, size: tuple[int, int], path: str) -> None:
    """An annotation file's width and height of the image must be the image's own."""
    H, W = size
    if (ann.width, ann.height) != (W, H):
        raise AnnotationError(
            f"{path}: the annotation file gives image {ann.file_name} (id {ann.image_id}) width/height "
            f"{[ann.width, ann.height]} but the image is {W}x{H}"
        )


def image_errors(model, variables, meta, x, gt_boxes, gt_labels, size, settings: dict, method: str):
    """Error cases of one image ``x [1, S, S, 3]`` with their relevance.

    ``gt_boxes [G, 4]`` in the image's pixels (``size = (H, W)``), ``gt_labels [G]``.
    Returns ``(cases, counts)``: ``cases`` a list of dicts (module docstring) with
    ``"relevance"``: ``{question: R [S, S, 3]}``; ``counts`` per kind.
    """
    from crp_jax.relevance import explain

    S = int(x.shape[1])
    gt_model = ground_truth_in_model_pixels(gt_boxes, size, S)
    (diag,) = diagnose(
        model,
        variables,
        x,
        [gt_model],
        [np.asarray(gt_labels, np.int64)],
        meta,
        score_threshold=settings["score_threshold"],
        max_detections=settings["max_detections"],
    )
    H, W = size
    back = np.array([W / S, H / S, W / S, H / S])  # model pixels -> image pixels
    names = ("background", *meta.class_names[1:])
    cases, targets = [], []
    for c in diag.errors:
        d = describe(c, names, back)
        d["questions"] = []
        for key, tg in c.targets().items():
            d["questions"].append({"key": key, "title": question_title(c, key, names), "target": len(targets)})
            targets.append(tg)
        cases.append(d)
    R = explain(model, variables, x, targets, method=method, meta=meta) if targets else np.zeros((0,))
    for d in cases:
        d["relevance"] = {q["key"]: R[q.pop("target")] for q in d["questions"]}
    return cases, diag.counts()


def question_title(case, key: str, names) -> str:
    """What a map answers, in words."""
    if case.kind == "missed":
        true = names[case.label]
        if key == "why_not":
            won = "any other class" if case.winner == case.label else names[case.winner]
            return f"why not {true}? ({true} against {won}, which won there)"
        if key == "missing":
            return f"what is missing: the evidence for {true} there"
        return f"why the kept {true} box and not this object's (anchor contrast)"
    if case.kind == "false_alarm":
        return f"why {names[case.label]} and not background?"
    if case.kind == "wrong_label":
        return f"why {names[case.label]} and not {names[case.true_label]}?"
    return "why the kept box and not this one? (anchor contrast)"


def describe(case, names, back) -> dict:
    """The case as the page and report.json show it (boxes in the image's pixels)."""

    def box(b):
        return [float(v) for v in np.asarray(b, np.float64) * back]

    kind = case.kind
    out = {"kind": kind}
    if kind == "missed":
        true = names[case.label]
        won = names[case.winner]
        out["title"] = f"missed {true}"
        out["boxes"] = [{"box": box(case.box), "dashed": True, "label": f"missed {true}"}]
        text = (
            f"The {true} at ({_xyxy(box(case.box))}) has no detection. The anchor whose box fits it best "
            f"(anchor {case.anchor}, IoU {case.anchor_iou:.2f}) scores it {case.score:.3f}; {won} won there "
            f"({case.scores[case.winner]:.3f}). Best default box: anchor {case.default_anchor} "
            f"(IoU {case.default_iou:.2f})."
        )
        s = case.suppressed
        if s is not None:
            text += (
                f" NMS removed its {true} box (anchor {s.anchor}, score {s.score:.3f}, IoU {s.gt_iou:.2f} with the "
                f"object) for detection #{s.by_detection} (score {s.by_score:.3f}); the two boxes overlap with IoU "
                f"{s.iou:.2f}, score margin {s.score_margin:.3f}."
            )
            out["boxes"].append({"box": box(s.by_box), "dashed": False, "label": f"#{s.by_detection} kept"})
        out.update(gt=case.gt, anchor=case.anchor, scores=list(case.scores), winner=won)
    elif kind == "false_alarm":
        k = names[case.label]
        out["title"] = f"false alarm: #{case.detection} {k}"
        out["boxes"] = [{"box": box(case.box), "dashed": False, "label": f"#{case.detection} {k}"}]
        text = (
            f"Detection #{case.detection} ({k}, score {case.score:.3f}) overlaps no object: "
            f"best IoU {case.best_iou:.2f}."
        )
        out.update(detection=case.detection, anchor=case.anchor, score=case.score)
    elif kind == "wrong_label":
        k, t = names[case.label], names[case.true_label]
        out["title"] = f"wrong label: #{case.detection} {k} on a {t}"
        out["boxes"] = [{"box": box(case.box), "dashed": False, "label": f"#{case.detection} {k}"}]
        text = (
            f"Detection #{case.detection} says {k} (score {case.score:.3f}) on a {t} (IoU {case.iou:.2f}): "
            f"the box is right, the class is not."
        )
        out.update(detection=case.detection, anchor=case.anchor, score=case.score, true_class=t)
    else:
        k = names[case.label]
        which = "removed by NMS" if case.suppressed else f"detection #{case.detection}"
        out["title"] = f"duplicate {k}: {which}"
        out["boxes"] = [
            {"box": box(case.kept_box), "dashed": False, "label": f"#{case.kept} kept"},
            {"box": box(case.box), "dashed": True, "label": "removed" if case.suppressed else f"#{case.detection}"},
        ]
        fit = (
            "it fits the object better than the box that was kept"
            if case.suppressed
            else "the VOC matching counts it a false positive"
        )
        text = (
            f"A second {k} box on the object that #{case.kept} found ({which}, score {case.score:.3f}, IoU "
            f"{case.gt_iou:.2f} with the object; kept: score {case.kept_score:.3f}, IoU {case.kept_gt_iou:.2f}); "
            f"{fit}. The boxes overlap with IoU {case.iou:.2f}; score margin {case.score_margin:.3f}, IoU margin "
            f"{case.iou_margin:.2f}."
        )
        out.update(detection=case.detection, kept=case.kept, anchor=case.anchor, suppressed=case.suppressed)
    out["text"] = text
    return out


def _xyxy(b) -> str:
    return ", ".join(f"{v:.0f}" for v in b)


def total_counts(entries) -> dict[str, list[tuple[dict, int]]]:
    """Per kind, the (entry, count) of every annotated image with errors of that kind."""
    out: dict = {k: [] for k in ERROR_KINDS}
    for e in entries:
        for k, n in (e.get("error_counts") or {}).items():
            if n:
                out[k].append((e, n))
    return out
