"""The non-convolution ops of an imported TFLite graph, with TFLite's exact semantics.

What each op is to the relevance engine (``relevance_kind``, docs/design.md "Imported
graphs (TFLite)"; the engine is never imported here, kinds are plain strings):

=====================  ======================================  ==============================
TFLite op               here                                    relevance
=====================  ======================================  ==============================
ADD (two activations)   ``crp_jax.ssd.ssdlite.Add`` module      "add": split among addends
MUL by a constant       :class:`Rescale` module (param scale)   "rescale": passes through
LOGISTIC                :class:`Logistic` module                "activation": passes through
RELU6 (and fused)       ``crp_jax.ssd.ssdlite.ReLU6`` module    "activation": passes through
RELU (and fused)        ``flax.linen.relu`` (a function)        its gradient is the LRP rule
MAX_POOL_2D             ``crp_jax.ssd.pool`` winner masks       to the winner (its gradient)
AVERAGE_POOL_2D         :class:`AveragePool` (taps + Add)       z-rule: ``x / count`` shares
PAD, RESHAPE,           ``jnp`` index maps                      gradient routes, conserves
CONCATENATION
RESIZE_BILINEAR         :class:`ResizeBilinear` (taps + Add)    z-rule: ``x w`` shares
=====================  ======================================  ==============================

Padding follows TF's "SAME" convention: ``out = ceil(in / stride)`` and the odd extra pixel
of the total padding goes *after* (bottom/right), :func:`same_pads`. Max-pool padding never
wins; average-pool padding is not counted (TFLite's reference kernels).
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crp_jax.ssd.pool import max_pool_padded
from crp_jax.ssd.ssdlite import Add, ReLU6

Pads = tuple[tuple[int, int], tuple[int, int]]

#: TFLite ``Padding`` enum
SAME, VALID = 0, 1
#: TFLite ``ActivationFunctionType`` values this importer runs
ACT_NONE, ACT_RELU, ACT_RELU6 = 0, 1, 3
ACTIVATION_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding of one spatial axis: ``(before, after)`` with the extra pixel after."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def spatial_pads(padding: int, hw: tuple[int, int], kernel, stride, dilation=(1, 1)) -> Pads:
    """Explicit ``((top, bottom), (left, right))`` for TFLite's ``padding`` (SAME or VALID)."""
    if padding == VALID:
        return ((0, 0), (0, 0))
    return tuple(same_pads(n, k, s, d) for n, k, s, d in zip(hw, kernel, stride, dilation))


class Logistic(nn.Module):
    """``sigmoid(x)``, elementwise ``[..., C] -> [..., C]``."""

    relevance_kind: ClassVar[str] = "activation"

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(x)


class Rescale(nn.Module):
    """``x * scale`` with a constant ``scale`` (TFLite MUL by a constant tensor, broadcast as
    numpy broadcasts it). ``shape``: the constant's shape; the value is the ``scale`` param."""

    shape: tuple[int, ...]
    relevance_kind: ClassVar[str] = "rescale"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, self.shape)
        return x * scale


class AveragePool(nn.Module):
    """``[B, H, W, C] -> [B, H', W', C]`` average over the real (unpadded) cells of each window,
    as TFLite's AVERAGE_POOL_2D computes it: ``sum of the window / count of its real cells``.

    Written as an ``Add`` (kind "add") of one :class:`Tap` per window position (kind
    "rescale", the strided slice of the zero-padded input times ``1 / count``), so that LRP
    splits an output's relevance over the window in proportion to ``x / count`` (the z-rule)
    and a cell the ReLU before it zeroed gets none, as :class:`ResizeBilinear` does; its
    gradient (``1 / count`` to every cell whatever its value) would send relevance to such a
    cell and the ReLU would drop it. Gradients are unchanged: the module computes the same
    function."""

    window: tuple[int, int]
    stride: tuple[int, int]
    pads: Pads

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (kh, kw), (sh, sw) = self.window, self.stride
        full = ((0, 0), *self.pads, (0, 0))
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        count = lax.reduce_window(ones, 0.0, lax.add, (1, kh, kw, 1), (1, sh, sw, 1), full)  # [1, Ho, Wo, 1]
        ho, wo = count.shape[1:3]
        inv = tuple(float(v) for v in np.asarray(1.0 / count).reshape(-1))
        xp = jnp.pad(x, full)
        taps = []
        for i in range(kh):
            for j in range(kw):
                cells = xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw]
                taps.append(Tap(inv, (1, ho, wo, 1), name=f"tap_{i}_{j}")(cells))
        return Add(name="sum")(*taps)


def max_pool(x: jax.Array, window: tuple[int, int], stride: tuple[int, int], pads: Pads) -> jax.Array:
    """``[B, H, W, C] -> [B, H', W', C]`` max over each window, padding never wins. Square
    windows with equal strides use ``crp_jax.ssd.pool`` (winner masks computed once, cheap to
    explain); other shapes a plain ``reduce_window``."""
    if window[0] == window[1] and stride[0] == stride[1]:
        return max_pool_padded(x, window[0], stride[0], pads)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0)))


def _taps(n_in: int, n_out: int, align_corners: bool, half_pixel: bool):
    """TFLite's reference ``ComputeInterpolationValues`` for one axis, in float32:
    lower/upper source indices and the weight of the upper one."""
    if align_corners and n_out > 1:
        scale = np.float32(n_in - 1) / np.float32(n_out - 1)
    else:
        scale = np.float32(n_in) / np.float32(n_out)
    o = np.arange(n_out, dtype=np.float32)
    src = (o + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel else o * scale
    lo = np.maximum(np.floor(src), 0).astype(np.int64)
    hi = np.minimum(np.ceil(src), n_in - 1).astype(np.int64)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


class Tap(nn.Module):
    """``x * weights``, the weights a constant of the graph (not a parameter) of broadcast
    ``shape``: one tap of a resize or a pooling window. Kind "rescale": relevance passes
    through it unchanged, so that the tap's share is decided by the
    :class:`~crp_jax.ssd.ssdlite.Add` that sums the taps (``x_i w_i / sum_j x_j w_j``, the
    z-rule), not multiplied by the weight as a gradient would."""

    weights: tuple[float, ...]
    shape: tuple[int, ...]
    relevance_kind: ClassVar[str] = "rescale"

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * jnp.asarray(self.weights, x.dtype).reshape(self.shape)


class ResizeBilinear(nn.Module):
    """``[B, H, W, C] -> [B, size[0], size[1], C]`` as TFLite's RESIZE_BILINEAR (reference
    kernel): ``y = x[y0] (1 - f) + x[y1] f`` per axis (rows, then columns) with the source
    position ``(o + 0.5) * scale - 0.5`` (half-pixel centres) or ``o * scale``, ``scale = in /
    out`` (``(in - 1) / (out - 1)`` with ``align_corners``), indices clamped to the map.

    Each axis is an ``Add`` (kind "add") of two :class:`Tap` s (kind "rescale"),
    so LRP splits an output's relevance over its two sources in proportion to ``x w`` and a
    source that is 0 (a ReLU's dead unit) gets none. A gradient-routed resize gives every
    source ``w R`` whatever its value: conserving at the resize, but what reached a dead unit
    was then dropped by the ReLU before it (BlazeFace full range lost 0.6 % of the relevance at
    its three upsampling merges, tests/test_blazeface_engine.py). Gradients are unchanged: the
    module computes the same function."""

    size: tuple[int, int]
    align_corners: bool = False
    half_pixel_centers: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for axis, name in ((1, "rows"), (2, "cols")):
            lo, hi, f = _taps(x.shape[axis], self.size[axis - 1], self.align_corners, self.half_pixel_centers)
            shape = [1, 1, 1, 1]
            shape[axis] = len(f)
            low = Tap(tuple(float(v) for v in 1 - f), tuple(shape), name=f"{name}_lo")
            high = Tap(tuple(float(v) for v in f), tuple(shape), name=f"{name}_hi")
            x = Add(name=name)(low(jnp.take(x, lo, axis)), high(jnp.take(x, hi, axis)))
        return x


def pad(x: jax.Array, paddings: tuple[tuple[int, int], ...]) -> jax.Array:
    """TFLite PAD with zeros; ``paddings`` one ``(before, after)`` per axis (batch: (0, 0))."""
    return jnp.pad(x, paddings)


def reshape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """TFLite RESHAPE to the graph's static output ``shape`` with its batch axis (the first,
    1 in the file) taken from ``x``."""
    return x.reshape((x.shape[0], *shape[1:]))


def fused_activation(x: jax.Array, act: int, name: str | None = None) -> jax.Array:
    """Apply a TFLite fused activation (NONE, RELU, RELU6); RELU6 is a module (``name``) so
    that composites can select it. Others are refused before a module is built."""
    if act == ACT_RELU:
        return nn.relu(x)
    if act == ACT_RELU6:
        return ReLU6(name=name)(x)
    return x


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int]) -> int:
    """Output length of a conv / pool axis with explicit padding."""
    return math.floor((size + pads[0] + pads[1] - ((kernel - 1) * dilation + 1)) / stride) + 1
