"""Max-pooling whose derivative routes through winner masks computed once per forward pass.

``jax``'s own max-pool derivative is ``select_and_scatter``: it re-finds each window's
winner from the pool's input every time a cotangent comes back. Explaining runs one forward
pass and then many vmapped backward passes (one per target), and XLA CPU expands
``select_and_scatter`` into index arrays and a scatter per target (SSD300 pool1: about
1.4 GiB of scratch and 1.5 s per 8 targets, benchmarks/SPEED_RESULTS.md). Which input won a
window depends only on the forward pass, so here the JVP computes boolean winner masks from
the primal input, and the tangent map is linear in the tangent given those masks: reverse
mode then keeps the masks as residuals and each target's backward is a masked select plus a
reshape (non-overlapping windows) or a few interior pads (overlapping ones). Results equal
``select_and_scatter``'s: the winner is the first maximum in row-major window order, as
XLA and ``torch.nn.MaxPool2d`` pick it. Being a ``custom_jvp`` (not ``custom_vjp``), the
function still supports forward mode (``jax.jvp``, ``jax.jacfwd``) as well as reverse mode.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> jax.Array:
    """Max-pool ``[B, H, W, C] -> [B, H', W', C]`` like ``torch.nn.MaxPool2d(window, stride,
    padding, ceil_mode=...)``. Padding is -inf, so the derivative (and hence relevance)
    always goes to a real pixel."""
    return _max_pool(x, window, stride, pool_pads(x.shape[1:3], window, stride, padding, ceil_mode))


def max_pool_padded(x: jax.Array, window: int, stride: int, pads: Pads) -> jax.Array:
    """Max-pool ``[B, H, W, C]`` with explicit ``((top, bottom), (left, right))`` -inf padding
    (asymmetric allowed: TF's "SAME" puts the extra pixel after), same derivative as
    :func:`max_pool`."""
    return _max_pool(x, window, stride, tuple(tuple(int(v) for v in p) for p in pads))


def pool_pads(hw, window: int, stride: int, padding: int, ceil_mode: bool) -> Pads:
    """Explicit ``((top, bottom), (left, right))`` padding that reproduces torch's output size."""
    pads = []
    for n in hw:
        lo = hi = padding
        if ceil_mode:
            out = math.ceil((n + 2 * padding - window) / stride) + 1
            if (out - 1) * stride >= n + padding:  # torch: the last window must start inside
                out -= 1
            hi = (out - 1) * stride + window - n - padding
        pads.append((lo, max(hi, 0)))
    return tuple(pads)


def _reduce_max(x, window, stride, pads):
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), ((0, 0),) + tuple(pads) + ((0, 0),)
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, pads):
    return _reduce_max(x, window, stride, pads)


def _window_slices(xp, window, stride, ho, wo):
    """The ``window**2`` strided views ``[B, ho, wo, C]`` of the padded input, one per window
    offset, in row-major offset order."""
    for di in range(window):
        for dj in range(window):
            yield xp[:, di : di + stride * (ho - 1) + 1 : stride, dj : dj + stride * (wo - 1) + 1 : stride]


def _pad(a, pads, value):
    return jnp.pad(a, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def winner_masks(x, y, window: int, stride: int, pads: Pads) -> list[jax.Array]:
    """Boolean ``[B, ho, wo, C]`` per window offset: True where that offset holds the first
    maximum of its window (exactly one True per output element for finite inputs)."""
    taken = jnp.zeros(y.shape, bool)
    masks = []
    for v in _window_slices(_pad(x, pads, -jnp.inf), window, stride, y.shape[1], y.shape[2]):
        m = (v == y) & ~taken
        taken = taken | m
        masks.append(m)
    return masks


@_max_pool.defjvp
def _max_pool_jvp(window, stride, pads, primals, tangents):
    (x,), (t,) = primals, tangents
    y = _reduce_max(x, window, stride, pads)
    B, ho, wo, C = y.shape
    masks = winner_masks(lax.stop_gradient(x), y, window, stride, pads)
    tp = _pad(t, pads, 0)
    if stride == window:
        # Non-overlapping windows: view the (cropped) padded tangent as [B, ho, s, wo, s, C];
        # the transpose is then one select and a reshape, with no scatter and no pads.
        s = stride
        m = jnp.stack(masks).reshape(s, s, B, ho, wo, C).transpose(2, 3, 0, 4, 1, 5)
        tw = tp[:, : ho * s, : wo * s].reshape(B, ho, s, wo, s, C)
        return y, jnp.where(m, tw, 0).sum((2, 4))
    dy = None
    for m, v in zip(masks, _window_slices(tp, window, stride, ho, wo)):
        c = jnp.where(m, v, 0)
        dy = c if dy is None else dy + c
    return y, dy
