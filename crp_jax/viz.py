"""Drawing relevance heatmaps and detections (numpy + Pillow only, no matplotlib).

Colour map
    :func:`colorize` maps a signed heatmap to a diverging blue-white-red map *centred at
    zero*: the normalisation is symmetric, ``v = clip(R / m, -1, 1)`` with ``m`` a robust
    maximum of ``|R|`` (by default the 99.5th percentile, :func:`robust_max`), so that a few
    extreme pixels do not wash out the rest and zero is always exactly white, whatever the
    heatmap's range. ``v = +1`` is dark red (supports the target), ``v = -1`` dark blue
    (speaks against it); in between the colour is linear in ``v`` on each side (the end
    colours are those of ColorBrewer's RdBu). Red pixels always have ``r > b >= g``, blue
    ones ``b > g >= r``, zero ``r == g == b``.

Overlay
    :func:`overlay` shows the image in grey (so that hue belongs to relevance only) and blends
    the colour map over it with a constant ``alpha``; zero relevance therefore stays neutral
    grey. A heatmap of another size than the image (e.g. at the model input size, the shape
    ``crp_jax.explain`` returns) is resized bilinearly to the image's ``H x W``; boxes from
    ``crp_jax.detect(..., image_sizes=...)`` are already in the original pixels, so they fit.

Also here: :func:`load_image` (any image Pillow reads -> uint8 RGB, EXIF orientation
applied), :func:`load_image_bounded` (the same, reduced by Pillow to a bounded size before
anything is converted, so that memory stays bounded for any image Pillow accepts),
:func:`grid` (side-by-side comparison with titles) and :func:`draw_detections`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from crp_jax.checks import as_heatmap
from crp_jax.errors import InputError

__all__ = [
    "NEGATIVE_COLOR",
    "POSITIVE_COLOR",
    "NEUTRAL_COLOR",
    "BOX_COLOR",
    "robust_max",
    "colorize",
    "resize_heatmap",
    "load_image",
    "load_image_bounded",
    "overlay",
    "grid",
    "draw_detections",
    "font",
]

#: Colour of v = +1 (strongest positive relevance), v = -1, and v = 0.
POSITIVE_COLOR = (178, 24, 43)
NEGATIVE_COLOR = (33, 102, 172)
NEUTRAL_COLOR = (255, 255, 255)
#: Box colour on relevance overlays (green: distinct from both ends of the colour map).
BOX_COLOR = (0, 170, 60)

#: Per-class box colours for :func:`draw_detections` (index = label mod len).
_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
)


# ---- colour map ---------------------------------------------------------------------------


def _as_heatmap(heatmap) -> np.ndarray:
    # A picture, not a measurement: NaN/Inf pixels are drawn as zero relevance (the metrics
    # raise on them instead; crp_jax.checks.as_heatmap documents both policies).
    return as_heatmap(heatmap, nonfinite="zero", dtype=np.float32)


def robust_max(heatmap, percentile: float = 99.5) -> float:
    """The ``percentile`` of ``|R|`` (a robust max for symmetric normalisation).

    Falls back to ``max |R|`` when that percentile is 0 (very sparse heatmaps) and to 1.0
    for an all-zero heatmap, so the result is always a positive finite number.
    """
    a = np.abs(_as_heatmap(heatmap))
    if not 0.0 < percentile <= 100.0:
        raise InputError(f"percentile must be in (0, 100], got {percentile!r}")
    m = float(np.percentile(a, percentile))
    if not m > 0.0:
        m = float(a.max())
    return m if m > 0.0 and math.isfinite(m) else 1.0


def colorize(heatmap, vmax: float | None = None, percentile: float = 99.5) -> np.ndarray:
    """Signed heatmap ``[H, W]`` -> uint8 RGB ``[H, W, 3]`` on the diverging map.

    ``vmax``: the ``|R|`` that gets the full colour (default :func:`robust_max`); values
    beyond it saturate. Zero is white whatever ``vmax`` is.
    """
    h = _as_heatmap(heatmap)
    m = robust_max(h, percentile) if vmax is None else float(vmax)
    if not (m > 0.0 and math.isfinite(m)):
        raise InputError(f"vmax must be a positive finite number, got {vmax!r}")
    v = np.clip(h / np.float32(m), -1.0, 1.0)[..., None]
    white = np.asarray(NEUTRAL_COLOR, np.float32)
    pos = white + v * (np.asarray(POSITIVE_COLOR, np.float32) - white)
    neg = white - v * (np.asarray(NEGATIVE_COLOR, np.float32) - white)  # -v = |v| here
    rgb = np.where(v >= 0.0, pos, neg)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def resize_heatmap(heatmap, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a heatmap to ``size = (H, W)`` (float32, sign kept).

    This is how a heatmap at the model input size maps back to the original image: the
    model input is the original image resized to ``S x S`` (aspect ratio not kept), so the
    inverse is a resize of the heatmap to ``H x W``.
    """
    h = _as_heatmap(heatmap)
    H, W = int(size[0]), int(size[1])
    if h.shape == (H, W):
        return h
    img = Image.fromarray(h, mode="F").resize((W, H), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


# ---- images -------------------------------------------------------------------------------


def load_image(path) -> np.ndarray:
    """Read any image Pillow can open -> uint8 RGB ``[H, W, 3]`` as displayed.

    The EXIF orientation is applied (``ImageOps.exif_transpose``), so a rotated JPEG comes
    out the way viewers show it; grey, palette, CMYK, ... are converted to RGB; transparent
    images (RGBA, LA, palette with transparency) are composited over white; 16-bit grey is
    scaled to 8 bits, float grey in [0, 1] (else 0..255) too. Only the first frame of an
    animation is read.

    Raises ``OSError`` (``FileNotFoundError``, ``PIL.UnidentifiedImageError``, a truncated
    file, ...) when the file cannot be read as an image, and :class:`InputError` for an
    image too large to decode safely or a float image with NaN or Inf pixels (the message
    names the file and how many).
    """
    return load_image_bounded(path, None)[0]


# Pixels per band when a large image is converted and reduced band by band: bounds the
# converted copies (~4 M pixels, some tens of MB) whatever the image's size.
_BAND_PIXELS = 1 << 22
# 16- and 32-bit grey: scaled to 8 bits by the whole image's range (see _deep_top).
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def load_image_bounded(path, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Like :func:`load_image`, but at most ``max_side`` pixels on the longer side.

    Returns ``(pixels, (H, W))``: uint8 RGB ``pixels [h, w, 3]`` and the size ``(H, W)`` of
    the whole image as displayed. An image longer than ``max_side`` is reduced by the
    smallest integer factor ``f`` that fits (``h = ceil(H / f)``, box average of each
    ``f x f`` block, Pillow's ``Image.reduce``; JPEGs are first decoded at a reduced DCT
    scale with ``Image.draft``), band by band, before anything is converted to RGB or to
    numpy; the EXIF orientation is applied to the reduced image. So the memory needed is the
    decoded file (at most ~0.7 GB for the largest image Pillow accepts, 179 M pixels) plus
    ``max_side^2``-sized arrays. ``max_side=None``: the whole image (:func:`load_image`).

    Pillow's ``DecompressionBombWarning`` (images over 89 M pixels) is not shown: such an
    image is decoded within the bound above; over Pillow's hard limit (twice that) the
    result is :class:`InputError`.
    """
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 1
    ):
        raise InputError(f"max_side must be an integer >= 1 or None, got {max_side!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(os.fspath(path)) as im:
                return _load_bounded(im, path, max_side)
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: {e}") from None


def _load_bounded(im: Image.Image, path, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    orientation = im.getexif().get(0x0112, 1)
    W, H = im.size
    size = (W, H) if orientation in (5, 6, 7, 8) else (H, W)  # (H, W) as displayed
    if max_side is None or max(W, H) <= max_side:
        im.load()
        im = ImageOps.exif_transpose(im)
        return _to_rgb_array(im, path), size
    factor = math.ceil(max(W, H) / max_side)
    if im.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale, still at least the target size
        im.draft(im.mode, (math.ceil(W / factor), math.ceil(H / factor)))
    im.load()
    factor = math.ceil(max(im.size) / max_side)
    deep = im.mode in _DEEP_MODES
    top = _deep_top(im, path) if deep else None
    small = _reduce_in_bands(im, factor, deep) if factor > 1 else im.convert("F" if deep else "RGB")
    if orientation in _EXIF_TRANSPOSE:
        small = small.transpose(_EXIF_TRANSPOSE[orientation])
    if deep:
        return _deep_to_rgb(np.asarray(small, np.float64), top), size
    return np.asarray(small, dtype=np.uint8), size


def _reduce_in_bands(im: Image.Image, factor: int, deep: bool) -> Image.Image:
    """``im`` reduced by ``factor`` (``Image.reduce``), converted band by band of ``factor``
    rows multiples: to RGB as :func:`_to_rgb_array` does, or to float32 grey ("F") for
    16/32-bit images. Bands of whole blocks give the same result as one reduce."""
    if im.mode in ("RGB", "L"):  # RGB conversion commutes with averaging: reduce in place
        return im.reduce(factor).convert("RGB")
    W, H = im.size
    out = Image.new("F" if deep else "RGB", (math.ceil(W / factor), math.ceil(H / factor)))
    rows = factor * max(1, _BAND_PIXELS // (W * factor))
    for y in range(0, H, rows):
        band = im.crop((0, y, W, min(H, y + rows)))
        band = band.convert("F") if deep else Image.fromarray(_to_rgb_array(band, None), "RGB")
        out.paste(band.reduce(factor), (0, y // factor))
    return out


def _deep_top(im: Image.Image, path) -> float:
    """The value shown as white for a 16/32-bit grey image, from the whole image (read band
    by band): 1.0 for a float image within [0, 1] (else 255), 65535 for an integer image
    above 255 (else 255). Raises InputError for NaN or Inf pixels: scaling around them would
    turn the image black or white, so the file is refused with the count."""
    W, H = im.size
    rows = max(1, _BAND_PIXELS // max(W, 1))
    hi, bad = -math.inf, 0
    for y in range(0, H, rows):
        a = np.asarray(im.crop((0, y, W, min(H, y + rows))))
        if a.dtype.kind == "f":
            finite = np.isfinite(a)
            bad += int(a.size - np.count_nonzero(finite))
            a = a[finite]
        if a.size:
            hi = max(hi, float(a.max()))
    if bad:
        raise InputError(
            f"{path}: {bad} of {W * H} pixels are NaN or Inf; a float image must be finite "
            "(replace them, e.g. with 0, before loading)"
        )
    if im.mode == "F":
        return 1.0 if hi <= 1.0 else 255.0
    return 65535.0 if hi > 255 else 255.0


def _deep_to_rgb(a: np.ndarray, top: float) -> np.ndarray:
    """16/32-bit grey values ``[H, W]`` -> uint8 RGB, ``top`` shown as 255."""
    g = np.rint(np.clip(a * (255.0 / top), 0, 255)).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _to_rgb_array(im: Image.Image, path) -> np.ndarray:
    if im.mode in _DEEP_MODES:
        return _deep_to_rgb(np.asarray(im, dtype=np.float64), _deep_top(im, path))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, NEUTRAL_COLOR + (255,))
        im = Image.alpha_composite(background, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _as_rgb_image(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"image must be uint8 [H, W, 3] (or [H, W] / [H, W, 4]), got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(np.nan_to_num(a.astype(np.float64))), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]), "RGB")


def _scaled(img: Image.Image, scale: int) -> Image.Image:
    if scale == 1:
        return img
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise InputError(f"scale must be an integer >= 1, got {scale!r}")
    return int(scale)


# ---- text and boxes -----------------------------------------------------------------------


def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (the bitmap default on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=max(6, int(size)))
    except TypeError:  # Pillow < 10.1: no sizes
        return ImageFont.load_default()


def _text_size(f, text: str) -> tuple[int, int]:
    l, t, r, b = f.getbbox(text or " ")
    return int(math.ceil(r - min(l, 0))), int(math.ceil(b - min(t, 0)))


def _line_height(f) -> int:
    return _text_size(f, "Ag|")[1] + 2


def _default_font_size(w: int, h: int) -> int:
    return int(min(18, max(9, round(min(w, h) / 16))))


def _contrast_text(color) -> tuple[int, int, int]:
    r, g, b = color[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _draw_box(draw: ImageDraw.ImageDraw, box, label, color, f, width: int, size: tuple[int, int]) -> None:
    """Rectangle ``box`` (x1, y1, x2, y2, pixel edges) and ``label`` on a filled tag."""
    W, H = size
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    # pixel edges -> the last pixel inside; keep the outline within the image
    r = [
        min(max(round(x1), 0), W - 1),
        min(max(round(y1), 0), H - 1),
        min(max(round(x2) - 1, 0), W - 1),
        min(max(round(y2) - 1, 0), H - 1),
    ]
    r[2], r[3] = max(r[2], r[0]), max(r[3], r[1])
    draw.rectangle(r, outline=tuple(color), width=width)
    if label:
        tw, th = _text_size(f, label)
        tw, th = tw + 4, th + 2
        ty = r[1] - th if r[1] - th >= 0 else r[1]  # above the box when there is room
        tx = min(max(r[0], 0), max(W - tw, 0))
        draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=tuple(color))
        draw.text((tx + 2, ty + 1), label, fill=_contrast_text(color), font=f)


# ---- public drawing -----------------------------------------------------------------------


def overlay(
    image,
    heatmap,
    box=None,
    label: str | None = None,
    alpha: float = 0.6,
    *,
    vmax: float | None = None,
    percentile: float = 99.5,
    scale: int = 1,
    box_color=BOX_COLOR,
    font_size: int | None = None,
) -> Image.Image:
    """Signed heatmap over an image, optionally with a box and a label.

    Args:
      image: uint8 ``[H, W, 3]`` (grey ``[H, W]`` and PIL images are accepted).
      heatmap: signed ``[h, w]`` (or ``[h, w, C]`` relevance, channels summed); resized
        bilinearly to ``H x W`` when its size differs (see :func:`resize_heatmap`).
      box: ``(x1, y1, x2, y2)`` in the image's pixels, or None.
      label: text drawn on a tag at the box (or the top-left corner without a box).
      alpha: weight of the colour map over the grey image, in [0, 1].
      vmax, percentile: normalisation (see :func:`colorize`); ``vmax`` is computed on the
        heatmap as given, before any resize, so that it does not depend on the image size.
      scale: integer magnification of the output (nearest for the image, bilinear for the
        heatmap); the box is scaled with it.

    Returns:
      an RGB ``PIL.Image`` of size ``(W * scale, H * scale)``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha!r}")
    scale = _check_scale(scale)
    base = _as_rgb_image(image)
    W, H = base.width * scale, base.height * scale
    h = _as_heatmap(heatmap)
    m = robust_max(h, percentile) if vmax is None else float(vmax)
    colours = colorize(resize_heatmap(h, (H, W)), vmax=m).astype(np.float32)
    grey = np.asarray(_scaled(base, scale).convert("L"), np.float32)[..., None]
    out = (1.0 - float(alpha)) * grey + float(alpha) * colours
    img = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
    if box is not None or label:
        f = font(font_size or _default_font_size(W, H))
        draw = ImageDraw.Draw(img)
        width = max(1, round(min(W, H) / 150))
        if box is not None:
            _draw_box(draw, np.asarray(box, np.float64) * scale, label, box_color, f, width, (W, H))
        else:
            _draw_box(draw, (0, 0, 0, 0), label, box_color, f, 0, (W, H))
    return img


def draw_detections(
    image,
    boxes,
    labels,
    scores,
    class_names: Sequence[str],
    *,
    scale: int = 1,
    font_size: int | None = None,
) -> Image.Image:
    """The image with every detection's box and a ``"name 0.93"`` tag, one colour per class.

    ``boxes [N, 4]`` (x1, y1, x2, y2) in the image's pixels (e.g. ``Detections.boxes`` from
    ``detect(..., image_sizes=...)``), ``labels [N]`` class indices into ``class_names``,
    ``scores [N]``. Drawn in reverse order, so the best detection's tag is on top.
    """
    scale = _check_scale(scale)
    img = _scaled(_as_rgb_image(image), scale)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not (len(boxes) == len(labels) == len(scores)):
        raise InputError(f"boxes, labels and scores disagree in length: {len(boxes)}, {len(labels)}, {len(scores)}")
    W, H = img.size
    f = font(font_size or _default_font_size(W, H))
    draw = ImageDraw.Draw(img)
    width = max(1, round(min(W, H) / 150))
    for i in reversed(range(len(boxes))):
        k = int(labels[i])
        name = class_names[k] if 0 <= k < len(class_names) else str(k)
        _draw_box(draw, boxes[i] * scale, f"{name} {scores[i]:.2f}", _PALETTE[k % len(_PALETTE)], f, width, (W, H))
    return img


def grid(
    images: Sequence,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    *,
    pad: int = 4,
    scale: int = 1,
    font_size: int = 12,
    background=(255, 255, 255),
) -> Image.Image:
    """Images side by side, row-major, each under its title (``\\n`` splits lines).

    All cells have the same size: the largest image (times ``scale``), widened to the
    widest title line; images are centred in their cells. With ``n`` images, ``ncols``
    columns (default: all in one row) and ``rows = ceil(n / ncols)``, the result is
    ``ncols * cell_w + (ncols + 1) * pad`` wide and ``rows * (title_h + cell_h) + (rows + 1)
    * pad`` high, ``title_h`` being the tallest title (0 without titles). ``None`` entries
    leave a cell empty.
    """
    images = list(images)
    if not images:
        raise InputError("grid needs at least one image")
    titles = [""] * len(images) if titles is None else [t or "" for t in titles]
    if len(titles) != len(images):
        raise InputError(f"grid got {len(images)} images but {len(titles)} titles")
    ncols = len(images) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise InputError(f"ncols must be an integer >= 1, got {ncols!r}")
    scale = _check_scale(scale)
    ncols = int(min(ncols, len(images)))
    cells = [None if im is None else _scaled(_as_rgb_image(im), scale) for im in images]
    f = font(font_size)
    lines = [t.split("\n") if t else [] for t in titles]
    lh = _line_height(f)
    title_h = max(len(ls) for ls in lines) * lh
    cell_w = max([c.width for c in cells if c is not None] + [1])
    cell_w = max([cell_w] + [_text_size(f, ln)[0] + 2 for ls in lines for ln in ls])
    cell_h = max([c.height for c in cells if c is not None] + [1])
    rows = math.ceil(len(images) / ncols)
    W = ncols * cell_w + (ncols + 1) * pad
    H = rows * (title_h + cell_h) + (rows + 1) * pad
    out = Image.new("RGB", (W, H), tuple(background))
    draw = ImageDraw.Draw(out)
    ink = _contrast_text(background)
    for i, (cell, ls) in enumerate(zip(cells, lines)):
        r, c = divmod(i, ncols)
        x0 = pad + c * (cell_w + pad)
        y0 = pad + r * (title_h + cell_h + pad)
        for j, ln in enumerate(ls):
            tw = _text_size(f, ln)[0]
            draw.text((x0 + (cell_w - tw) // 2, y0 + j * lh), ln, fill=ink, font=f)
        if cell is not None:
            out.paste(cell, (x0 + (cell_w - cell.width) // 2, y0 + title_h + (cell_h - cell.height) // 2))
    return out
