"""Procedurally generated glyph-detection scenes (docs/design.md §4).

``generate_scene(seed, index, spec)`` is a pure function of its arguments: the random
stream is ``numpy.random.default_rng([STREAM_VERSION, seed, index])`` (PCG64, identical on
every platform), the image arithmetic is elementwise float32 (no BLAS, no transcendental
functions, so no machine-dependent rounding), shapes and glyphs are rasterised by Pillow.
Same (seed, index, spec) and the same numpy / Pillow (FreeType) versions give bit-identical
arrays on any machine; a different FreeType may move glyph edges by a pixel.

A scene, in drawing order:

1. Background: a smooth random colour gradient (bilinear over a 2x2..4x4 grid of random
   colours), a mid-frequency texture (bilinear noise on an S/8 grid), and clutter that is
   not a glyph: thin lines, arcs (at most 3/4 of a turn) and scribbles 0.5..1.5 px wide and
   filled ellipses (blobs), anti-aliased (drawn at 2x and reduced).
2. Objects, largest first (so small glyphs lie on top of big ones). Each: a uniform random
   class, a size drawn log-uniformly between ``min_object_size`` px and
   ``max_object_frac * image_size`` (size = longer side of the union of the glyph and its
   pair partner drawn at the same place; the font size is chosen from it), a random integer
   origin that keeps the whole glyph inside the image, and a random colour whose luminance
   differs by at least 60/255 from 95 % of the pixels under the pair's footprint (best of
   12 tries, black and white included, when none does). The glyph is alpha-composited with
   its anti-aliased coverage.
3. Sensor noise (uniform, zero mean, std 2..8 x clutter, over everything), rounding to uint8.

Overlap. With probability ``allow_overlap`` an object may overlap earlier ones; otherwise
its footprint box keeps at least one pixel away from every earlier footprint box (30 tries,
after which it may overlap anyway, unless ``allow_overlap == 0``). An overlapping placement is accepted only if, for every
earlier object, at most ``max_occlusion`` of its ink and at most ``max_part_occlusion`` of
its discriminative-part region end up covered by later glyphs' ink, its own part region is
at most ``max_part_occlusion`` covered by earlier visible ink, and its footprint box has
IoU <= 0.5 with every earlier one. Failing 30 tries, the size shrinks by 0.8 and it tries
again; an object that cannot be placed at ``min_object_size`` is dropped (rare; the first
object always fits, so every scene has at least one object).

Per object (N objects, S = image size):

- ``labels[i]``: class index into ``CLASS_NAMES`` (1..6).
- ``masks[i]``: the glyph's *visible* ink: pixels with coverage >= 50 % minus the ink of
  every glyph drawn after it (occluded pixels are removed from earlier objects' masks).
  Masks of different objects are disjoint.
- ``boxes[i]``: tight box of ``masks[i]``, xyxy in pixel-edge coordinates: pixel (row r,
  column c) spans [c, c+1) x [r, r+1), so the box is (min c, min r, max c + 1, max r + 1).
  Divide by S for normalised coordinates.
- ``part_masks[i]``: the discriminative part. Render the glyph and its pair partner at the
  same origin, font size and stroke; the region is ink(larger) minus ink(smaller) (the
  bottom bar of E, the tail of Q, the leg of R), opened with a 2x2 square to drop
  one-pixel hinting slivers; the same region for both members of a pair. Then remove the
  pixels that are visible ink of any *other* object. For E, Q, R the result lies inside
  ``masks[i]``; for F, O, P it lies outside the glyph's own ink — it is where the partner's
  bar / tail / leg would be, i.e. the place whose *emptiness* tells F from E — and can
  extend beyond ``boxes[i]`` (F's box stops above E's bottom bar).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from crp_jax.data.glyphs import (
    CLASS_NAMES,
    FOREGROUND_CLASSES,
    NUM_CLASSES,
    GlyphPair,
    render_pair,
)

__all__ = [
    "STREAM_VERSION",
    "SceneSpec",
    "Scene",
    "generate_scene",
    "iter_scenes",
    "generate_dataset",
    "make_batch",
]

#: Part of every scene's seed; bump when the generator changes what it draws.
STREAM_VERSION = 1

_MIN_CONTRAST = 60.0  # luminance units (0..255)
_MAX_LOW_CONTRAST = 0.05  # share of footprint pixels allowed below _MIN_CONTRAST
_COLOUR_TRIES = 12
_POSITION_TRIES = 30
_SHRINK = 0.8
_MAX_BOX_IOU = 0.5
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _config_error(msg: str) -> Exception:
    from crp_jax.errors import ConfigError

    return ConfigError(msg)


def _input_error(msg: str) -> Exception:
    from crp_jax.errors import InputError

    return InputError(msg)


@dataclass(frozen=True)
class SceneSpec:
    """What the generator draws. Frozen and hashable.

    image_size: side S of the square image in pixels.
    min_objects, max_objects: objects per scene, drawn uniformly in [min, max].
    min_object_size: smallest object size in pixels (size = longer side of the glyph pair's
        footprint, about the box's longer side); at least 10.
    max_object_frac: largest object size as a fraction of ``image_size``.
    allow_overlap: probability that an object may overlap earlier ones.
    max_occlusion: largest share of an object's ink that later objects may cover.
    max_part_occlusion: largest share of an object's discriminative-part region that other
        objects' ink may cover.
    clutter: amount of background texture, noise and clutter shapes (0 = a plain smooth
        gradient; 1 = default; 2 = busy).
    """

    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 4
    min_object_size: float = 12.0
    max_object_frac: float = 0.9
    allow_overlap: float = 0.3
    max_occlusion: float = 0.35
    max_part_occlusion: float = 0.1
    clutter: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 32:
            raise _config_error(f"image_size must be an integer >= 32, got {self.image_size!r}")
        if not (1 <= self.min_objects <= self.max_objects):
            raise _config_error(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0.0 < self.max_object_frac <= 1.0:
            raise _config_error(f"max_object_frac must be in (0, 1], got {self.max_object_frac}")
        if not 10.0 <= self.min_object_size <= self.max_object_frac * self.image_size:
            raise _config_error(
                f"min_object_size must be in [10, max_object_frac * image_size = "
                f"{self.max_object_frac * self.image_size:g}], got {self.min_object_size}"
            )
        for name in ("allow_overlap", "max_occlusion", "max_part_occlusion"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise _config_error(f"{name} must be in [0, 1], got {v}")
        if not 0.0 <= self.clutter <= 10.0:
            raise _config_error(f"clutter must be in [0, 10], got {self.clutter}")

    @property
    def max_object_size(self) -> float:
        return self.max_object_frac * self.image_size


@dataclass(frozen=True, eq=False)
class Scene:
    """One generated scene (see the module docstring for the exact definitions).

    image: uint8 [S, S, 3]; boxes: float32 [N, 4] xyxy pixels; labels: int32 [N] in 1..6;
    masks: bool [N, S, S] visible ink; part_masks: bool [N, S, S] discriminative part;
    clutter_mask: bool [S, S] pixels at least half covered by clutter shapes (lines, arcs,
    scribbles, blobs) and by no glyph's visible ink (None for scenes made without it).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    part_masks: np.ndarray
    clutter_mask: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        return int(self.labels.shape[0])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(CLASS_NAMES[int(k)] for k in self.labels)


# ----------------------------------------------------------------------------------------
# background


@functools.lru_cache(maxsize=64)
def _interp(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling of an n-node grid at ``size`` pixel centres: (i0, i1, frac)."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (n - 1) / size
    i0 = np.minimum(np.floor(pos).astype(np.intp), n - 2)
    frac = (pos - i0).astype(np.float32)
    for a in (i0, frac):
        a.setflags(write=False)
    return i0, i0 + 1, frac


def _upsample(nodes: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of nodes [n, n, C] to [size, size, C], elementwise float32."""
    i0, i1, f = _interp(nodes.shape[0], size)
    rows = nodes[i0] * (1 - f)[:, None, None] + nodes[i1] * f[:, None, None]  # [size, n, C]
    cols = np.ascontiguousarray(rows.transpose(1, 0, 2))  # [n, size, C]
    out = cols[i0]
    out += (cols[i1] - out) * f[:, None, None]
    return out.transpose(1, 0, 2)


def _background(rng: np.random.Generator, spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(image [S, S, 3] float32, clutter [S, S] bool)``: where the clutter shapes cover at
    least half a pixel."""
    S = spec.image_size
    g = int(rng.integers(2, 5))
    base = rng.uniform(0.0, 255.0, 3)
    spread = rng.uniform(30.0, 110.0)
    nodes = np.clip(base + rng.uniform(-spread, spread, (g, g, 3)), 0.0, 255.0).astype(np.float32)
    m = max(3, S // 8)
    # the gradient sampled on an m x m grid (bilinear), plus the texture there, then one
    # bilinear upsampling to S x S (cells of about 8 px)
    grid = _upsample(nodes, m)
    if spec.clutter > 0:
        amp = np.float32(spec.clutter * rng.uniform(4.0, 14.0))
        grid = grid + rng.uniform(-1.0, 1.0, (m, m, 3)).astype(np.float32) * amp
    img = _upsample(np.ascontiguousarray(grid), S)
    clutter = np.zeros((S, S), bool)
    if spec.clutter > 0:
        img, clutter = _clutter(rng, spec, img)
    return np.ascontiguousarray(img), clutter


def _clutter(rng: np.random.Generator, spec: SceneSpec, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin lines, arcs, scribbles and blobs, anti-aliased by drawing at 2x and reducing; and
    their coverage mask (the same shapes drawn on a second canvas: no random number more)."""
    S = spec.image_size
    count = int(rng.poisson(6.0 * spec.clutter))
    if count == 0:
        return img, np.zeros((S, S), bool)
    # all random numbers in two draws (per-call overhead dominates small draws)
    u = rng.random((count, 14))
    colours = rng.integers(0, 256, (count, 3))
    base = np.ascontiguousarray(np.rint(np.clip(img, 0, 255)).astype(np.uint8))
    canvas = Image.frombuffer("RGB", (S, S), base, "raw", "RGB", 0, 1)
    canvas = canvas.resize((2 * S, 2 * S), Image.Resampling.NEAREST)
    cover = Image.new("L", (2 * S, 2 * S), 0)
    draws = (ImageDraw.Draw(canvas), ImageDraw.Draw(cover))
    T = 2 * S  # 2x coordinates

    def span(x: float, lo: float, hi: float) -> int:
        return int(lo + x * (hi - lo))

    for k in range(count):
        v = u[k]
        kind = int(v[0] * 4)
        for draw, colour in zip(draws, (tuple(int(c) for c in colours[k]), 255)):
            _clutter_shape(draw, v, kind, colour, span, S, T)
    return (
        np.asarray(canvas.reduce(2), dtype=np.float32),
        np.asarray(cover.reduce(2)) >= 128,
    )


def _clutter_shape(draw, v, kind: int, colour, span, S: int, T: int) -> None:
    """One clutter shape of :func:`_clutter` (``v``: its 14 uniform numbers)."""
    width = 1 + int(v[1] * 3)  # 0.5 .. 1.5 px at 1x
    if kind == 0:  # straight line; ends may lie outside the image
        xy = [span(x, -T / 4, 5 * T / 4) for x in v[2:6]]
        draw.line(xy, fill=colour, width=width)
    elif kind == 1:  # arc, 30 .. 270 degrees
        cx, cy = span(v[2], 0, T), span(v[3], 0, T)
        rx, ry = span(v[4], 4, S), span(v[5], 4, S)
        start = span(v[6], 0, 360)
        draw.arc([cx - rx, cy - ry, cx + rx, cy + ry], start, start + span(v[7], 30, 270), fill=colour, width=width)
    elif kind == 2:  # scribble: a short random walk
        x, y = span(v[2], 0, T), span(v[3], 0, T)
        pts = [(x, y)]
        for j in range(4, 4 + 2 * (2 + int(v[12] * 3)), 2):
            x, y = x + span(v[j], -S / 3, S / 3), y + span(v[j + 1], -S / 3, S / 3)
            pts.append((x, y))
        draw.line(pts, fill=colour, width=width, joint="curve")
    else:  # blob
        cx, cy = span(v[2], 0, T), span(v[3], 0, T)
        rx, ry = span(v[4], 4, max(5, S // 3)), span(v[5], 4, max(5, S // 3))
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)


# ----------------------------------------------------------------------------------------
# objects


@functools.cache
def _extent_per_font_px(char: str) -> float:
    """Longer side of the pair footprint per unit font size (measured at size 200)."""
    p = render_pair(char, 200)
    rows, cols = np.flatnonzero(p.footprint.any(1)), np.flatnonzero(p.footprint.any(0))
    return max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / 200.0


def _fitting_pair(char: str, target: float, S: int) -> GlyphPair:
    fs = max(8, int(round(target / _extent_per_font_px(char))))
    pair = render_pair(char, fs)
    while fs > 8 and (pair.shape[0] > S or pair.shape[1] > S):
        fs -= 1
        pair = render_pair(char, fs)
    return pair


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class _Placed:
    __slots__ = ("label", "ink", "vis", "part", "fp_box", "ink_n", "part_n")

    def __init__(self, label: int, ink: np.ndarray, part: np.ndarray, fp_box: tuple[int, ...]):
        self.label = label
        self.ink = ink  # full-image ink as drawn
        self.vis = ink.copy()  # visible ink (shrinks as later objects cover it)
        self.part = part  # full-image discriminative-part region
        self.fp_box = fp_box
        self.ink_n = int(ink.sum())
        self.part_n = int(part.sum())


def _full(local: np.ndarray, top: int, left: int, S: int) -> np.ndarray:
    out = np.zeros((S, S), bool)
    out[top : top + local.shape[0], left : left + local.shape[1]] = local
    return out


def _try_place(
    rng: np.random.Generator,
    pair: GlyphPair,
    placed: list[_Placed],
    spec: SceneSpec,
    may_overlap: bool,
) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    S = spec.image_size
    h, w = pair.shape
    fr, fc = np.flatnonzero(pair.footprint.any(1)), np.flatnonzero(pair.footprint.any(0))
    fb = (int(fc[0]), int(fr[0]), int(fc[-1]) + 1, int(fr[-1]) + 1)  # local footprint box
    modes = [False, True] if not may_overlap else [True]
    for overlap in modes:
        if overlap and not may_overlap and spec.allow_overlap == 0.0:
            return None
        for _ in range(_POSITION_TRIES):
            top = int(rng.integers(0, S - h + 1))
            left = int(rng.integers(0, S - w + 1))
            box = (fb[0] + left, fb[1] + top, fb[2] + left, fb[3] + top)
            if not overlap:
                if all(
                    box[0] > q.fp_box[2] or q.fp_box[0] > box[2] or box[1] > q.fp_box[3] or q.fp_box[1] > box[3]
                    for q in placed
                ):
                    return top, left, _full(pair.ink, top, left, S), _full(pair.part, top, left, S)
                continue
            # integer boxes in float64: the same IoUs, bit for bit, as the scalar formula that
            # made the scenes of STREAM_VERSION (two empty boxes give NaN, which is not > 0.5)
            from crp_jax.ssd.boxes import box_iou  # here: importing crp_jax.data needs no jax

            ious = box_iou(
                np.asarray([box], np.float64), np.asarray([q.fp_box for q in placed], np.float64).reshape(-1, 4)
            )
            if np.any(ious > _MAX_BOX_IOU):
                continue
            ink = _full(pair.ink, top, left, S)
            part = _full(pair.part, top, left, S)
            ok = True
            covered_own_part = 0
            for q in placed:
                if box[0] >= q.fp_box[2] or q.fp_box[0] >= box[2] or box[1] >= q.fp_box[3] or q.fp_box[1] >= box[3]:
                    continue
                if (q.vis & ~ink).sum() < (1.0 - spec.max_occlusion) * q.ink_n:
                    ok = False
                    break
                if (
                    q.part_n
                    and (q.part & ~ink & ~_covered_by_later(q, placed)).sum()
                    < (1.0 - spec.max_part_occlusion) * q.part_n
                ):
                    ok = False
                    break
                covered_own_part += int((part & ~ink & q.vis).sum())
            if ok and covered_own_part <= spec.max_part_occlusion * max(int(part.sum()), 1):
                return top, left, ink, part
    return None


def _covered_by_later(q: _Placed, placed: list[_Placed]) -> np.ndarray:
    """Pixels of the image covered by the ink of objects drawn after q."""
    out = np.zeros_like(q.ink)
    after = False
    for r in placed:
        if after:
            out |= r.ink
        if r is q:
            after = True
    return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    # elementwise on purpose: a BLAS dot product may round differently on other machines
    return rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]


def _choose_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour whose luminance differs by >= _MIN_CONTRAST from all but
    _MAX_LOW_CONTRAST of the pixels ``under`` [P, 3] (float32); else the best tried."""
    y = np.sort(_luma(under)) if under.size else np.zeros(1, np.float32)

    def low_share(c: np.ndarray) -> float:
        yc = float(_luma(c))
        lo, hi = np.searchsorted(y, [yc - _MIN_CONTRAST, yc + _MIN_CONTRAST])
        return (hi - lo) / y.size

    best, best_share = None, 2.0
    for c in rng.integers(0, 256, (_COLOUR_TRIES, 3)).astype(np.float32):
        share = low_share(c)
        if share <= _MAX_LOW_CONTRAST:
            return c
        if share < best_share:
            best, best_share = c, share
    for c in (np.zeros(3, np.float32), np.full(3, 255.0, np.float32)):
        share = low_share(c)
        if share < best_share:
            best, best_share = c, share
    return best


# ----------------------------------------------------------------------------------------
# public API


def _check_seed_index(seed, index) -> tuple[int, int]:
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise _input_error(f"{name} must be a non-negative integer, got {v!r}")
    return int(seed), int(index)


def generate_scene(seed: int, index: int, spec: SceneSpec = SceneSpec()) -> Scene:
    """Scene number ``index`` of the data set ``seed``; a pure function of its arguments."""
    seed, index = _check_seed_index(seed, index)
    if not isinstance(spec, SceneSpec):
        raise _config_error(f"spec must be a SceneSpec, got {type(spec).__name__}")
    rng = np.random.default_rng([STREAM_VERSION, seed, index])
    S = spec.image_size
    img, clutter = _background(rng, spec)

    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    labels = rng.integers(1, NUM_CLASSES, size=n)
    lo, hi = math.log(spec.min_object_size), math.log(spec.max_object_size)
    sizes = [math.exp(lo + (hi - lo) * float(u)) for u in rng.random(n)]
    overlap = rng.random(n) < spec.allow_overlap
    order = sorted(range(n), key=lambda i: -sizes[i])

    placed: list[_Placed] = []
    for i in order:
        char = FOREGROUND_CLASSES[int(labels[i]) - 1]
        target = sizes[i]
        while True:
            pair = _fitting_pair(char, target, S)
            spot = _try_place(rng, pair, placed, spec, bool(overlap[i]) or not placed)
            if spot is not None or target <= spec.min_object_size:
                break
            target = max(spec.min_object_size, target * _SHRINK)
        if spot is None:
            continue
        top, left, ink, part = spot
        h, w = pair.shape
        region = img[top : top + h, left : left + w]
        colour = _choose_colour(rng, region[pair.footprint])
        a = (pair.alpha.astype(np.float32) * np.float32(1.0 / 255.0))[..., None]
        img[top : top + h, left : left + w] = region + a * (colour - region)
        for q in placed:
            q.vis &= ~ink
        fr, fc = np.flatnonzero(pair.footprint.any(1)), np.flatnonzero(pair.footprint.any(0))
        fp_box = (int(fc[0]) + left, int(fr[0]) + top, int(fc[-1]) + 1 + left, int(fr[-1]) + 1 + top)
        placed.append(_Placed(int(labels[i]), ink, part, fp_box))

    if spec.clutter > 0:
        # uniform, zero mean, standard deviation sigma (uniform draws are 4x cheaper than
        # Gaussian ones and look the same at this amplitude)
        sigma = spec.clutter * rng.uniform(2.0, 8.0)
        img = img + (rng.random((S, S, 3), dtype=np.float32) - np.float32(0.5)) * np.float32(sigma * math.sqrt(12.0))
    image = np.rint(np.clip(img, 0.0, 255.0)).astype(np.uint8)

    N = len(placed)
    masks = np.zeros((N, S, S), bool)
    part_masks = np.zeros((N, S, S), bool)
    boxes = np.zeros((N, 4), np.float32)
    for j, q in enumerate(placed):
        masks[j] = q.vis
    all_vis = masks.any(0) if N else np.zeros((S, S), bool)
    for j, q in enumerate(placed):
        part_masks[j] = q.part & ~(all_vis & ~masks[j])
        boxes[j] = _box_of(q.vis)
    lab = np.array([q.label for q in placed], np.int32)
    clutter_mask = clutter & ~all_vis  # glyphs are drawn over the clutter
    return Scene(image=image, boxes=boxes, labels=lab, masks=masks, part_masks=part_masks, clutter_mask=clutter_mask)


def iter_scenes(seed: int, indices: Iterable[int], spec: SceneSpec = SceneSpec()) -> Iterator[Scene]:
    """Lazily generate the scenes ``indices`` of data set ``seed``."""
    for index in indices:
        yield generate_scene(seed, index, spec)


def generate_dataset(seed: int, n: int, spec: SceneSpec = SceneSpec(), start: int = 0) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of data set ``seed`` as a list."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise _input_error(f"n must be a non-negative integer, got {n!r}")
    return list(iter_scenes(seed, range(int(start), int(start) + int(n)), spec))


def make_batch(
    seed: int,
    indices: Iterable[int],
    spec: SceneSpec = SceneSpec(),
    *,
    max_boxes: int | None = None,
    with_masks: bool = False,
) -> dict[str, np.ndarray]:
    """A padded training batch of scenes ``indices`` of data set ``seed``.

    Returns numpy arrays (M = ``max_boxes``, default ``spec.max_objects``):
    ``images`` uint8 [B, S, S, 3]; ``boxes`` float32 [B, M, 4] xyxy pixels (0 where padded);
    ``labels`` int32 [B, M] (0 = padding/background); ``valid`` bool [B, M]; ``num_objects``
    int32 [B]; ``indices`` int64 [B]; with ``with_masks``, also ``masks`` and
    ``part_masks`` bool [B, M, S, S].
    """
    idx = [int(_check_seed_index(seed, i)[1]) for i in indices]
    M = spec.max_objects if max_boxes is None else int(max_boxes)
    if M < spec.max_objects:
        raise _config_error(f"max_boxes={M} is less than spec.max_objects={spec.max_objects}")
    B, S = len(idx), spec.image_size
    out = {
        "images": np.zeros((B, S, S, 3), np.uint8),
        "boxes": np.zeros((B, M, 4), np.float32),
        "labels": np.zeros((B, M), np.int32),
        "valid": np.zeros((B, M), bool),
        "num_objects": np.zeros((B,), np.int32),
        "indices": np.asarray(idx, np.int64).reshape(B),
    }
    if with_masks:
        out["masks"] = np.zeros((B, M, S, S), bool)
        out["part_masks"] = np.zeros((B, M, S, S), bool)
    for b, i in enumerate(idx):
        sc = generate_scene(seed, i, spec)
        k = sc.num_objects
        out["images"][b] = sc.image
        out["boxes"][b, :k] = sc.boxes
        out["labels"][b, :k] = sc.labels
        out["valid"][b, :k] = True
        out["num_objects"][b] = k
        if with_masks:
            out["masks"][b, :k] = sc.masks
            out["part_masks"][b, :k] = sc.part_masks
    return out
