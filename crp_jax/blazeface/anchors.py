"""BlazeFace's anchors: MediaPipe's ``SsdAnchorsCalculator``, re-implemented from its options.

MediaPipe (``mediapipe/calculators/tflite/ssd_anchors_calculator.cc``) walks the strides;
consecutive layers with the same stride share one feature map, each contributing
``len(aspect_ratios)`` anchors per cell plus one at the interpolated scale when
``interpolated_scale_aspect_ratio > 0``. Cells are visited row by row (y, then x), the
anchors of a cell innermost, so anchor ``i`` is row ``i`` of the model's ``[B, A, ...]``
outputs. Centres are ``((x + offset_x) / W, (y + offset_y) / H)`` in [0, 1] input units;
with ``fixed_anchor_size`` (both BlazeFace models) every anchor is 1 x 1, so a decoded box's
size is the regressor alone (crp_jax/blazeface/postprocess.py).

Short range: 128 px, strides (8, 16, 16, 16): 16x16 cells x 2 + 8x8 cells x 6 = 896.
Full range: 192 px, stride 4, no interpolated anchor: 48x48 cells x 1 = 2304.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SsdAnchorOptions:
    """The fields of MediaPipe's ``SsdAnchorsCalculatorOptions`` that BlazeFace sets
    (feature-map sizes are derived from the strides: ``ceil(input / stride)``)."""

    num_layers: int
    min_scale: float
    max_scale: float
    input_size_height: int
    input_size_width: int
    strides: tuple[int, ...]
    aspect_ratios: tuple[float, ...] = (1.0,)
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    fixed_anchor_size: bool = True
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = False


def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def ssd_anchors(opts: SsdAnchorOptions) -> np.ndarray:
    """Anchors ``[A, 4]`` float32 ``(cx, cy, w, h)`` in [0, 1] input units, in model order."""
    n = len(opts.strides)
    if n != opts.num_layers:
        raise ValueError(f"SsdAnchorOptions: {n} strides for num_layers={opts.num_layers}")
    out = []
    layer = 0
    while layer < n:
        heights, widths = [], []
        last = layer
        while last < n and opts.strides[last] == opts.strides[layer]:
            scale = _scale(opts.min_scale, opts.max_scale, last, n)
            if last == 0 and opts.reduce_boxes_in_lowest_layer:
                ratios, scales = [1.0, 2.0, 0.5], [0.1, scale, scale]
            else:
                ratios, scales = list(opts.aspect_ratios), [scale] * len(opts.aspect_ratios)
                if opts.interpolated_scale_aspect_ratio > 0.0:
                    nxt = 1.0 if last == n - 1 else _scale(opts.min_scale, opts.max_scale, last + 1, n)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(opts.interpolated_scale_aspect_ratio)
            for r, s in zip(ratios, scales):
                heights.append(s / math.sqrt(r))
                widths.append(s * math.sqrt(r))
            last += 1
        stride = opts.strides[layer]
        fh = math.ceil(opts.input_size_height / stride)
        fw = math.ceil(opts.input_size_width / stride)
        for y in range(fh):
            for x in range(fw):
                cx = (x + opts.anchor_offset_x) / fw
                cy = (y + opts.anchor_offset_y) / fh
                for h, w in zip(heights, widths):
                    out.append((cx, cy, 1.0, 1.0) if opts.fixed_anchor_size else (cx, cy, w, h))
        layer = last
    return np.asarray(out, dtype=np.float32)
