"""Default boxes (anchors) of SSD, in the two public conventions.

Both conventions lay the boxes out the same way, which is also the order of the model's
outputs: sources in order, then row, column, and per cell the box order

    s_k square, s'_k = sqrt(s_k s_{k+1}) square, then per aspect ratio ar:
    (s_k sqrt(ar), s_k / sqrt(ar)) and its swap (s_k / sqrt(ar), s_k sqrt(ar)).

- ``"torchvision"``: ``torchvision.models.detection.anchor_utils.DefaultBoxGenerator``
  with relative ``config.scales`` (one per source plus one); cell centres
  ``(j + 0.5) / (S / step_k)``; clipping clamps only (w, h) to [0, 1].
- ``"ssd.pytorch"``: amdegroot's ``PriorBox`` with pixel ``min_sizes`` / ``max_sizes``
  (s_k = min_k / S, s'_k = sqrt(min_k max_k) / S); clipping clamps all four numbers.

Anchor indices therefore mean the same thing as in torchvision's ``ssd300_vgg16``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from crp_jax.errors import ConfigError
from crp_jax.ssd.config import SSDConfig


def _cell_wh(config: SSDConfig, k: int) -> np.ndarray:
    """Width/height pairs of one cell of source ``k``: ``[anchors_per_cell[k], 2]`` (relative)."""
    if config.anchor_convention == "torchvision":
        s_k = float(config.scales[k])
        s_prime = math.sqrt(s_k * float(config.scales[k + 1]))
    else:  # ssd.pytorch: pixel sizes relative to the input side
        size = float(config.image_size)
        s_k = float(config.min_sizes[k]) / size
        s_prime = math.sqrt(s_k * (float(config.max_sizes[k]) / size))
    pairs = [(s_k, s_k), (s_prime, s_prime)]
    for ar in config.aspect_ratios[k]:
        if not ar > 0:
            raise ConfigError(f"aspect ratio must be > 0, got {ar!r} for source {k}")
        r = math.sqrt(float(ar))
        pairs += [(s_k * r, s_k / r), (s_k / r, s_k * r)]
    return np.asarray(pairs, dtype=np.float64)


def _source_boxes(config: SSDConfig, k: int, cells: int, step: float) -> np.ndarray:
    """Default boxes of source ``k`` as ``[cells * cells * a, 4]`` (cx, cy, w, h), float64."""
    f_k = config.image_size / float(step)  # number of steps across the image (may be fractional)
    centres = (np.arange(cells, dtype=np.float64) + 0.5) / f_k
    cy, cx = np.meshgrid(centres, centres, indexing="ij")  # row-major: row i, column j
    wh = _cell_wh(config, k)
    a = wh.shape[0]
    out = np.empty((cells, cells, a, 4), dtype=np.float64)
    out[..., 0] = cx[..., None]
    out[..., 1] = cy[..., None]
    out[..., 2:] = wh[None, None]
    out = out.reshape(-1, 4)
    if config.clip_anchors:
        # torchvision clamps only (w, h); ssd.pytorch clamps the whole (cx, cy, w, h).
        cols = slice(2, 4) if config.anchor_convention == "torchvision" else slice(0, 4)
        out[:, cols] = np.clip(out[:, cols], 0.0, 1.0)
    return out


@functools.lru_cache(maxsize=32)
def _default_boxes_cached(config: SSDConfig) -> np.ndarray:
    steps = config.source_steps()
    parts = [_source_boxes(config, k, cells, steps[k]) for k, cells in enumerate(config.feature_sizes())]
    boxes = np.concatenate(parts, axis=0).astype(np.float32)
    if boxes.shape[0] != config.num_anchors():  # guards the layout contract with the model
        raise ConfigError(f"built {boxes.shape[0]} default boxes, config expects {config.num_anchors()}")
    boxes.setflags(write=False)  # shared by the cache: nobody may edit it in place
    return boxes


def default_boxes(config: SSDConfig) -> np.ndarray:
    """Default boxes of ``config`` as ``[A, 4]`` float32 relative (cx, cy, w, h).

    A == ``config.num_anchors()`` (8732 for SSD300). The returned array is cached per config
    and read-only; copy it before editing.
    """
    if not isinstance(config, SSDConfig):
        raise ConfigError(f"default_boxes needs an SSDConfig, got {type(config).__name__}")
    return _default_boxes_cached(config)


@functools.lru_cache(maxsize=32)
def _default_boxes_xyxy_cached(config: SSDConfig) -> np.ndarray:
    rel = _default_boxes_cached(config)
    size = np.float32(config.image_size)
    # Same float32 arithmetic as torchvision's ``dboxes_in_image``.
    xy, wh = rel[:, :2], rel[:, 2:]
    boxes = np.concatenate([(xy - np.float32(0.5) * wh) * size, (xy + np.float32(0.5) * wh) * size], axis=1)
    boxes = boxes.astype(np.float32)
    boxes.setflags(write=False)
    return boxes


def default_boxes_xyxy(config: SSDConfig) -> np.ndarray:
    """Default boxes as ``[A, 4]`` float32 (x1, y1, x2, y2) in input-image pixels.

    Equal to torchvision's ``dboxes_in_image`` for a square image of side
    ``config.image_size``. Cached per config and read-only.
    """
    if not isinstance(config, SSDConfig):
        raise ConfigError(f"default_boxes_xyxy needs an SSDConfig, got {type(config).__name__}")
    return _default_boxes_xyxy_cached(config)


def central_anchor(config: SSDConfig, source: int) -> int:
    """Index of the first default box of the central cell (row and column ``f // 2``) of
    source ``source``, in the layout above (for one target per source in tests/benchmarks)."""
    if not isinstance(config, SSDConfig) or not 0 <= source < config.num_sources:
        raise ConfigError(f"central_anchor needs an SSDConfig and 0 <= source < num_sources, got {source!r}")
    sizes, per = config.feature_sizes(), config.anchors_per_cell
    start = sum(f * f * a for f, a in zip(sizes[:source], per[:source]))
    f = sizes[source]
    return start + ((f // 2) * f + f // 2) * per[source]
