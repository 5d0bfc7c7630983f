"""What the benchmark scripts share: importing the package from a checkout, the models
they measure and their deterministic inputs. Scripts import this (``from _common import
...``) and the package's public names only; no script imports another script.
"""

from __future__ import annotations

import sys
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
from crp_jax.ssd.meta import TORCHVISION_MEAN, TORCHVISION_STD, default_class_names  # noqa: E402


def build_model(name: str):
    """``(label, model, variables, meta)``."""
    if name == "ssd300":
        cfg = SSDConfig.ssd300_vgg16(num_classes=21)
        model = SSD(cfg)
        variables = cj.init_variables(model, seed=0)
        meta = Meta(cfg, default_class_names(21), TORCHVISION_MEAN, TORCHVISION_STD, source="init_variables(seed=0)")
        return "SSD300-VGG16, 21 classes, random weights (init_variables, seed 0)", model, variables, meta
    if name == "shipped":
        try:
            model, variables, meta = cj.load_pretrained()
            variables = jax.tree_util.tree_map(jnp.asarray, variables)
            c = meta.config
            return (
                f"shipped model (weights/; {c.image_size}px, width {c.width}, {c.num_classes} classes)",
                model,
                variables,
                meta,
            )
        except (CRPError, OSError) as e:
            cfg = SSDConfig.small(num_classes=7)
            model = SSD(cfg)
            variables = cj.init_variables(model, seed=0)
            meta = Meta(cfg, default_class_names(7), source="init_variables(seed=0)")
            why = str(e).splitlines()[0][:120]
            return (
                f"SSDConfig.small(num_classes=7) ({cfg.image_size}px, width {cfg.width}), random weights "
                f"(init_variables) -- no shipped weights: {why}",
                model,
                variables,
                meta,
            )
    raise SystemExit(f"unknown model {name!r}")


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
