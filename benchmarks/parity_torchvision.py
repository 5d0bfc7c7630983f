"""Measured parity of crp-jax's SSD300 with torchvision's ``ssd300_vgg16``.

Builds torchvision's ``ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)``
with ``torch.manual_seed(0)`` (no public weights can be downloaded here), edits its heads so
that it behaves like a detector (background wins on most anchors, a few classes fire, box
offsets of a trained model's size), converts the state dict with
``crp_jax.convert_torchvision_ssd`` and compares, on one 300x300 uint8 image:

- input: torchvision's ``GeneralizedRCNNTransform`` output vs ``crp_jax.preprocess``;
- raw outputs: ``model.apply`` vs torchvision's ``head(backbone(x))`` (cls logits, box offsets);
- default boxes: ``crp_jax.ssd.anchors.default_boxes_xyxy`` vs torchvision's anchor generator;
- detections: ``crp_jax.detect`` vs torchvision's full eval forward (``postprocess_detections``,
  score 0.01, NMS 0.45, 200 detections, top-k 400).

torchvision runs its own end-to-end ``model([image])``; forward hooks capture the backbone
input, the head outputs and the anchors of that same run.

Usage: ``python benchmarks/parity_torchvision.py`` (needs torch + torchvision; ~30 s on 2 CPU
cores). ``tests/test_parity_torchvision.py`` asserts on the figures of :func:`run_parity`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py, beside this script
from _common import raw_output_diffs  # noqa: E402

NUM_CLASSES = 21
# Head edits applied to the torch model before converting (see make_torch_model). With them
# the image gives 2318 / 1362 / 2530 / 3213 candidates (> top-k 400) for the four boosted
# classes, tens for some others, and more than 200 detections after NMS, so the score
# threshold, the per-class top-k, NMS and the final cut at 200 are all exercised.
FIRING_CLASSES = (3, 8, 12, 15)  # bird, cat, dog, person
CLS_WEIGHT_SCALE = 0.3
BACKGROUND_BIAS = 8.0
FIRING_BIAS = 3.0
LOC_WEIGHT_SCALE = 0.1


def make_image(size: int = 300, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 RGB image: a colour gradient, a few filled shapes, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([0.6 * xx + 0.2, 0.5 * yy + 0.25, 0.4 * (1 - xx) + 0.3 * yy], axis=-1) * 255.0
    for _ in range(6):
        x0, y0 = rng.integers(0, size - 60, size=2)
        w, h = rng.integers(30, 140, size=2)
        colour = rng.integers(0, 256, size=3)
        if rng.random() < 0.5:
            img[y0 : y0 + h, x0 : x0 + w] = colour
        else:
            cy, cx, r = y0 + h / 2, x0 + w / 2, min(w, h) / 2
            mask = (yy * size - cy) ** 2 + (xx * size - cx) ** 2 < r * r
            img[mask] = colour
    img += rng.normal(0.0, 8.0, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_torch_model(seed: int = 0):
    """torchvision ssd300_vgg16, random init (seed), heads edited to behave like a detector."""
    import torch
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(seed)
    net = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for conv in net.head.classification_head.module_list:
            conv.weight.mul_(CLS_WEIGHT_SCALE)  # logits of a trained model's size
            b = conv.bias.view(-1, NUM_CLASSES)  # channel a * K + k
            b[:, 0] += BACKGROUND_BIAS  # background wins on most anchors
            b[:, list(FIRING_CLASSES)] += FIRING_BIAS
        for conv in net.head.regression_head.module_list:
            conv.weight.mul_(LOC_WEIGHT_SCALE)  # offsets of the size a trained model produces
    return net


def _match(ours, theirs, box_atol: float, score_atol: float):
    """Greedy one-to-one matching of detections with the same label, box and score."""
    used = np.zeros(len(ours["scores"]), bool)
    matched = 0
    for i in range(len(theirs["scores"])):
        ok = (
            (~used)
            & (ours["labels"] == theirs["labels"][i])
            & (np.abs(ours["scores"] - theirs["scores"][i]) <= score_atol)
            & np.all(np.abs(ours["boxes"] - theirs["boxes"][i]) <= box_atol, axis=1)
        )
        hit = np.flatnonzero(ok)
        if hit.size:
            used[hit[0]] = True
            matched += 1
    return matched


def _detection_figures(ours, tv, cut_gap: float, box_atol: float, score_atol: float) -> dict:
    n_ours, n_tv = len(ours["scores"]), len(tv["scores"])
    n = min(n_ours, n_tv)
    same = (
        (ours["labels"][:n] == tv["labels"][:n])
        & (np.abs(ours["scores"][:n] - tv["scores"][:n]) <= score_atol)
        & np.all(np.abs(ours["boxes"][:n] - tv["boxes"][:n]) <= box_atol, axis=1)
    )
    return {
        "detections_ours": n_ours,
        "detections_torchvision": n_tv,
        "detections_same_order": int(np.sum(same)),
        "detections_matched": _match(ours, tv, box_atol, score_atol),
        # position-wise maxima over the detections that agree in place (swapped near-ties
        # would otherwise dominate; they are counted by detections_matched instead)
        "det_box_max_abs_diff_px": float(np.max(np.abs(ours["boxes"][:n][same] - tv["boxes"][:n][same]), initial=0.0)),
        "det_score_max_abs_diff": float(np.max(np.abs(ours["scores"][:n][same] - tv["scores"][:n][same]), initial=0.0)),
        "det_cut_score_gap": cut_gap,
        "det_min_neighbour_score_gap": float(np.min(-np.diff(tv["scores"]))) if n_tv > 1 else float("inf"),
        "det_labels": {int(k): int(v) for k, v in zip(*np.unique(tv["labels"], return_counts=True))},
        "arrays": {"ours": ours, "torchvision": tv},
    }


def _detect_both(cj, net, model, variables, meta, x, image_sizes=None):
    """crp-jax detections with torchvision's settings, and the score gap at the final cut."""
    kw = dict(
        meta=meta,
        score_threshold=net.score_thresh,
        nms_threshold=net.nms_thresh,
        topk_candidates=net.topk_candidates,
        image_sizes=image_sizes,
    )
    det = cj.detect(model, variables, x, max_detections=net.detections_per_img, **kw)[0]
    # How far the last kept detection is from the first one cut (near-ties there could
    # legitimately change the set on another CPU).
    more = cj.detect(model, variables, x, max_detections=net.detections_per_img + 1, **kw)[0]
    cut_gap = float(more.scores[-2] - more.scores[-1]) if len(more) > net.detections_per_img else float("inf")
    return {"boxes": det.boxes, "scores": det.scores, "labels": det.labels}, cut_gap


def _torch_image(torch, image):
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def run_parity(seed: int = 0, box_atol: float = 1e-3, score_atol: float = 1e-5) -> dict:
    """Run both sides and return the figures (detection arrays under ``"arrays"``).

    Part 1 (top-level keys): a 300x300 image, raw outputs, default boxes and detections.
    Part 2 (``"resized"``): a 375x500 image end to end (torchvision resizes it to 300x300
    and maps boxes back; crp-jax: ``preprocess_with_sizes`` + ``detect(image_sizes=...)``).
    """
    import jax
    import torch

    import crp_jax as cj
    from crp_jax.ssd.anchors import default_boxes_xyxy
    from crp_jax.ssd.detect import preprocess_with_sizes

    timings = {}
    net = make_torch_model(seed)
    image = make_image(300, seed)

    # torchvision end to end, capturing intermediate values of the same run.
    captured = {}
    hooks = [
        net.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("x", i[0].detach().clone())),
        net.head.register_forward_hook(
            lambda m, i, o: captured.__setitem__("head", {k: v.clone() for k, v in o.items()})
        ),
        net.anchor_generator.register_forward_hook(lambda m, i, o: captured.__setitem__("anchors", o[0].clone())),
    ]
    t = time.perf_counter()
    with torch.no_grad():
        tv_det = net([_torch_image(torch, image)])[0]
    timings["torch_forward_s"] = time.perf_counter() - t
    tv_x = captured["x"].numpy().transpose(0, 2, 3, 1)
    tv_cls = captured["head"]["cls_logits"].numpy()
    tv_loc = captured["head"]["bbox_regression"].numpy()
    tv_anchors = captured["anchors"].numpy()
    tv = {k: tv_det[k].numpy() for k in ("boxes", "scores", "labels")}

    # crp-jax
    t = time.perf_counter()
    model, variables, meta = cj.convert_torchvision_ssd(net.state_dict())
    timings["convert_s"] = time.perf_counter() - t
    x = np.asarray(cj.preprocess(image, meta))
    t = time.perf_counter()
    cls, loc = (np.asarray(a) for a in jax.jit(model.apply)(variables, x))
    timings["jax_apply_with_compile_s"] = time.perf_counter() - t
    anchors = np.asarray(default_boxes_xyxy(model.config))
    t = time.perf_counter()
    ours, cut_gap = _detect_both(cj, net, model, variables, meta, x)
    timings["jax_detect_with_compile_s"] = time.perf_counter() - t

    figures = {
        **raw_output_diffs(x, tv_x, cls, tv_cls, loc, tv_loc, anchors, tv_anchors),
    }
    figures.update(_detection_figures(ours, tv, cut_gap, box_atol, score_atol))

    # Part 2: a 375x500 image (resize on the way in, box rescaling on the way out).
    big = make_image(500, seed + 1)[:375]
    captured.clear()
    with torch.no_grad():
        tv_det = net([_torch_image(torch, big)])[0]
    for h in hooks:
        h.remove()
    tv = {k: tv_det[k].numpy() for k in ("boxes", "scores", "labels")}
    xb, sizes = preprocess_with_sizes(big, meta)
    xb = np.asarray(xb)
    ours, cut_gap = _detect_both(cj, net, model, variables, meta, xb, image_sizes=sizes)
    resized = {
        "image_shape": big.shape,
        "input_max_abs_diff": float(np.max(np.abs(xb - captured["x"].numpy().transpose(0, 2, 3, 1)))),
    }
    resized.update(_detection_figures(ours, tv, cut_gap, box_atol, score_atol))
    figures["resized"] = resized
    figures["timings"] = timings
    return figures


def _print_detections(f, indent="") -> None:
    print(
        f"{indent}detections: ours {f['detections_ours']}, torchvision {f['detections_torchvision']}; "
        f"same position/label/box/score: {f['detections_same_order']}; matched one-to-one: {f['detections_matched']} "
        f"(box atol 1e-3 px, score atol 1e-5)"
    )
    print(
        f"{indent}  max box diff {f['det_box_max_abs_diff_px']:.3g} px, max score diff {f['det_score_max_abs_diff']:.3g} "
        f"(same-position pairs); score gap at the 200-detection cut {f['det_cut_score_gap']:.3g}; "
        f"smallest gap between neighbouring scores {f['det_min_neighbour_score_gap']:.3g}"
    )
    print(f"{indent}  torchvision labels (label: count) {f['det_labels']}")


def main() -> int:
    import jax
    import torch
    import torchvision

    f = run_parity()
    print(
        f"crp-jax vs torchvision ssd300_vgg16 (torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}); 21 classes, torch.manual_seed(0) + edited heads"
    )
    print("[1] 300x300 uint8 image")
    print(f"input (GeneralizedRCNNTransform vs cj.preprocess): max abs diff {f['input_max_abs_diff']:.3g}")
    print(
        f"cls_logits:      max abs diff {f['cls_max_abs_diff']:.3g}  max rel diff {f['cls_max_rel_diff']:.3g}  (max |logit| {f['cls_max_abs']:.3g})"
    )
    print(
        f"bbox_regression: max abs diff {f['loc_max_abs_diff']:.3g}  max rel diff {f['loc_max_rel_diff']:.3g}  (max |offset| {f['loc_max_abs']:.3g})"
    )
    print(f"default boxes {f['anchors_shape']}: max abs diff {f['anchors_max_abs_diff_px']:.3g} px")
    _print_detections(f)
    r = f["resized"]
    print(
        f"[2] {r['image_shape'][0]}x{r['image_shape'][1]} uint8 image, end to end (resize in, boxes back to original pixels)"
    )
    print(f"input (GeneralizedRCNNTransform vs cj.preprocess): max abs diff {r['input_max_abs_diff']:.3g}")
    _print_detections(r)
    t = f["timings"]
    print(
        "timings [1] (s, 2-core CPU; 'with_compile' includes XLA compilation): "
        + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
