"""Figures of explained detections, laid out from :mod:`crp_jax.viz`'s drawing functions:
the per-image grid of ``crp-jax explain`` and the three kinds of demo picture (per-detection
overlays, the methods grid, the class-swap grid). Every function returns PIL images; the
caller names and writes the files.
"""

from __future__ import annotations

import math
import re

import numpy as np

from crp_jax.apps.explanations import (
    Ask,
    DetectedImage,
    class_name,
    describe,
    heatmaps,
    partner,
    target_for,
)

__all__ = ["safe_name", "display", "explain_grid", "keypoint_grid", "keypoint_cells", "demo_figures", "class_swap_grid"]


def display(pixels: np.ndarray, small: int = 160, large: int = 400):
    """Grid cells at a readable size: ``(pixels, box_factor, scale)``. Small images are
    magnified by an integer ``scale`` (nearest), large ones shrunk to ``large`` pixels on
    their longer side (boxes multiplied by ``box_factor`` ``[4]``); the heatmap follows
    either way."""
    from PIL import Image

    H, W = pixels.shape[:2]
    side = max(H, W)
    if side > large:
        f = large / side
        w, h = max(1, round(W * f)), max(1, round(H * f))
        small_px = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.LANCZOS))
        return small_px, np.array([w / W, h / H, w / W, h / H], np.float32), 1
    return pixels, np.ones(4, np.float32), max(1, min(8, math.ceil(small / max(1, side))))


def explain_grid(im: DetectedImage, meta, dets, columns, alpha: float):
    """Rows: detections ``dets``; first column the image with the box, then one column per
    entry of ``columns`` (as :func:`crp_jax.apps.explanations.grid_heatmaps` returns
    them; an empty cell where a detection has no such column)."""
    from crp_jax import viz

    pixels, f, s = display(im.pixels)
    d = im.det
    cells, titles = [], []
    for i in dets:
        name = class_name(meta, int(d.labels[i]))
        box = im.on_pixels(d.boxes[i]) * f
        cells.append(
            viz.draw_detections(pixels, box[None], d.labels[i : i + 1], d.scores[i : i + 1], meta.class_names, scale=s)
        )
        titles.append(f"det {i}: {name} {float(d.scores[i]):.2f}\ninput")
        for _, method, col in columns:
            if i not in col:
                cells.append(None)
                titles.append("")
                continue
            target, h = col[i]
            cells.append(viz.overlay(pixels, h, box=box, alpha=alpha, scale=s))
            titles.append(describe(meta, target, method).replace(": ", ":\n", 1))
    return viz.grid(cells, titles, ncols=len(columns) + 1)


def keypoint_grid(im: DetectedImage, meta, i: int, maps, method: str, alpha: float, side: int = 200):
    """Keypoint maps of detection ``i`` (``maps``: its list from
    :func:`crp_jax.apps.explanations.keypoint_maps`) as one grid of :func:`keypoint_cells`."""
    from crp_jax import viz

    cells, titles = keypoint_cells(im, meta, i, maps, method, alpha, side)
    return viz.grid(cells, titles, ncols=1 + len(getattr(meta, "keypoint_names", ())) if len(cells) > 7 else len(cells))


def keypoint_cells(im: DetectedImage, meta, i: int, maps, method: str, alpha: float, side: int = 200):
    """Pictures of detection ``i``'s keypoint maps: ``(cells, titles)``, first the image around
    the face with its box and keypoints, then one cell per entry ``(name, target, heatmap)`` of
    ``maps`` (heatmaps cut to the image, :func:`crp_jax.apps.explanations.on_image`), in the
    meta's order (two per keypoint: x then y). Every cell shows the region around the face (the
    box grown by half its size on each side), magnified to about ``side`` pixels, with the
    predicted keypoint marked by a small square; each map has its own colour scale."""
    from PIL import ImageDraw

    from crp_jax import viz

    d = im.det
    box = np.asarray(im.on_pixels(d.boxes[i]), np.float64)
    H, W = im.pixels.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0, y0 = int(max(0, np.floor(box[0] - bw / 2))), int(max(0, np.floor(box[1] - bh / 2)))
    x1, y1 = int(min(W, np.ceil(box[2] + bw / 2))), int(min(H, np.ceil(box[3] + bh / 2)))
    if x1 <= x0 or y1 <= y0:
        x0, y0, x1, y1 = 0, 0, W, H
    crop = im.pixels[y0:y1, x0:x1]
    s = max(1, min(8, side // max(1, max(crop.shape[:2]))))
    off = np.array([x0, y0, x0, y0], np.float64)
    kps = getattr(d, "keypoints", None)
    kp = None if kps is None else np.asarray(kps[i], np.float64)  # [P, 2] original pixels
    kp_px = None if kp is None else im.on_pixels(np.concatenate([kp, kp], -1))[:, :2] - off[:2]
    r = max(1.5, 0.03 * max(bw, bh))
    knames = list(getattr(meta, "keypoint_names", ()))

    face = viz.overlay(crop, np.zeros(crop.shape[:2], np.float32), box=box - off, alpha=0.0, scale=s)
    if kp_px is not None:
        draw = ImageDraw.Draw(face)
        for x, y in kp_px:
            draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], outline=(0, 200, 0), width=2)
    cells = [face]
    titles = [f"det {i}: {class_name(meta, int(d.labels[i]))} {float(d.scores[i]):.2f}\nkeypoints"]
    for name, target, h in maps:
        hp = viz.resize_heatmap(h, (H, W))[y0:y1, x0:x1]
        marker = None
        kname = name.rsplit("_", 1)[0]
        if kp_px is not None and kname in knames:
            x, y = kp_px[knames.index(kname)]
            marker = np.array([x - r, y - r, x + r, y + r])
        vmax = viz.robust_max(h)
        cells.append(viz.overlay(crop, hp, box=marker, alpha=alpha, scale=s, vmax=vmax))
        titles.append(describe(meta, target, method).replace(": ", ":\n", 1))
    return cells, titles


def safe_name(text: str) -> str:
    """A file-name-safe version of a class name or file stem (``[A-Za-z0-9._-]``, never
    empty)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s or "x"


def demo_figures(model, variables, meta, im: DetectedImage) -> tuple[list, int | None]:
    """The demo's pictures of a (small) scene ``im``, magnified for viewing: the scene, its
    detections, per detection a CRP and an LRP-ab overlay, the methods grid (rows:
    detections; columns: input, CRP, LRP-ab) and, for the first detection of a confusable
    pair class (E/F, O/Q, P/R), the class-swap grid. Returns ``([(file name, image)...],
    that detection's number or None)``."""
    from crp_jax import viz

    d = im.det
    H, W = im.pixels.shape[:2]
    s = max(1, math.ceil(384 / max(H, W)))  # magnify the small scenes for viewing
    out = [
        ("scene.png", viz.grid([im.pixels], [""], scale=s, pad=0)),
        ("detections.png", viz.draw_detections(im.pixels, d.boxes, d.labels, d.scores, meta.class_names, scale=s)),
    ]
    ask = Ask("cls", 1, None)
    per_method = {}
    for m in ("crp", "lrp_ab"):
        targets = [target_for(ask, d.anchors[i], int(d.labels[i])) for i in range(len(d))]
        per_method[m] = heatmaps(model, variables, meta, im.x, targets, m, im.full_size)
        for i in range(len(d)):
            name = class_name(meta, int(d.labels[i]))
            label = f"{name} {float(d.scores[i]):.2f} | {describe(meta, targets[i], m)}"
            out.append(
                (
                    f"det{i:02d}_{safe_name(name)}_{m}.png",
                    viz.overlay(im.pixels, per_method[m][i], box=d.boxes[i], label=label, scale=s),
                )
            )
    cells, titles = [], []
    for i in range(len(d)):
        name = class_name(meta, int(d.labels[i]))
        cells.append(
            viz.draw_detections(
                im.pixels, d.boxes[i : i + 1], d.labels[i : i + 1], d.scores[i : i + 1], meta.class_names, scale=s
            )
        )
        titles.append(f"det {i}: {name} {float(d.scores[i]):.2f}")
        for m, desc in (("crp", f"CRP: why {name} (vs all others)"), ("lrp_ab", f"LRP-ab: {name}")):
            cells.append(viz.overlay(im.pixels, per_method[m][i], box=d.boxes[i], scale=s))
            titles.append(desc)
    out.append(("methods_grid.png", viz.grid(cells, titles, ncols=3)))
    swap = next((i for i in range(len(d)) if partner(meta, int(d.labels[i])) is not None), None)
    if swap is not None:
        out.append(class_swap_grid(model, variables, meta, im, swap, s))
    return out, swap


def class_swap_grid(model, variables, meta, im: DetectedImage, i: int, s: int):
    """``(file name, image)``: rows LRP-ab and CRP, columns the detected class of detection
    ``i`` and its partner; CRP contrasts the pair ("why E and not F", "why F and not E").
    Each row shares one colour scale, so the two columns are comparable. Two targets per
    explain call, like the other calls."""
    from crp_jax import viz
    from crp_jax.relevance.targets import ClassTarget

    d = im.det
    k = int(d.labels[i])
    p = partner(meta, k)
    a = int(d.anchors[i])
    kn, pn = class_name(meta, k), class_name(meta, p)
    rows = [
        ("lrp_ab", [ClassTarget(0, a, k), ClassTarget(0, a, p)], [f"LRP-ab: {kn}", f"LRP-ab: {pn}"]),
        (
            "crp",
            [ClassTarget(0, a, k, (p,)), ClassTarget(0, a, p, (k,))],
            [f"CRP: why {kn} and not {pn}", f"CRP: why {pn} and not {kn}"],
        ),
    ]
    cells, titles = [], []
    for method, targets, names in rows:
        hs = heatmaps(model, variables, meta, im.x, targets, method, im.full_size)
        vmax = max(viz.robust_max(h) for h in hs)
        for h, t in zip(hs, names):
            cells.append(viz.overlay(im.pixels, h, box=d.boxes[i], vmax=vmax, scale=s))
            titles.append(f"{t}\n(det {i}, score {float(d.scores[i]):.2f})")
    return f"class_swap_det{i:02d}_{safe_name(kn)}_{safe_name(pn)}.png", viz.grid(cells, titles, ncols=2)
