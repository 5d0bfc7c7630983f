"""Figures of the quality benchmark (Pillow only): ``class_swap.png`` (LRP-ab and CRP maps of
a detection's class and its confusable partner, same box), ``relevance_flow.png`` (per-layer
relevance from the input to the head) and ``randomization_cascade.png``. Line charts come
from :func:`crp_jax.charts.line_chart`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import crp_jax as cj
from crp_jax import metrics as M
from crp_jax import viz
from crp_jax.charts import line_chart
from crp_jax.data import CLASS_NAMES, LARGER
from crp_jax.eval.quality.cases import CHUNK, METHOD_LABELS, Case
from crp_jax.eval.quality.sanity import CASCADE_FIGURE_METHODS, CONTROL, edge_map_explainer
from crp_jax.relevance.targets import ClassTarget


def cascade_figure(model, variables, meta, x, shown, case, rz: dict, methods, seed: int, n_cols: int = 7):
    """The classic cascade figure for one detection: rows = methods (and the edge-map
    control), columns = the trained model and cascade steps (each map on its own colour
    scale, cropped around the box); below, the mean Spearman |R| / SSIM per step over all
    detections (band: quartiles)."""
    from crp_jax.metrics import randomization_blocks, randomize

    blocks = randomization_blocks(model, variables, x)
    n = len(blocks)
    cols = sorted({0, 1, n} | {int(round(1 + k * (n - 1) / (n_cols - 2))) for k in range(n_cols - 1)})
    fresh = cj.init_variables(model, seed)
    S = x.shape[1]
    l, t, r, b = _crop_box(case.gt_box, S)
    scale = max(1, round(96 / (r - l)))
    crop = shown[case.image][t:b, l:r]
    box = np.asarray(case.det_box) - np.array([l, t, l, t])
    target = [ClassTarget(case.image, case.anchor, case.label)]
    images, titles = [], []
    rows = [m for m in CASCADE_FIGURE_METHODS if m in methods] + [CONTROL]
    for m in rows:
        for k in cols:
            done = [p for _, mods in blocks[:k] for p in mods]
            v = randomize(variables, fresh, done) if done else variables
            if m == CONTROL:
                R = edge_map_explainer(model, v, x, target)[0, ..., 0]
            else:
                R = cj.explain(model, v, x, target, method=m, meta=meta, chunk_size=CHUNK)[0].sum(-1)
            h = R[t:b, l:r]
            images.append(viz.overlay(crop, h, box=box, vmax=viz.robust_max(h), scale=scale))
            step = "trained" if k == 0 else f"… {blocks[k - 1][0]}"
            titles.append(f"{METHOD_LABELS.get(m, m)}\n{step}" if k == 0 else step)
    g = viz.grid(images, titles, ncols=len(cols), font_size=10)
    names = rz["blocks"]
    per = rz["per_method"]
    colours = [(200, 30, 40), (30, 90, 180), (0, 140, 70), (230, 120, 0), (120, 60, 160), (90, 90, 90)]
    panels = []
    for metric, title in (("spearman_abs", "Spearman rank correlation of |R|"), ("ssim", "SSIM")):
        series = []
        for (m, res), colour in zip(per.items(), colours):
            arr = np.stack([res[j][1][metric] for j in range(len(res))], 1)  # [cases, steps]
            series.append(
                (
                    METHOD_LABELS.get(m, m),
                    colour,
                    (arr.mean(0), np.percentile(arr, 25, 0), np.percentile(arr, 75, 0)),
                )
            )
        panels.append(
            dict(
                title=f"{title} to the trained map (mean; band: quartiles)", log=False, ylim=(-0.2, 1.05), series=series
            )
        )
    short = [n.replace("conv", "c").replace("+l2norm", "+l2") for n in names]  # rotated labels must be short
    chart = line_chart(
        panels,
        short,
        "Cascading randomization: heads first, then each conv back to the input",
        width=g.width,
        panel_h=170,
        footer="cascade step: the blocks randomized so far, from the heads (left) back to the input layer (right)",
    )
    head = Image.new("RGB", (g.width, 20), "white")
    ImageDraw.Draw(head).text(
        (6, 4),
        f"scene {case.scene}, {CLASS_NAMES[case.label]}: class heatmap as the network is randomized from the heads down "
        "(each map on its own scale; red +, blue -)",
        fill="black",
        font=viz.font(11),
    )
    out = Image.new("RGB", (g.width, head.height + g.height + chart.height), "white")
    out.paste(head, (0, 0))
    out.paste(g, (0, head.height))
    out.paste(chart, (0, head.height + g.height))
    return out


def save_png(img: Image.Image, path, limit: int = 200_000) -> None:
    """Save a PNG; when it exceeds ``limit`` bytes, as a 256-colour palette image."""
    img.save(path, optimize=True)
    if Path(path).stat().st_size > limit:
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def pick_swap_cases(cases: Sequence[Case], k: int = 3) -> list[int]:
    """Up to ``k`` detections, one per confusable pair (E/F, O/Q, P/R), best score first;
    alternately preferring the larger glyph (its part is ink) and the smaller one (its part
    is where the partner's extra stroke would be), so that both kinds are shown."""
    from crp_jax.data import PAIRS

    chosen: list[int] = []
    for j, pair in enumerate(PAIRS):
        labels = {CLASS_NAMES.index(ch) for ch in pair}
        cand = [i for i, c in enumerate(cases) if c.label in labels and c.part_mask.any()]
        if not cand:
            continue
        want_larger = j % 2 == 0
        cand.sort(key=lambda i: ((CLASS_NAMES[cases[i].label] in LARGER) != want_larger, -cases[i].score))
        chosen.append(cand[0])
        if len(chosen) == k:
            break
    return chosen


def _crop_box(box, S: int, margin: float = 0.3) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    side = int(min(S, max(24, math.ceil(side))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(0, round(cx - side / 2)), S - side))
    top = int(min(max(0, round(cy - side / 2)), S - side))
    return left, top, left + side, top + side


def class_swap_figure(shown, cases, ids, swap_heat, cell: int = 150) -> Image.Image:
    """Rows per detection: LRP-ab and CRP; columns: the crop with its box (or the part
    mask), the detected class's heatmap, the partner class's heatmap (same box)."""
    S = shown.shape[1]
    images, titles = [], []
    for i in ids:
        c = cases[i]
        if (i, "crp") not in swap_heat or (i, "lrp_ab") not in swap_heat:
            continue
        l, t, r, b = _crop_box(c.gt_box, S)
        scale = max(1, round(cell / (r - l)))
        crop = shown[c.image][t:b, l:r]
        box = np.asarray(c.gt_box) - np.array([l, t, l, t])
        det, par = CLASS_NAMES[c.label], CLASS_NAMES[c.partner]
        for m, name in (("lrp_ab", "LRP-ab"), ("crp", "CRP")):
            h_det, h_par = (h[t:b, l:r] for h in swap_heat[(i, m)])
            vmax = max(viz.robust_max(h_det), viz.robust_max(h_par))  # shared: magnitudes comparable
            rr = M.class_discriminativeness(*swap_heat[(i, m)])
            if m == "lrp_ab":
                images.append(
                    viz.overlay(
                        crop, np.zeros(crop.shape[:2]), box=box, label=f"{det} {c.score:.2f}", scale=scale, alpha=0.0
                    )
                )
                titles.append(f"scene {c.scene}: {det} (pair {det}/{par})")
            else:
                images.append(
                    viz.overlay(crop, c.part_mask[t:b, l:r].astype(np.float32), vmax=1.0, scale=scale, alpha=0.5)
                )
                titles.append(f"discriminative part ({'E/Q/R' if det in LARGER else 'F/O/P'} side)")
            suffix = "" if m == "lrp_ab" else " vs others"
            images.append(viz.overlay(crop, h_det, box=box, vmax=vmax, scale=scale))
            titles.append(f"{name}: {det}{suffix}")
            images.append(viz.overlay(crop, h_par, box=box, vmax=vmax, scale=scale))
            titles.append(f"{name}: {par}{suffix}  (r = {rr:.2f})")
    if not images:
        img = Image.new("RGB", (400, 40), "white")
        ImageDraw.Draw(img).text((8, 12), "no detection of a confusable pair to show", fill="black", font=viz.font(12))
        return img
    g = viz.grid(images, titles, ncols=3, font_size=11)
    head = Image.new("RGB", (g.width, 34), "white")
    ImageDraw.Draw(head).text(
        (6, 4),
        "Class swap: same box, detected class (middle) vs its confusable partner (right).\n"
        "Red = for the class, blue = against; each row shares one colour scale.",
        fill="black",
        font=viz.font(11),
    )
    out = Image.new("RGB", (g.width, g.height + head.height), "white")
    out.paste(head, (0, 0))
    out.paste(g, (0, head.height))
    return out


def _layer_axis(flows: dict) -> list[str]:
    """Layers on some detection's path (abs relevance > 0 for LRP-ab), input first, all
    classification heads merged into one "cls head" point, localization heads left out."""
    order: list[str] = ["input"]
    for _i, per in flows.items():
        layers, _ = per["lrp_ab"]["cls"]
        for name, (_, a) in layers.items():
            if name.startswith("loc_"):
                continue
            key = "cls head" if name.startswith("cls_") else name
            if a > 0 and key not in order:
                order.append(key)
    # keep forward order (dict order of the flow), heads last
    fwd = ["input"]
    any_layers = next(iter(flows.values()))["lrp_ab"]["cls"][0]
    for name in any_layers:
        if not name.startswith(("cls_", "loc_")) and name in order:
            fwd.append(name)
    if "cls head" in order:
        fwd.append("cls head")
    return fwd


def _series(flows: dict, axis: list[str], method: str, role: str, what: str) -> np.ndarray:
    """``[cases, layers]`` of total (what="total") or abs relevance; NaN off the path."""
    out = np.full((len(flows), len(axis)), np.nan)
    for r, (_i, per) in enumerate(flows.items()):
        if method not in per or role not in per[method]:
            continue
        layers, (tot_in, abs_in) = per[method][role]
        path = {k: v for k, v in per["lrp_ab"]["cls"][0].items() if v[1] > 0}
        for j, name in enumerate(axis):
            if name == "input":
                val = (tot_in, abs_in)
            elif name == "cls head":
                heads = [k for k in path if k.startswith("cls_")]
                if not heads:
                    continue
                val = layers[heads[0]]
            elif name in path:
                val = layers[name]
            else:
                continue
            out[r, j] = val[0] if what == "total" else val[1]
    return out


def relevance_flow_figure(flows: dict, cases: Sequence[Case], model) -> tuple[Image.Image, str]:
    """Per-layer relevance (``relevance_flow``) of the detections from the most
    common source feature map (so that every point of a curve has the same population and
    the same path input -> source -> class head)."""
    groups: dict[int, dict] = {}
    for i, per in flows.items():
        groups.setdefault(cases[i].source, {})[i] = per
    src = max(groups, key=lambda k: (len(groups[k]), -k))
    flows = groups[src]
    f = model.config.feature_sizes()[src]
    axis = _layer_axis(flows)
    lrp_abs = _series(flows, axis, "lrp_ab", "cls", "abs")
    lrp_tot = _series(flows, axis, "lrp_ab", "cls", "total")
    crp_abs = _series(flows, axis, "crp", "cls", "abs")
    crp_tot = _series(flows, axis, "crp", "cls", "total")
    pair_abs = _series(flows, axis, "crp", "pair", "abs")
    pair_tot = _series(flows, axis, "crp", "pair", "total")
    with np.errstate(divide="ignore", invalid="ignore"):
        share = pair_abs / lrp_abs  # ||R_l(det) - R_l(partner)||_1 / ||R_l(det)||_1 under LRP-ab

    def stats(a):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(a, 0), np.nanpercentile(a, 25, 0), np.nanpercentile(a, 75, 0)

    RED, BLUE, ORANGE = (200, 30, 40), (30, 90, 180), (230, 120, 0)
    panels = [
        dict(
            title="absolute relevance at each layer's output, sum |R_l| (log scale)",
            log=True,
            series=[
                ("LRP-ab, one-hot det", BLUE, stats(lrp_abs)),
                ("CRP, det vs others", RED, stats(crp_abs)),
                ("CRP, det vs partner = LRP-ab(det) - LRP-ab(partner)", ORANGE, stats(pair_abs)),
            ],
        ),
        dict(
            title="total relevance at each layer's output, sum R_l (initial: 1 one-hot, 0 contrast)",
            log=False,
            ylim=(-0.1, 1.1),
            series=[
                ("LRP-ab, one-hot det", BLUE, stats(lrp_tot)),
                ("CRP, det vs others", RED, stats(crp_tot)),
                ("CRP, det vs partner", ORANGE, stats(pair_tot)),
            ],
        ),
    ]
    img = line_chart(
        panels,
        axis,
        f"Relevance flow, input -> source {src} ({f}x{f} cells) -> class head: "
        f"median (band: quartiles) over its {len(flows)} detections",
    )
    med = stats(share)[0]
    tl, tc, tp = stats(lrp_tot)[0], stats(crp_tot)[0], stats(pair_tot)[0]
    la, ca, pa = stats(lrp_abs)[0], stats(crp_abs)[0], stats(pair_abs)[0]
    lines = [
        f"{len(flows)} detections of source {src} ({f}x{f} cells), the most common source among the matched ones.",
        "",
        "| layer | Σ R LRP-ab | Σ|R| LRP-ab | Σ R CRP | Σ|R| CRP (others) | Σ R CRP (pair) | Σ|R| CRP (pair) | class-specific share of LRP-ab |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for j, name in enumerate(axis):
        lines.append(
            f"| {name} | {tl[j]:.3g} | {la[j]:.3g} | {tc[j]:.1e} | {ca[j]:.3g} | {tp[j]:.1e} | {pa[j]:.3g} | {med[j]:.3g} |"
        )
    lines += [
        "",
        "class-specific share = ‖R_l(det) − R_l(partner)‖₁ / ‖R_l(det)‖₁ under LRP-ab, i.e. Σ|R| of CRP (pair) "
        "over Σ|R| of LRP-ab (the class path of both uses the same rules, so CRP (pair) is exactly the difference "
        "of the two LRP-ab relevances at every layer).",
    ]
    src_j = max(j for j, name in enumerate(axis) if name not in ("cls head",) and not name.startswith("cls_"))
    numbers = {"source": src, "head": float(med[-1]), "source_value": float(med[src_j]), "input": float(med[0])}
    return img, ("\n".join(lines), numbers)
