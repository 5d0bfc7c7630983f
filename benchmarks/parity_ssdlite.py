"""Measured parity of crp-jax's SSDlite with torchvision's ``ssdlite320_mobilenet_v3_large``.

Builds torchvision's ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
num_classes=21)`` with ``torch.manual_seed(seed)`` (no public weights can be downloaded
here), then gives every BatchNorm random statistics of a realistic size: one train-mode
forward of two random images sets running mean/var to the batch statistics (momentum 1),
after which means are shifted, variances scaled and gammas drawn with random signs (a
fifth negative, so that folding flips weight signs). The classification heads' biases are
edited so that the model behaves like a detector (background wins on most anchors, a few
classes fire). The state dict is converted with ``crp_jax.convert_torchvision_ssdlite`` and
compared on one 320x320 uint8 image:

- input: torchvision's ``GeneralizedRCNNTransform`` output vs ``crp_jax.preprocess``;
- raw outputs: ``model.apply`` (with BN, and BN-folded) vs torchvision's ``head(backbone(x))``;
- default boxes: ``crp_jax.ssd.anchors.default_boxes_xyxy`` vs torchvision's generator (3234);
- the top-20 detections: ``crp_jax.detect`` vs torchvision's eval forward (score 0.001,
  NMS 0.55, 300 detections, top-k 300).

Usage: ``python benchmarks/parity_ssdlite.py`` (needs torch + torchvision; about a minute on
2 CPU cores). ``tests/test_parity_ssdlite.py`` asserts on the figures of :func:`run_parity`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py, beside this script
from _common import raw_output_diffs, relative_max_diff  # noqa: E402

NUM_CLASSES = 21
FIRING_CLASSES = (3, 8, 12, 15)
BACKGROUND_BIAS = 6.0
FIRING_BIAS = 2.0
NEGATIVE_GAMMA_SHARE = 0.2
TOP = 20


def make_image(size: int = 320, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 RGB image: smooth random blobs (bilinear-upsampled 10x10 noise)
    plus pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(10, 10, 3))
    t = np.linspace(0, 9, size)
    i0 = np.floor(t).astype(int).clip(0, 8)
    f = (t - i0)[:, None, None]
    rows = coarse[i0] * (1 - f) + coarse[i0 + 1] * f
    fx = (t - i0)[None, :, None]
    img = rows[:, i0] * (1 - fx) + rows[:, i0 + 1] * fx
    img = img + rng.normal(0, 10, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_torch_model(seed: int = 0):
    """torchvision ssdlite320, random init, random BN statistics, heads edited (module doc)."""
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(seed)
    net = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in bns:
            m.momentum = 1.0  # running statistics := this batch's
        net.train()
        calib = torch.rand(2, 3, 320, 320, generator=gen) * 2 - 1
        net.head(list(net.backbone(calib).values()))
        for m in bns:
            n = m.num_features
            m.momentum = 0.03
            m.running_mean += 0.2 * torch.randn(n, generator=gen) * m.running_var.sqrt()
            m.running_var *= 0.5 + torch.rand(n, generator=gen)
            sign = torch.where(torch.rand(n, generator=gen) < NEGATIVE_GAMMA_SHARE, -1.0, 1.0)
            m.weight.copy_(sign * (0.5 + torch.rand(n, generator=gen)))
            m.bias.copy_(0.2 * torch.randn(n, generator=gen))
        for block in net.head.classification_head.module_list:
            b = block[1].bias.view(-1, NUM_CLASSES)  # channel a * K + k
            b[:, 0] += BACKGROUND_BIAS
            b[:, list(FIRING_CLASSES)] += FIRING_BIAS
    return net.eval()


def run_parity(seed: int = 0) -> dict:
    """Run both sides; returns the figures (the top detections under ``"arrays"``)."""
    import jax
    import torch

    import crp_jax as cj
    from crp_jax.ssd.anchors import default_boxes_xyxy
    from crp_jax.ssd.fold import fold_batchnorm

    net = make_torch_model(seed)
    image = make_image(320, seed)
    captured = {}
    hooks = [
        net.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("x", i[0].detach().clone())),
        net.head.register_forward_hook(lambda m, i, o: captured.__setitem__("head", dict(o))),
        net.anchor_generator.register_forward_hook(lambda m, i, o: captured.__setitem__("anchors", o[0].clone())),
    ]
    with torch.no_grad():
        tv_det = net([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])[0]
    for h in hooks:
        h.remove()
    tv_x = captured["x"].numpy().transpose(0, 2, 3, 1)
    tv_cls = captured["head"]["cls_logits"].numpy()
    tv_loc = captured["head"]["bbox_regression"].numpy()
    tv_anchors = captured["anchors"].numpy()

    model, variables, meta = cj.convert_torchvision_ssdlite(net.state_dict())
    x = np.asarray(cj.preprocess(image, meta))
    cls, loc = (np.asarray(a) for a in jax.jit(model.apply)(variables, x))
    fmodel, fvars = fold_batchnorm(model, variables)
    fcls, floc = (np.asarray(a) for a in jax.jit(fmodel.apply)(fvars, x))
    anchors = np.asarray(default_boxes_xyxy(model.config))
    det = cj.detect(
        model,
        variables,
        x,
        meta=meta,
        score_threshold=net.score_thresh,
        nms_threshold=net.nms_thresh,
        max_detections=net.detections_per_img,
        topk_candidates=net.topk_candidates,
    )[0]
    ours = {"boxes": det.boxes[:TOP], "scores": det.scores[:TOP], "labels": det.labels[:TOP]}
    tv = {k: tv_det[k].numpy()[:TOP] for k in ("boxes", "scores", "labels")}
    n = min(len(ours["scores"]), len(tv["scores"]))
    return {
        **raw_output_diffs(x, tv_x, cls, tv_cls, loc, tv_loc, anchors, tv_anchors),
        "folded_cls_max_rel_diff": relative_max_diff(fcls, tv_cls),
        "folded_loc_max_rel_diff": relative_max_diff(floc, tv_loc),
        "top": n,
        "top_labels_equal": int(np.sum(ours["labels"][:n] == tv["labels"][:n])),
        "top_box_max_abs_diff_px": float(np.max(np.abs(ours["boxes"][:n] - tv["boxes"][:n]), initial=0.0)),
        "top_score_max_abs_diff": float(np.max(np.abs(ours["scores"][:n] - tv["scores"][:n]), initial=0.0)),
        "top_min_neighbour_score_gap": float(np.min(-np.diff(tv["scores"]))) if n > 1 else float("inf"),
        "detections_ours": len(det),
        "detections_torchvision": int(tv_det["scores"].shape[0]),
        "arrays": {"ours": ours, "torchvision": tv},
    }


def main() -> int:
    import jax
    import torch
    import torchvision

    f = run_parity()
    print(
        f"crp-jax vs torchvision ssdlite320_mobilenet_v3_large (torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, jax {jax.__version__} on {jax.devices()[0].platform}); {NUM_CLASSES} classes, "
        "torch.manual_seed(0), random BN statistics (negative gammas), edited cls biases"
    )
    print(f"input (GeneralizedRCNNTransform vs cj.preprocess): max abs diff {f['input_max_abs_diff']:.3g}")
    for name, key in (("cls_logits", "cls"), ("bbox_regression", "loc")):
        print(
            f"{name:16s} max abs diff {f[key + '_max_abs_diff']:.3g}  max rel diff {f[key + '_max_rel_diff']:.3g}  "
            f"(max |output| {f[key + '_max_abs']:.3g}); BN folded: max rel diff {f['folded_' + key + '_max_rel_diff']:.3g}"
        )
    print(f"default boxes {f['anchors_shape']}: max abs diff {f['anchors_max_abs_diff_px']:.3g} px")
    print(
        f"top-{f['top']} detections (of {f['detections_ours']} ours / {f['detections_torchvision']} torchvision): "
        f"labels equal {f['top_labels_equal']}/{f['top']}, max box diff {f['top_box_max_abs_diff_px']:.3g} px, "
        f"max score diff {f['top_score_max_abs_diff']:.3g}; smallest gap between neighbouring scores "
        f"{f['top_min_neighbour_score_gap']:.3g}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
