"""Line charts drawn with Pillow (no matplotlib): stacked panels of median lines with
quartile bands over a shared categorical axis (e.g. layers, or the steps of a cascade).

Used by ``crp_jax.eval.quality`` for the relevance-flow and model-randomization figures.
The report's inline SVG charts (``crp_jax/report/figures.py``) are vector graphics drawn
as markup, a different technique; they share nothing with this beyond the idea of round
tick values.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from crp_jax import viz

__all__ = ["line_chart"]


def line_chart(
    panels,
    xlabels,
    title,
    width: int = 980,
    panel_h: int = 230,
    footer: str = "layer (forward order): input -> VGG convs -> source feature map -> classification head conv",
) -> Image.Image:
    """Stacked line-chart panels sharing a categorical x axis, drawn with Pillow.

    ``panels``: dicts with ``title``, ``log`` (log-scaled y axis), optional ``ylim`` ``(lo,
    hi)`` for a linear axis, and ``series``: ``(name, (r, g, b), (median, q1, q3))`` with
    three ``[len(xlabels)]`` arrays (NaN leaves a gap); the median is drawn as a line with
    dots over a light band from ``q1`` to ``q3``. ``xlabels`` are drawn rotated below the
    last panel, ``footer`` under them. Returns an RGB image ``width`` pixels wide.
    """
    f, fs = viz.font(12), viz.font(10)
    left, right, top_pad = 70, 250, 30
    label_h = 90
    H = top_pad + len(panels) * (panel_h + 34) + label_h
    img = Image.new("RGB", (width, H), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black", font=f)
    n = len(xlabels)
    pw = width - left - right
    xs = [left + (j + 0.5) * pw / n for j in range(n)]
    y = top_pad
    for p in panels:
        y0, y1 = y + 22, y + 22 + panel_h
        d.text((left, y + 4), p["title"], fill="black", font=f)
        vals = np.concatenate([np.concatenate([s[2][0], s[2][1], s[2][2]]) for s in p["series"]])
        vals = vals[np.isfinite(vals)]
        if p["log"]:
            vals = vals[vals > 0]
            lo = math.floor(math.log10(vals.min())) if vals.size else -3
            hi = math.ceil(math.log10(vals.max())) if vals.size else 1
            hi = max(hi, lo + 1)
            tf = lambda v: (math.log10(v) - lo) / (hi - lo) if v > 0 else None  # noqa: E731
            ticks = [(10.0**e, f"1e{e}") for e in range(lo, hi + 1)]
            if len(ticks) > 9:
                step = math.ceil(len(ticks) / 9)
                ticks = ticks[::step]
        else:
            lo, hi = p.get("ylim", (float(vals.min()) if vals.size else 0, float(vals.max()) if vals.size else 1))
            tf = lambda v: (v - lo) / (hi - lo)  # noqa: E731
            ticks = _nice_ticks(lo, hi)
        ypix = lambda t: y1 - t * (y1 - y0)  # noqa: E731
        d.rectangle([left, y0, left + pw, y1], outline=(0, 0, 0))
        for v, lab in ticks:
            t = tf(v)
            if t is None or not -0.01 <= t <= 1.01:
                continue
            yy = ypix(t)
            d.line([left, yy, left + pw, yy], fill=(225, 225, 225))
            d.line([left - 4, yy, left, yy], fill=(0, 0, 0))
            d.text((left - 6 - d.textlength(lab, font=fs), yy - 6), lab, fill="black", font=fs)
        for x in xs:
            d.line([x, y1, x, y1 + 3], fill=(0, 0, 0))
        ly = y0 + 4
        for _name, colour, (_med, q1, q3) in p["series"]:
            band = tuple(int(255 - 0.25 * (255 - c)) for c in colour)
            for j in range(n - 1):
                pts = [(q1[j], q3[j]), (q1[j + 1], q3[j + 1])]
                ts = [
                    (tf(a), tf(b))
                    if np.isfinite(a) and np.isfinite(b) and tf(a) is not None and tf(b) is not None
                    else None
                    for a, b in pts
                ]
                if ts[0] and ts[1]:
                    poly = [
                        (xs[j], ypix(_cl(ts[0][0]))),
                        (xs[j + 1], ypix(_cl(ts[1][0]))),
                        (xs[j + 1], ypix(_cl(ts[1][1]))),
                        (xs[j], ypix(_cl(ts[0][1]))),
                    ]
                    d.polygon(poly, fill=band)
        for name, colour, (med, _q1, _q3) in p["series"]:
            prev = None
            for j in range(n):
                t = tf(med[j]) if np.isfinite(med[j]) else None
                if t is None:
                    prev = None
                    continue
                pt = (xs[j], ypix(_cl(t)))
                if prev is not None:
                    d.line([prev, pt], fill=colour, width=2)
                d.ellipse([pt[0] - 2.5, pt[1] - 2.5, pt[0] + 2.5, pt[1] + 2.5], fill=colour)
                prev = pt
            d.line([left + pw + 10, ly + 6, left + pw + 28, ly + 6], fill=colour, width=3)
            for k, part in enumerate(_wrap(name, 30)):
                d.text((left + pw + 32, ly + k * 12), part, fill="black", font=fs)
            ly += 12 * len(_wrap(name, 30)) + 6
        y = y1 + 12
    # x labels, rotated
    for x, lab in zip(xs, xlabels):
        tw = int(d.textlength(lab, font=fs)) + 4
        t = Image.new("L", (tw, 14), 0)  # a mask: neighbouring labels must not blank each other
        ImageDraw.Draw(t).text((2, 0), lab, fill=255, font=fs)
        t = t.rotate(60, expand=True, fillcolor=0)
        img.paste((0, 0, 0), (int(x - t.width + 6), int(y + 2)), t)
    d.text((left, H - 16), footer, fill=(90, 90, 90), font=fs)
    return img


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[tuple[float, str]]:
    raw = (hi - lo) / max(n, 1) or 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + 1e-12:
        out.append((v, f"{v:.3g}" if abs(v) > 1e-12 else "0"))
        v += step
    return out


def _cl(t: float) -> float:
    return min(1.0, max(0.0, t))


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])
