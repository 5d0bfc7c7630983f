"""``explain``: relevance heatmaps for many targets, batched and compiled (DESIGN §3, §6).

Per image: one jit-compiled forward pass under the composite, which returns the VJP's
residuals (modified kernels, reciprocal denominators) as a pytree; then all of that image's
targets go through one jit-compiled, vmapped backward in chunks of ``chunk_size``. Memory is
bounded by the chunk, not by the number of targets; both functions are compiled once per
(model, composite, chunk, shapes) and reused, so a second call does not recompile.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.errors import ConfigError, InputError
from crp_jax.relevance.composite import Composite, get_composite
from crp_jax.relevance.core import finish, linearize
from crp_jax.relevance.targets import Target, encode_targets
from crp_jax.ssd.model import check_image_batch

_COMPILED: OrderedDict[tuple, tuple] = OrderedDict()
_MAX_CACHED = 16


def explain(
    model,
    variables,
    x,
    targets: Sequence[Target],
    method: str | Composite = "crp",
    meta=None,
    chunk_size: int = 8,
    layers: bool = False,
    mesh=None,
    to_host: bool = True,
):
    """Relevance at the input for every target.

    Args:
      model: an ``SSD`` module (anything with ``.apply`` and ``.config``).
      variables: its variables.
      x: preprocessed images ``[B, S, S, 3]`` float32.
      targets: ``ClassTarget``/``LocTarget`` list (e.g. ``targets_from_detections``).
      method: preset name ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")
        or a :class:`Composite`.
      meta: weights' meta (pixel bounds for z^B; required by "crp" and "lrp_ab").
      chunk_size: targets per vmapped backward; bounds memory (SSD300: about 45 MiB of
        scratch per target on a CPU, benchmarks/RESULTS.md). 8 is also the fastest end to
        end on an H200 with ``to_host=True``; with ``to_host=False``, 32 is slightly faster.
      layers: also return per-layer relevance totals.
      mesh: a ``jax.sharding.Mesh`` (its first axis shards the image batch), or "auto"
        for all devices: images and their targets are then spread across devices, one
        SPMD program per chunk (see :func:`_explain_sharded`).
      to_host: False keeps ``R`` on the device as a ``jax.Array`` (no device-to-host copy,
        which on a GPU costs more than the propagation itself: 1 MiB per SSD300 target).

    Returns:
      ``R`` as numpy ``[T, S, S, 3]`` float32 in target order (a ``jax.Array`` on the
      default device with ``to_host=False``); with ``layers=True``,
      ``(R, flow)`` where ``flow`` maps each layer path (forward order) to ``[T, 2]``:
      total and absolute relevance at that layer's output.
    """
    cfg = model.config
    check_image_batch(x, cfg.image_size)
    xs = np.asarray(x, np.float32)
    bad = np.flatnonzero(~np.isfinite(xs).reshape(xs.shape[0], -1).all(axis=1))
    if bad.size:
        raise InputError(f"images {bad.tolist()} contain NaN or Inf pixels")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(to_host, bool):
        raise InputError(f"to_host must be True or False, got {to_host!r}")
    comp = get_composite(method, meta)
    images, anchors, cls_coef, loc_coef = encode_targets(
        targets, xs.shape[0], cfg.num_anchors(), cfg.num_classes, comp.contrast
    )
    T = len(images)
    if mesh is not None:
        if layers or not to_host:
            raise ConfigError("layers=True and to_host=False are not supported together with mesh=...")
        return _explain_sharded(model, variables, xs, images, anchors, cls_coef, loc_coef, comp, chunk_size, mesh)
    # Every row is written below; np.empty avoids touching 1 MiB per target twice.
    out = np.empty((T,) + xs.shape[1:], np.float32) if to_host else None
    on_device: list = []  # to_host=False: (target indices, [n, S, S, 3] jax.Array) per chunk
    flow: dict[str, np.ndarray] = {}
    pending = None  # one-deep pipeline: copy chunk k to the host while chunk k+1 runs

    def drain():
        idx, res = pending
        if layers:
            r, per = res
            for k, v in per.items():
                flow.setdefault(k, np.zeros((T, 2), np.float32))[idx] = np.asarray(v)[: len(idx)]
        else:
            r = res
        if to_host:
            out[idx] = np.asarray(r)[: len(idx)]
        else:
            on_device.append((idx, r[: len(idx)]))

    for b in np.unique(images):
        sel = np.flatnonzero(images == b)
        chunk = min(chunk_size, _next_pow2(len(sel)))
        forward, backward = _compiled(model, comp, chunk, layers)
        xb = jnp.asarray(xs[b : b + 1])
        vjp_fn = forward(variables, xb)
        for start in range(0, len(sel), chunk):
            idx = sel[start : start + chunk]
            pad = chunk - len(idx)
            a = np.pad(anchors[idx], (0, pad))
            c = np.pad(cls_coef[idx], ((0, pad), (0, 0)))
            l = np.pad(loc_coef[idx], ((0, pad), (0, 0)))
            res = backward(vjp_fn, xb, a, c, l)
            if to_host:  # start the device-to-host copy now so it overlaps the next chunk
                jax.tree.map(lambda v: v.copy_to_host_async(), res)
            if pending is not None:
                drain()
            pending = (idx, res)
    if pending is not None:
        drain()
    if not to_host:
        out = _gather_chunks(on_device, T, xs.shape[1:])
    if layers:
        order = _layer_order(model, variables, xs[:1], comp)
        return out, {k: flow[k] for k in order if k in flow}
    return out


def heatmap(R, reduce: str = "sum") -> np.ndarray:
    """Channel-reduced heatmap: ``[..., H, W, C] -> [..., H, W]`` ("sum" keeps the sign,
    "abs" sums magnitudes, "max_abs" the largest magnitude). numpy in, numpy out; a
    ``jax.Array`` (``explain(..., to_host=False)``) is reduced on its device."""
    xp = jnp if isinstance(R, jax.Array) else np  # a jax.Array stays on its device
    R = xp.asarray(R)
    if R.ndim < 3:
        raise InputError(f"heatmap needs relevance [..., H, W, C], got shape {R.shape}")
    if reduce == "sum":
        return R.sum(-1)
    if reduce == "abs":
        return xp.abs(R).sum(-1)
    if reduce == "max_abs":
        return xp.abs(R).max(-1)
    raise InputError(f"reduce {reduce!r} unknown; use 'sum', 'abs' or 'max_abs'")


def _gather_chunks(parts, T: int, shape) -> jax.Array:
    """Chunks ``(target indices, [n, ...])`` -> ``[T, ...]`` in target order, on the device."""
    if not parts:
        return jnp.zeros((0,) + tuple(shape), jnp.float32)
    order = np.concatenate([idx for idx, _ in parts])
    R = jnp.concatenate([r for _, r in parts]) if len(parts) > 1 else parts[0][1]
    if np.array_equal(order, np.arange(T)):
        return R
    return R[jnp.asarray(np.argsort(order))]


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _per_image_fns(model, comp: Composite, layers: bool):
    """The un-jitted per-image forward (``x [1, S, S, 3] -> vjp_fn``) and per-chunk
    backward (``vjp_fn, x, anchors [C], cls_coef [C, K], loc_coef [C, 4] -> [C, S, S, 3]``)."""
    cfg = model.config
    A, K = cfg.num_anchors(), cfg.num_classes

    def forward(variables, x):
        _, vjp_fn = linearize(model.apply, variables, x, comp, layers=layers)
        return vjp_fn  # a pytree of residuals; its structure is fixed per shapes

    def backward(vjp_fn, x, anchors, cls_coef, loc_coef):
        def one(a, cc, lc):
            ct = (
                jnp.zeros((1, A, K), x.dtype).at[0, a].set(cc),
                jnp.zeros((1, A, 4), x.dtype).at[0, a].set(lc),
            )
            res = finish(comp, vjp_fn(ct), x, layers)
            if layers:
                rx, per = res
                return rx[0], {k: jnp.stack([v.sum(), jnp.abs(v).sum()]) for k, v in per.items()}
            return res[0]

        return jax.vmap(one)(anchors, cls_coef, loc_coef)

    return forward, backward


def _cached(key, build):
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    _COMPILED[key] = value = build()
    if len(_COMPILED) > _MAX_CACHED:
        _COMPILED.popitem(last=False)
    return value


def _compiled(model, comp: Composite, chunk: int, layers: bool):
    def build():
        forward, backward = _per_image_fns(model, comp, layers)
        return jax.jit(forward), jax.jit(backward)

    return _cached((model, comp, chunk, layers), build)


def _compiled_batched(model, comp: Composite, chunk: int):
    def build():
        forward, backward = _per_image_fns(model, comp, False)
        fwd = jax.jit(jax.vmap(lambda v, x: forward(v, x[None]), in_axes=(None, 0)))
        bwd = jax.jit(jax.vmap(lambda f, x, a, c, l: backward(f, x[None], a, c, l)))
        return fwd, bwd

    return _cached((model, comp, chunk, "batched"), build)


def _explain_sharded(model, variables, xs, images, anchors, cls_coef, loc_coef, comp, chunk_size, mesh):
    """Images (and their targets) spread over the devices of ``mesh`` along its first axis.

    Every image gets the same number of target slots (the largest count, rounded up to a
    whole chunk; unused slots have zero initial relevance), so one SPMD program per chunk
    serves all images; the batch is padded to a multiple of the device count.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if isinstance(mesh, str) and mesh == "auto":
        mesh = Mesh(np.array(jax.devices()), ("batch",))
    if not isinstance(mesh, Mesh):
        raise ConfigError(f"mesh must be a jax.sharding.Mesh or 'auto', got {mesh!r}")
    axis = mesh.axis_names[0]
    n_dev = mesh.shape[axis]
    B, T = xs.shape[0], len(images)
    Bp = -(-B // n_dev) * n_dev
    counts = np.bincount(images, minlength=B)
    chunk = min(chunk_size, _next_pow2(max(int(counts.max(initial=0)), 1)))
    slots = max(chunk, -(-int(counts.max(initial=0)) // chunk) * chunk)
    K = cls_coef.shape[1]
    A = np.zeros((Bp, slots), np.int32)
    C = np.zeros((Bp, slots, K), np.float32)
    L = np.zeros((Bp, slots, 4), np.float32)
    slot = np.zeros(T, np.int64)
    fill = np.zeros(Bp, np.int64)
    for t, b in enumerate(images):
        slot[t] = fill[b]
        A[b, fill[b]], C[b, fill[b]], L[b, fill[b]] = anchors[t], cls_coef[t], loc_coef[t]
        fill[b] += 1
    xp = np.zeros((Bp,) + xs.shape[1:], np.float32)
    xp[:B] = xs
    sharded = NamedSharding(mesh, PartitionSpec(axis))
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(a):
        # Each process supplies the shards of its own devices (works on one or many hosts).
        return jax.make_array_from_callback(a.shape, sharded, lambda idx: a[idx])

    fwd, bwd = _compiled_batched(model, comp, chunk)
    x_dev = put(xp)
    host_vars = jax.tree.map(np.asarray, variables)
    rep_vars = jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, replicated, lambda i: a[i]), host_vars)
    vjp_b = fwd(rep_vars, x_dev)
    out = np.empty((T,) + xs.shape[1:], np.float32)  # every target lands in one slot
    for start in range(0, slots, chunk):
        sl = slice(start, start + chunk)
        R = _gather(bwd(vjp_b, x_dev, put(A[:, sl]), put(C[:, sl]), put(L[:, sl])))  # [Bp, chunk, ...]
        hit = (slot >= start) & (slot < start + chunk)
        out[hit] = R[images[hit], slot[hit] - start]
    return out


def _gather(a) -> np.ndarray:
    if a.is_fully_addressable:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def _layer_order(model, variables, x, comp: Composite) -> list[str]:
    shapes: dict = {}

    def f(x):
        with comp.intercept(record=shapes):
            return model.apply(variables, x)

    jax.eval_shape(f, jnp.asarray(x))
    return list(shapes)
