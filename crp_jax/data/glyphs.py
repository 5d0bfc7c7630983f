"""Glyph classes and glyph rendering: the one piece of code that draws letters.

The data set's classes are six capital letters forming three confusable pairs in which
one glyph contains the other (docs/design.md §4)::

    E ⊃ F   (E adds the bottom bar)
    Q ⊃ O   (Q adds the tail)
    R ⊃ P   (R adds the leg)

Everything is drawn with Pillow's built-in scalable font, ``ImageFont.load_default(size=N)``
(Aileron Regular, embedded in Pillow >= 10.1, rendered by FreeType; no font file is read
from the system). Glyphs are made bold with FreeType's stroker: ``stroke_width =
max(1, STROKE_FRACTION * font_size)`` pixels (a float; recent Pillow (13 here) accepts fractional
widths; older ones get the width rounded). The stroke keeps 12-pixel glyphs legible (every bar at least 3 px thick) and it
makes the containment relations tighter: the regular weight's R bowl is about 5 % larger
than P's, a boundary sliver that the stroke shrinks to about 2 %.

Coordinates: a glyph is drawn with anchor ``"ls"`` (left end of the baseline) at an integer
pixel position, the *origin*. Both glyphs of a pair are drawn at the same origin, font size
and stroke, so that their set difference is the discriminative part and nothing else
(their advance widths differ, so centring or a union-bbox anchor would shift one against
the other). At integer origins FreeType's rasterisation is translation invariant, so a glyph
is rendered once per (letter, font size, stroke) and cached.

Ink: a pixel belongs to a glyph's ink when its anti-aliased coverage is at least
``INK_THRESHOLD`` / 255 (half covered).

Measured containment of the built-in font here (Pillow 13.0, FreeType 2.14), every integer
font size 15..171 with the stroke rule above, share of the smaller glyph's ink outside the
larger one's: F in E at most 0.036 (mean 0.006), O in Q at most 0.011 (mean 0.003), P in R
at most 0.042 (mean 0.020). The residue is one-pixel slivers along edges (hinting rounds
the two outlines differently at some sizes; R's bowl is a little smaller than P's by
design). All three pairs meet the < 0.05 bar, so all three are used.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CLASS_NAMES",
    "FOREGROUND_CLASSES",
    "NUM_CLASSES",
    "PAIRS",
    "PARTNER",
    "LARGER",
    "SMALLER",
    "INK_THRESHOLD",
    "STROKE_FRACTION",
    "Glyph",
    "GlyphPair",
    "class_index",
    "partner_label",
    "default_stroke_width",
    "render_glyph",
    "render_pair",
]

#: Class order; index 0 is background (also used for padding in batches).
CLASS_NAMES: tuple[str, ...] = ("__background__", "E", "F", "O", "Q", "P", "R")
FOREGROUND_CLASSES: tuple[str, ...] = CLASS_NAMES[1:]
NUM_CLASSES: int = len(CLASS_NAMES)
#: The confusable pairs, as named in docs/design.md §4 (not ordered by size; see LARGER).
PAIRS: tuple[tuple[str, str], ...] = (("E", "F"), ("O", "Q"), ("P", "R"))
#: Each foreground class mapped to its pair partner.
PARTNER: dict[str, str] = {a: b for p in PAIRS for a, b in (p, p[::-1])}
#: The glyph of each pair that contains the other (it has the extra part).
LARGER: frozenset[str] = frozenset({"E", "Q", "R"})
SMALLER: frozenset[str] = frozenset({"F", "O", "P"})

INK_THRESHOLD: int = 128
STROKE_FRACTION: float = 0.045


def class_index(name: str) -> int:
    """Index of a class name in ``CLASS_NAMES``."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        from crp_jax.errors import ConfigError

        raise ConfigError(f"unknown class {name!r}; expected one of {CLASS_NAMES}") from None


def partner_label(label: int) -> int:
    """Label index of the pair partner of a foreground label (1..6)."""
    if not 1 <= int(label) < NUM_CLASSES:
        from crp_jax.errors import ConfigError

        raise ConfigError(f"label {label!r} is not a foreground class index 1..{NUM_CLASSES - 1}")
    return CLASS_NAMES.index(PARTNER[CLASS_NAMES[int(label)]])


def default_stroke_width(font_size: int) -> float:
    """Bold stroke (pixels) used for a given font size: ``max(1, 0.045 * font_size)``."""
    return max(1.0, STROKE_FRACTION * float(font_size))


@functools.lru_cache(maxsize=512)
def _font(font_size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=font_size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow < 10.1 or no FreeType
        raise RuntimeError(
            "crp_jax.data needs Pillow >= 10.1 built with FreeType: "
            "ImageFont.load_default(size=...) did not return a scalable font"
        )
    return font


@dataclass(frozen=True)
class Glyph:
    """A rendered glyph: anti-aliased coverage ``alpha`` (uint8 [h, w], read-only) whose
    pixel [0, 0] lies at (x0, y0) relative to the origin (left end of the baseline)."""

    alpha: np.ndarray
    x0: int
    y0: int

    @property
    def ink(self) -> np.ndarray:
        return self.alpha >= INK_THRESHOLD


@functools.lru_cache(maxsize=4096)
def render_glyph(char: str, font_size: int, stroke_width: float | None = None) -> Glyph:
    """Render one letter with the built-in font, anchor "ls", bold by ``stroke_width``
    (default :func:`default_stroke_width`). Cached; the returned arrays are read-only."""
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"render_glyph draws one character, got {char!r}")
    font_size = int(font_size)
    if font_size < 1:
        raise ValueError(f"font_size must be >= 1, got {font_size}")
    stroke = default_stroke_width(font_size) if stroke_width is None else float(stroke_width)
    font = _font(font_size)
    try:
        left, top, right, bottom = font.getbbox(char, anchor="ls", stroke_width=stroke)
    except TypeError:  # Pillow < 11
        left, top, right, bottom = font.getbbox(char, anchor="ls", stroke_width=round(stroke))
    # one spare pixel on each side: getbbox can be a pixel short of the stroked raster
    x0, y0 = math.floor(left) - 1, math.floor(top) - 1
    w, h = math.ceil(right) + 1 - x0, math.ceil(bottom) + 1 - y0
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    try:
        draw.text((-x0, -y0), char, font=font, fill=255, anchor="ls", stroke_width=stroke, stroke_fill=255)
    except TypeError:  # Pillow < 11 takes integer stroke widths only (geometry then differs)
        draw.text((-x0, -y0), char, font=font, fill=255, anchor="ls", stroke_width=round(stroke), stroke_fill=255)
    alpha = np.asarray(canvas, dtype=np.uint8).copy()
    # crop to the nonzero coverage so that offsets describe the ink's neighbourhood exactly
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if rows.size:
        alpha = alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
        x0, y0 = x0 + int(cols[0]), y0 + int(rows[0])
    alpha.setflags(write=False)
    return Glyph(alpha, int(x0), int(y0))


@dataclass(frozen=True)
class GlyphPair:
    """A glyph and its pair partner drawn at the same origin, font size and stroke, on a
    common local frame whose pixel [0, 0] lies at (x0, y0) relative to the origin.

    ``alpha``/``ink``: the glyph itself. ``part``: the discriminative part, ink of the larger
    glyph of the pair minus ink of the smaller one — the same pixels for both members: for
    E, Q, R it lies inside the glyph's own ink (the bar, tail, leg it has), for F, O, P it
    lies outside its ink (where the partner's bar, tail, leg would be). ``footprint``: union
    of both glyphs' ink (what the pair occupies). All arrays read-only.
    """

    char: str
    font_size: int
    stroke_width: float
    alpha: np.ndarray
    ink: np.ndarray
    partner_ink: np.ndarray
    part: np.ndarray
    footprint: np.ndarray
    x0: int
    y0: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.alpha.shape  # type: ignore[return-value]


def _open2x2(mask: np.ndarray) -> np.ndarray:
    """Morphological opening with a 2x2 square: the union of all 2x2 blocks inside ``mask``.
    Removes one-pixel-wide slivers, keeps anything at least two pixels thick."""
    out = np.zeros_like(mask)
    if mask.shape[0] < 2 or mask.shape[1] < 2:
        return out
    core = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
    out[:-1, :-1] |= core
    out[1:, :-1] |= core
    out[:-1, 1:] |= core
    out[1:, 1:] |= core
    return out


@functools.lru_cache(maxsize=2048)
def render_pair(char: str, font_size: int, stroke_width: float | None = None) -> GlyphPair:
    """Render ``char`` and ``PARTNER[char]`` with identical parameters (via
    :func:`render_glyph`) and derive ink, part and footprint on a common frame."""
    if char not in PARTNER:
        raise ValueError(f"{char!r} is not one of the glyph classes {FOREGROUND_CLASSES}")
    font_size = int(font_size)
    stroke = default_stroke_width(font_size) if stroke_width is None else float(stroke_width)
    own = render_glyph(char, font_size, stroke)
    other = render_glyph(PARTNER[char], font_size, stroke)
    x0, y0 = min(own.x0, other.x0), min(own.y0, other.y0)
    x1 = max(own.x0 + own.alpha.shape[1], other.x0 + other.alpha.shape[1])
    y1 = max(own.y0 + own.alpha.shape[0], other.y0 + other.alpha.shape[0])

    def place(g: Glyph) -> np.ndarray:
        a = np.zeros((y1 - y0, x1 - x0), np.uint8)
        a[g.y0 - y0 : g.y0 - y0 + g.alpha.shape[0], g.x0 - x0 : g.x0 - x0 + g.alpha.shape[1]] = g.alpha
        return a

    alpha, other_alpha = place(own), place(other)
    ink, partner_ink = alpha >= INK_THRESHOLD, other_alpha >= INK_THRESHOLD
    big, small = (ink, partner_ink) if char in LARGER else (partner_ink, ink)
    part = _open2x2(big & ~small)
    footprint = ink | partner_ink
    for a in (alpha, ink, partner_ink, part, footprint):
        a.setflags(write=False)
    return GlyphPair(char, font_size, stroke, alpha, ink, partner_ink, part, footprint, x0, y0)
