"""What the benchmark scripts share: importing the package from a checkout, the models
they measure and their deterministic inputs. Scripts import this (``from _common import
...``) and the package's public names only; no script imports another script.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
try:  # run from a checkout without installing: python benchmarks/<script>.py
    import crp_jax  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import crp_jax as cj  # noqa: E402
from crp_jax.errors import CRPError  # noqa: E402
from crp_jax.ssd import SSD, Meta, SSDConfig  # noqa: E402
from crp_jax.ssd.build import build_detector, init_variables  # noqa: E402
from crp_jax.ssd.convert import SSDLITE_MEAN, SSDLITE_STD  # noqa: E402
from crp_jax.ssd.fold import fold_batchnorm  # noqa: E402
from crp_jax.ssd.meta import TORCHVISION_MEAN, TORCHVISION_STD, default_class_names  # noqa: E402
from crp_jax.ssd.ssdlite import SSDLite, random_variables  # noqa: E402
from crp_jax.tflite.module import TFLiteModule  # noqa: E402

MODELS = ("ssd300", "shipped", "ssdlite320", "shipped_ssdlite", "blazeface")
SSDLITE_MODELS = ("ssdlite320", "shipped_ssdlite")


def build_model(name: str):
    """``(label, model, variables, meta)`` of one of :data:`MODELS`:

    - "ssd300": SSD300-VGG16, 21 classes, ``init_variables`` random weights;
    - "shipped": ``cj.load_pretrained()``, else ``SSDConfig.small(num_classes=7)`` at random;
    - "ssdlite320": torchvision's SSDlite320-MobileNetV3-Large layout (91 classes), random
      weights with random BatchNorm statistics, BN folded into the convs (what rules see);
    - "shipped_ssdlite": ``cj.load_pretrained("ssdlite")``, else
      ``SSDConfig.ssdlite_small(num_classes=7)`` at random (``init_variables``).

    A stand-in for missing shipped weights says so in its label.
    """
    if name == "ssd300":
        cfg = SSDConfig.ssd300_vgg16(num_classes=21)
        model = SSD(cfg)
        variables = cj.init_variables(model, seed=0)
        meta = Meta(cfg, default_class_names(21), TORCHVISION_MEAN, TORCHVISION_STD, source="init_variables(seed=0)")
        return "SSD300-VGG16, 21 classes, random weights (init_variables, seed 0)", model, variables, meta
    if name == "ssdlite320":
        cfg = SSDConfig.ssdlite320_mobilenet_v3_large(91)
        model, variables = fold_batchnorm(SSDLite(cfg), random_variables(SSDLite(cfg), seed=0))
        variables = jax.tree_util.tree_map(jnp.asarray, variables)
        meta = Meta(cfg, default_class_names(91), SSDLITE_MEAN, SSDLITE_STD, source="random_variables(seed=0)")
        return (
            "SSDlite320-MobileNetV3-Large, 91 classes, random weights and BN statistics "
            "(ssdlite.random_variables, seed 0), BN folded",
            model,
            variables,
            meta,
        )
    if name == "shipped":
        return _shipped(None, SSDConfig.small(num_classes=7), "SSDConfig.small(num_classes=7)")
    if name == "shipped_ssdlite":
        return _shipped("ssdlite", SSDConfig.ssdlite_small(num_classes=7), "SSDConfig.ssdlite_small(num_classes=7)")
    if name == "blazeface":
        model, variables, meta = cj.load_pretrained("blazeface")
        model = ConfiguredTFLite(spec=model.spec, config=BlazeFaceDims.of(meta))
        return "MediaPipe BlazeFace short range (weights/, 128px, 896 anchors, 16 regressors)", model, variables, meta
    raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")


@dataclass(frozen=True)
class BlazeFaceDims:
    """What the scripts read from an SSD's ``model.config``, for BlazeFace: input side, one
    logit, anchors per source (feature-map side and anchors per cell, as MediaPipe lays them
    out: crp_jax/blazeface/anchors.py), the 16 regressor names and the target sets that make
    sense for it (``_speed_targets.TARGET_SETS``)."""

    image_size: int
    sizes: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]
    regressor_names: tuple[str, ...]
    num_classes: int = 1
    backbone: str = "blazeface"
    target_sets: tuple[str, ...] = ("faces_first", "faces")

    @classmethod
    def of(cls, meta) -> BlazeFaceDims:
        o = meta.anchor_options
        per_stride: dict[int, int] = {}
        for s in o.strides:  # consecutive equal strides share one map (anchors.py)
            per_stride[s] = per_stride.get(s, 0) + len(o.aspect_ratios) + (o.interpolated_scale_aspect_ratio > 0)
        sizes = tuple(-(-meta.image_size // s) for s in per_stride)
        dims = cls(meta.image_size, sizes, tuple(per_stride.values()), tuple(meta.regressor_names))
        assert dims.num_anchors() == meta.num_anchors, (dims, meta.num_anchors)
        return dims

    def feature_sizes(self) -> tuple[int, ...]:
        return self.sizes

    def num_anchors(self) -> int:
        return sum(f * f * a for f, a in zip(self.sizes, self.anchors_per_cell))


class ConfiguredTFLite(TFLiteModule):
    """An imported graph that carries a ``config`` (:class:`BlazeFaceDims`) as SSD modules
    do, so that the scripts read its sizes the same way; it computes exactly what the
    imported module computes (same submodules, same variables)."""

    config: BlazeFaceDims | None = None


def _shipped(weights, fallback: SSDConfig, what: str):
    """``cj.load_pretrained(weights)``, or ``fallback`` with random ``init_variables`` weights
    (seed 0) when nothing is shipped under that name."""
    try:
        model, variables, meta = cj.load_pretrained(weights)
        variables = jax.tree_util.tree_map(jnp.asarray, variables)
        c = meta.config
        return (
            f"shipped {weights or 'default'} model (weights/; {c.image_size}px, width {c.width}, "
            f"{c.num_classes} classes)",
            model,
            variables,
            meta,
        )
    except (CRPError, OSError) as e:
        model = build_detector(fallback)
        variables = jax.tree_util.tree_map(jnp.asarray, init_variables(model, seed=0))
        meta = Meta(fallback, default_class_names(fallback.num_classes), source="init_variables(seed=0)")
        why = str(e).splitlines()[0][:120]
        return (
            f"{what} ({fallback.image_size}px, width {fallback.width}), random weights "
            f"(init_variables) -- no shipped weights: {why}",
            model,
            variables,
            meta,
        )


def make_images(n: int, size: int, meta, seed: int = 0):
    """``n`` deterministic uint8 images (gradient, shapes, noise), preprocessed."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(n):
        img = np.stack([0.6 * xx + 0.2, 0.5 * yy + 0.25, 0.4 * (1 - xx) + 0.3 * yy], -1) * 255.0
        for _ in range(6):
            x0, y0 = rng.integers(0, max(1, size - size // 5), size=2)
            w, h = rng.integers(size // 10, size // 2, size=2)
            img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, size=3)
        img += rng.normal(0.0, 8.0, size=img.shape)
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return cj.preprocess(out, meta)


def block(tree):
    """Wait for every array of ``tree`` (timing)."""
    jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)
    return tree


def log(*a):
    """``print``, flushed at once (a long run's progress)."""
    print(*a, flush=True)


def timed(fn) -> float:
    """Seconds one call of ``fn()`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def med(ts):
    """Median of ``ts``, NaN when empty."""
    return statistics.median(ts) if ts else float("nan")


def relative_max_diff(a, b) -> float:
    """``max |a - b| / max |b|``."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def raw_output_diffs(x, tv_x, cls, tv_cls, loc, tv_loc, anchors, tv_anchors) -> dict:
    """The parity scripts' figures for one image: preprocessing, raw outputs (absolute and
    relative to torchvision's max |output|) and default boxes, ours against torchvision's."""

    return {
        "input_max_abs_diff": float(np.max(np.abs(x - tv_x))),
        "cls_max_abs_diff": float(np.max(np.abs(cls - tv_cls))),
        "cls_max_rel_diff": relative_max_diff(cls, tv_cls),
        "cls_max_abs": float(np.max(np.abs(tv_cls))),
        "loc_max_abs_diff": float(np.max(np.abs(loc - tv_loc))),
        "loc_max_rel_diff": relative_max_diff(loc, tv_loc),
        "loc_max_abs": float(np.max(np.abs(tv_loc))),
        "anchors_shape": tuple(anchors.shape),
        "anchors_max_abs_diff_px": (
            float(np.max(np.abs(anchors - tv_anchors))) if anchors.shape == tv_anchors.shape else float("inf")
        ),
    }


# ---------------------------------------------------------------------------------------
# the torch side of the speed comparison (torch imported only when called)
# ---------------------------------------------------------------------------------------
def torch_setup(x_nhwc, threads: int | None = None, device: str | None = None):
    """``(torch, threads, device, x)``: torch with ``threads`` intra-op threads (default:
    the cores this process may use) on ``device`` (default: CUDA when torch sees it), and
    the images ``x_nhwc`` as an NCHW float32 tensor there."""
    import os

    import torch

    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(int(threads))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc, np.float32).transpose(0, 3, 1, 2))).to(device)
    return torch, int(threads), device, x


def torch_class_grads(torch, net, x, images, anchors, cls_coef, keep: int = 0) -> list:
    """What ``speed.py`` times on the torch side: per image one forward of ``net`` (``x
    [B, 3, H, W] -> (cls_logits [1, A, K], ...)``), then per target one
    ``torch.autograd.grad(cls_logits, x, grad_outputs=ct, retain_graph=True)`` with ``ct``
    zero but ``cls_coef[t]`` at anchor ``anchors[t]`` (the graph is released on the image's
    last target). Returns the first ``keep`` results as NHWC numpy."""
    cc = torch.from_numpy(np.asarray(cls_coef, np.float32)).to(x.device)
    kept = []
    for b in np.unique(images):
        sel = np.flatnonzero(images == b)
        xb = x[b : b + 1].clone().requires_grad_(True)
        cls = net(xb)[0]
        for n, t in enumerate(sel):
            ct = torch.zeros_like(cls)
            ct[0, int(anchors[t])] = cc[t]
            (g,) = torch.autograd.grad(cls, xb, grad_outputs=ct, retain_graph=n < len(sel) - 1)
            if len(kept) < keep:
                kept.append(g[0].permute(1, 2, 0).detach().cpu().numpy())
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return kept
