"""The dense path: one compiled forward over a batch of images, one compiled backward per
chunk of target slots, relevance over whole maps.

A backward call takes ``c`` target *slots* of each of the batch's ``N`` images: slot ``s`` is
one ``[N, A, K]`` / ``[N, A, R]`` cotangent (each image's own target at its own anchor, zero
for an image without a target in that slot), and the ``c`` slots are vmapped. So the model's
kernels stay unbatched in the VJP's residuals and one call does ``N * c`` targets' backwards
(the schedule keeps ``N * c`` at most ``chunk_size``: :mod:`crp_jax.relevance.schedule`).
The sharded path runs the same two functions on a batch spread over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crp_jax.compiled import cached
from crp_jax.relevance.composite import Composite
from crp_jax.relevance.core import finish, linearize


def compiled_functions(model, comp: Composite, chunk: int, num_boxes: int, layers: bool = False):
    """The jitted ``(forward, backward)`` of the dense path (public, for benchmarks and for
    users who schedule their own work).

    ``forward(variables, x [N, H, W, C]) -> (ok, vjp_fn)``: ``ok`` a device bool, True when
    the outputs are finite; ``vjp_fn`` a pytree of residuals.
    ``backward(vjp_fn, x, anchors [N, chunk], cls_coef [N, chunk, K], loc_coef [N, chunk, R])
    -> R [N, chunk, H, W, C]`` (and per-layer totals ``path -> [N, chunk, 2]``, total and
    absolute relevance at each layer's output, with ``layers=True``): slot ``c`` of image
    ``n`` is the target with initial relevance ``cls_coef[n, c]`` / ``loc_coef[n, c]`` at box
    ``anchors[n, c]``. Held by :mod:`crp_jax.compiled`: one forward per (model,
    ``comp.forward_part()``, layers) (``cache_info()["forward"]``: composites that differ only
    in contrast, times_input or name share it), one backward per (model, composite, chunk, A,
    layers) (``"dense_backward"``), so each chunk size's compilations can be counted.
    ``num_boxes`` is A.
    """
    return dense_forward(model, comp, layers), _backward(model, comp, chunk, num_boxes, layers)


def dense_forward(model, comp: Composite, layers: bool = False):
    """The jitted forward of :func:`compiled_functions` alone (the crop plan reads its
    shapes, so that jit's trace serves both)."""
    return _forward(model, comp.forward_part(), layers)


@cached("forward", maxsize=16)
def _forward(model, comp: Composite, layers: bool):
    return jax.jit(dense_functions(model, comp, 1, layers)[0])


@cached("dense_backward", maxsize=32)
def _backward(model, comp: Composite, chunk: int, num_boxes: int, layers: bool):
    del chunk  # part of the key only
    return jax.jit(dense_functions(model, comp, num_boxes, layers)[1])


def dense_functions(model, comp: Composite, num_boxes: int, layers: bool = False):
    """Un-jitted :func:`compiled_functions`."""

    def forward(variables, x):
        (cls, loc), vjp_fn = linearize(model.apply, variables, x, comp, layers=layers)
        ok = jnp.isfinite(cls).all() & jnp.isfinite(loc).all()
        return ok, vjp_fn

    def backward(vjp_fn, x, anchors, cls_coef, loc_coef):
        def one(a, cc, lc):  # one slot: a [N], cc [N, K], lc [N, R]
            res = finish(comp, vjp_fn(initial_relevance(a, cc, lc, num_boxes)), x, layers)
            if not layers:
                return res
            rx, per = res
            flat = {k: v.reshape(v.shape[0], -1) for k, v in per.items()}
            return rx, {k: jnp.stack([v.sum(1), jnp.abs(v).sum(1)], -1) for k, v in flat.items()}

        return jax.vmap(one, in_axes=1, out_axes=1)(anchors, cls_coef, loc_coef)

    return forward, backward


def initial_relevance(anchors, cls_coef, loc_coef, num_boxes: int):
    """Cotangent ``([N, A, K], [N, A, R])``: each image's coefficients at its anchor, zero
    elsewhere. Written as a one-hot product (elementwise, no scatter), which partitions
    along a sharded batch like any elementwise op."""
    onehot = (jnp.arange(num_boxes)[None, :] == anchors[:, None]).astype(cls_coef.dtype)[..., None]  # [N, A, 1]
    return onehot * cls_coef[:, None, :], onehot * loc_coef[:, None, :]
