"""Pictures of a report: PNG overlays (through ``crp_jax.viz``) and small inline SVG charts.

Colour scale (the one scale of every map, ``crp_jax.viz.colorize``): red = relevance *for*
the question asked, blue = *against* it, no colour (the grey image shows through) = zero.
Each map is scaled symmetrically to its own 99.5th percentile of ``|R|`` (full colour at and
beyond it), so colours compare *within* a map; the pages print each map's maximum ``|R|``
for comparisons across maps. :func:`legend_png` draws that scale.

Charts are inline SVG (no script, no external file): they scale with the page and carry
``role="img"`` and a text description for screen readers.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from crp_jax import viz

#: Line styles of the methods in the flow chart: (stroke colour, dash pattern). Neither red
#: nor blue, which belong to the relevance scale.
_LINE = {"crp": ("#111111", ""), "lrp_ab": ("#8a8a8a", "5 3")}


def save_png(img: Image.Image, path: Path) -> Path:
    """Write ``img`` as a PNG (zlib level 6; ``optimize=True`` would take 6x longer for about
    10 % smaller files, more than the explanations themselves cost)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def legend_png(width: int = 256, height: int = 14) -> Image.Image:
    """The colour scale from -1 (left, blue: against) through 0 (white) to +1 (red: for)."""
    ramp = np.tile(np.linspace(-1.0, 1.0, width, dtype=np.float32), (height, 1))
    return Image.fromarray(viz.colorize(ramp, vmax=1.0))


def overview_png(pixels, boxes, det, class_names, scale: int) -> Image.Image:
    """The image with every detection boxed and tagged ``#N class score`` (N from 0)."""
    names = [f"#{i} {class_names[int(k)] if 0 <= int(k) < len(class_names) else k}" for i, k in enumerate(det.labels)]
    return viz.draw_detections(pixels, boxes, np.arange(len(det)), det.scores, names, scale=scale)


def overlay_png(pixels, heatmap, box, scale: int) -> Image.Image:
    """One relevance map over the (grey) image with the detection's box, on the report's scale."""
    return viz.overlay(pixels, heatmap, box=box, scale=scale)


# ---- SVG --------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    return f"{v:.0e}" if a < 1e-2 or a >= 1e4 else f"{v:.3g}"


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    span = hi - lo
    if not span > 0:
        return [lo]
    raw = span / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    while True:
        first = math.ceil(lo / step) * step
        ticks = [first + j * step for j in range(int((hi - first) / step + 1e-9) + 1)]
        if len(ticks) >= 3 or step < span * 1e-6:
            return [0.0 if abs(t) < step * 1e-9 else t for t in ticks]
        step /= 2


def _polyline(xs, ys, colour: str, dash: str) -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"{d}/>'


def flow_svg(layers: Sequence[str], series: dict[str, dict[str, Sequence[float]]], titles: dict[str, str]) -> str:
    """Per-layer relevance as two small line charts (input on the left, the head on the right):
    absolute relevance ``sum |R|`` on a log scale, and total relevance ``sum R``.

    ``series[method] = {"abs": [L], "total": [L]}`` over ``layers``; ``titles`` names the
    methods in the legend."""
    W, H, left, right, top, bottom = 300, 190, 46, 8, 22, 58
    n = len(layers)
    xs = [left + (W - left - right) * (j / max(1, n - 1)) for j in range(n)]
    panels = []
    for p, (what, title) in enumerate((("abs", "Σ|R| per layer (log scale)"), ("total", "Σ R per layer"))):
        vals = [np.asarray(s[what], np.float64) for s in series.values()]
        if what == "abs":
            floor = min((v[v > 0].min() for v in vals if (v > 0).any()), default=1e-6)
            vals = [np.log10(np.maximum(v, floor)) for v in vals]
        lo = min(float(v.min()) for v in vals)
        hi = max(float(v.max()) for v in vals)
        if what == "total":
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.08 * (hi - lo)
        lo, hi = lo - pad, hi + pad

        def y(v, lo=lo, hi=hi):
            return top + (H - top - bottom) * (1.0 - (v - lo) / (hi - lo))

        ox = p * W
        g = [f'<g transform="translate({ox},0)">', f'<text x="{left}" y="14" class="ct">{html.escape(title)}</text>']
        g.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{H - bottom}" class="ax"/>')
        g.append(f'<line x1="{left}" y1="{H - bottom}" x2="{W - right}" y2="{H - bottom}" class="ax"/>')
        if what == "abs" and hi - lo > 1.5:  # a decade or more: ticks at powers of ten
            ticks = [float(t) for t in range(math.ceil(lo), math.floor(hi) + 1)]
        else:
            ticks = _nice_ticks(lo, hi, 3)
        for t in ticks:
            label = _fmt(10.0**t) if what == "abs" else _fmt(float(t))
            g.append(f'<text x="{left - 4}" y="{y(t) + 3:.1f}" class="tk" text-anchor="end">{label}</text>')
            g.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{W - right}" y2="{y(t):.1f}" class="gr"/>')
        if what == "total" and lo < 0 < hi:
            g.append(f'<line x1="{left}" y1="{y(0):.1f}" x2="{W - right}" y2="{y(0):.1f}" class="ax"/>')
        for j, name in enumerate(layers):
            g.append(
                f'<text transform="translate({xs[j]:.1f},{H - bottom + 8}) rotate(-60)" class="tk" '
                f'text-anchor="end">{html.escape(name)}</text>'
            )
        for (method, _), v in zip(series.items(), vals):
            colour, dash = _LINE.get(method, ("#555555", "2 2"))
            g.append(_polyline(xs, [y(float(u)) for u in v], colour, dash))
        g.append("</g>")
        panels.append("".join(g))
    legend = []
    for j, method in enumerate(series):
        colour, dash = _LINE.get(method, ("#555555", "2 2"))
        x0 = left + j * 130
        d = f' stroke-dasharray="{dash}"' if dash else ""
        legend.append(
            f'<line x1="{x0}" y1="{H + 2}" x2="{x0 + 24}" y2="{H + 2}" stroke="{colour}" stroke-width="2"{d}/>'
            f'<text x="{x0 + 30}" y="{H + 6}" class="tk">{html.escape(titles.get(method, method))}</text>'
        )
    desc = "; ".join(
        f"{titles.get(m, m)}: Σ|R| from {_fmt(s['abs'][0])} at {layers[0]} to {_fmt(s['abs'][-1])} at {layers[-1]}"
        for m, s in series.items()
    )
    return (
        f'<svg class="chart" viewBox="0 0 {2 * W} {H + 12}" role="img" aria-label="relevance per layer. {html.escape(desc)}">'
        f"<title>Relevance per layer</title>{''.join(panels)}{''.join(legend)}</svg>"
    )


def interval_svg(rows: Sequence[str], cells: Sequence[tuple[float, float, float] | None], title: str) -> str:
    """One metric across methods as dots with 95 % bootstrap whiskers (``cells[i] =
    (estimate, lo, hi)`` or None for a row without a value)."""
    W, row_h, left, right, top = 320, 22, 110, 14, 26
    H = top + row_h * len(rows) + 24
    vals = [v for c in cells if c is not None for v in c]
    lo, hi = (min(vals + [0.0]), max(vals + [0.0])) if vals else (0.0, 1.0)
    if hi - lo < 1e-12:
        hi = lo + 1.0
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def x(v):
        return left + (W - left - right) * (v - lo) / (hi - lo)

    out = [f'<text x="4" y="16" class="ct">{html.escape(title)}</text>']
    out.append(f'<line x1="{x(0):.1f}" y1="{top - 4}" x2="{x(0):.1f}" y2="{H - 22}" class="ax"/>')
    for t in _nice_ticks(lo, hi):
        out.append(f'<line x1="{x(t):.1f}" y1="{H - 22}" x2="{x(t):.1f}" y2="{H - 18}" class="ax"/>')
        out.append(f'<text x="{x(t):.1f}" y="{H - 6}" class="tk" text-anchor="middle">{_fmt(float(t))}</text>')
    for i, (name, c) in enumerate(zip(rows, cells)):
        yy = top + row_h * i + row_h / 2
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" class="tk" text-anchor="end">{html.escape(name)}</text>')
        if c is None:
            continue
        est, a, b = c
        out.append(
            f'<line x1="{x(a):.1f}" y1="{yy:.1f}" x2="{x(b):.1f}" y2="{yy:.1f}" stroke="#333" stroke-width="2"/>'
        )
        out.append(f'<circle cx="{x(est):.1f}" cy="{yy:.1f}" r="4" fill="#111"/>')
    desc = "; ".join(f"{r}: {_fmt(c[0])} [{_fmt(c[1])}, {_fmt(c[2])}]" for r, c in zip(rows, cells) if c is not None)
    return (
        f'<svg class="chart small" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}. {html.escape(desc)}">'
        f"<title>{html.escape(title)}</title>{''.join(out)}</svg>"
    )


#: Colours of the errors view's boxes: the object or box a case is about (dashed), the box
#: that was kept or detected (solid). Neither red nor blue, which belong to relevance.
ERROR_DASHED = (255, 200, 0)
ERROR_SOLID = (0, 170, 60)


def error_png(pixels, heatmap, boxes: Sequence[dict], scale: int) -> Image.Image:
    """One error case's map over the (grey) image, with its boxes (``{"box": xyxy in the
    image's pixels, "dashed": bool, "label": str}``): a missed object or a removed box dashed,
    kept or detected boxes solid."""
    from PIL import ImageDraw

    img = viz.overlay(pixels, heatmap, scale=scale)
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 150))
    f = viz.font(max(9, round(min(img.size) / 22)))
    for b in boxes:
        x1, y1, x2, y2 = (float(v) * scale for v in b["box"])
        colour = ERROR_DASHED if b["dashed"] else ERROR_SOLID
        if b["dashed"]:
            _dashed_rectangle(draw, (x1, y1, x2, y2), colour, width, dash=max(4, 3 * width))
        else:
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        draw.text((x1 + width + 1, y1 + width), b["label"], fill=colour, font=f, stroke_width=1, stroke_fill=(0, 0, 0))
    return img


def _dashed_rectangle(draw, box, colour, width: int, dash: int) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = math.hypot(bx - ax, by - ay)
        n = max(1, int(length // (2 * dash)))
        for j in range(n + 1):
            t0, t1 = 2 * j * dash / max(length, 1e-9), min(1.0, (2 * j + 1) * dash / max(length, 1e-9))
            if t0 >= 1.0:
                break
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                      fill=colour, width=width)  # fmt: skip
