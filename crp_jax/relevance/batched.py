"""``explain``: relevance heatmaps for many targets, batched and compiled (docs/design.md,
"Batched explanation" and "Performance model").

Per image: one jit-compiled forward pass under the composite, which returns the VJP's
residuals (modified kernels, reciprocal denominators) as a pytree; then all of that image's
targets go through one jit-compiled backward, vmapped over a chunk of ``chunk_size`` targets.
Memory is bounded by the chunk, not by the number of targets; both functions are compiled
once per (model, composite, chunk, shapes) and reused, so a second call does not recompile.

The engine knows nothing of SSD: any Flax module whose ``apply(variables, x)`` returns
``(cls [B, A, K], loc [B, A, R])`` can be explained; A, K and R are read from the outputs'
shapes (``jax.eval_shape``, no compilation). R is 4 for an SSD (cx, cy, w, h) and 16 for
BlazeFace (box and six keypoints); the regressors' names come from ``meta.regressor_names``
(crp_jax/relevance/targets.py).

Sharding (``mesh=``): the forward runs on the whole image batch at once, sharded along the
batch axis, and each backward takes one target slot of every image (a ``[B, A, K]``
cotangent), vmapped over the slots of a chunk. The VJP's residuals then keep the model's
kernels unbatched. (An earlier version vmapped a per-image forward over the images: every
kernel residual came back broadcast to ``[B, ...]``, so the backward convolved with a
*batched* kernel, which JAX lowers to a grouped convolution over the batch; XLA's SPMD
partitioner splits that group dimension across devices incorrectly, and sharded relevance
was wrong by up to 60% of max|R|. ``tests/test_sharding.py`` checks the compiled program
has no such grouped convolution, and sharded == unsharded.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.checks import check_image_batch
from crp_jax.errors import CheckpointError, ConfigError, InputError, NumericsError, TargetError
from crp_jax.relevance.composite import Composite, get_composite
from crp_jax.relevance.core import finish, linearize
from crp_jax.relevance.cropped import Unsupported, compiled_cropped, crop_groups, trimmed_forward
from crp_jax.relevance.pairs import expand_pairs
from crp_jax.relevance.targets import ClassTarget, LocTarget, Target, encode_targets, regressor_names
from crp_jax.relevance.windows import RelevanceWindows


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
    crop: bool | str = True,
    output: str = "dense",
):
    """Relevance at the input for every target.

    Args:
      model: a Flax module whose ``apply(variables, x)`` returns ``(cls [B, A, K],
        loc [B, A, R])`` (raw logits and regressors: R = 4 box offsets for an SSD, 16 for
        BlazeFace), e.g. ``crp_jax.SSD``.
      variables: its variables (a mapping with ``"params"``).
      x: preprocessed images ``[B, H, W, C]`` float.
      targets: ``ClassTarget``/``LocTarget``/``AnchorContrastTarget`` list (e.g.
        ``targets_from_detections``; pairs: crp_jax/relevance/pairs.py). A
        ``LocTarget``'s ``coord`` is one of ``meta.regressor_names`` (without a meta: cx, cy,
        w, h for R = 4, indices otherwise).
      method: preset name ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")
        or a :class:`Composite`.
      meta: weights' meta (pixel bounds for z^B, required by "crp" and "lrp_ab";
        regressor names).
      chunk_size: targets per vmapped backward; bounds memory (SSD300: about 45 MiB of
        scratch per target on a CPU, benchmarks/RESULTS.md). 8 is also the fastest end to
        end on an H200 with ``to_host=True``; with ``to_host=False``, 32 is slightly faster.
      layers: also return per-layer relevance totals.
      mesh: a ``jax.sharding.Mesh`` (its first axis shards the image batch), or "auto"
        for all devices: images and their targets are then spread across devices, one
        SPMD program per chunk (see :func:`_explain_sharded`). Works across processes
        (``jax.distributed``): every process passes the same arguments and gets all of R.
      to_host: False keeps ``R`` on the device as a ``jax.Array`` (no device-to-host copy,
        which on a GPU costs more than the propagation itself: 1 MiB per SSD300 target).
      crop: propagate each target only inside its anchor's receptive-field cone (the
        default; docs/design.md §6, :mod:`crp_jax.relevance.cropped`) where that window
        covers at most half the image (SSD300: the first source's 108 px). The result equals
        the dense path's up to float32 rounding. ``False`` forces the dense path, "always"
        crops every head output the cropped engine handles (for tests and comparison).
        Cropped targets are grouped by head output, one compiled backward per group and
        chunk size; an image whose targets are all cropped gets a forward pass trimmed to
        what their groups read (its finiteness check then covers their outputs only).
        ``layers=True`` and ``mesh=`` always run dense.
      output: "dense" (``[T, H, W, C]``) or "windows": a :class:`RelevanceWindows` that
        keeps only each target's window (SSD300 first source: 108 x 108 instead of
        300 x 300), for explaining thousands of targets; ``.dense()`` gives the array.

    Returns:
      ``R`` as numpy ``[T, H, W, C]`` float32 in target order (a ``jax.Array`` on the
      default device with ``to_host=False``; a :class:`RelevanceWindows` with
      ``output="windows"``); with ``layers=True``,
      ``(R, flow)`` where ``flow`` maps each layer path (forward order) to ``[T, 2]``:
      total and absolute relevance at that layer's output.

    Raises:
      InputError, TargetError, ConfigError, CheckpointError: bad arguments (named).
      NumericsError: the model's forward pass is not finite for some image (names the
        first layer whose output is not finite), or a target's relevance is not finite
        (names the first layer, going back from the outputs, where it is not).
    """
    xs = _check_images(x)
    layers = _check_flag("layers", layers)
    to_host = _check_flag("to_host", to_host)
    if crop not in (True, False, "always") or isinstance(crop, (int, float)) and not isinstance(crop, bool):
        raise InputError(f"crop must be True, False or 'always', got {crop!r}")
    if output not in OUTPUTS:
        raise ConfigError(f"output {output!r} unknown; use one of {OUTPUTS}")
    chunk_size = _check_count("chunk_size", chunk_size)
    targets = _check_target_list(targets)
    targets, combine = expand_pairs(targets, layers=layers)  # anchor contrasts -> two halves each
    comp = get_composite(method, meta)
    _check_meta_fits(model, meta)
    variables = _float32_variables(variables)
    A, K, n_reg = output_dims(model, variables, xs)
    names = regressor_names(meta, n_reg)
    regressors = names if names is not None else n_reg
    images, anchors, cls_coef, loc_coef = encode_targets(targets, xs.shape[0], A, K, comp.contrast, regressors)
    T = len(images)
    if mesh is not None:
        if layers or not to_host:
            raise ConfigError(
                "layers=True and to_host=False are not supported together with mesh=... "
                "(a mesh's devices may belong to other processes)"
            )
        R = combine(
            _explain_sharded(model, variables, xs, images, anchors, cls_coef, loc_coef, comp, chunk_size, mesh, A)
        )
        return _whole_windows(R) if output == "windows" else R
    groups, n_heads = _cropped_groups(model, variables, xs, comp, A, K, crop, n_reg) if crop and not layers else ((), 0)
    windows = output == "windows"
    collect = _Collector(T, xs.shape[1:], to_host, windows, layers, zeroed=bool(groups))

    for b in np.unique(images):
        sel = np.flatnonzero(images == b)
        xb = jnp.asarray(xs[b : b + 1])
        rest = np.ones(len(sel), bool)
        parts = []
        for g in groups:
            inside = (anchors[sel] >= g.anchors[0]) & (anchors[sel] < g.anchors[1])
            rest &= ~inside
            parts.append((g, sel[inside]))
        parts.insert(0, (None, sel[rest]))
        present = [g for g, m in parts[1:] if len(m)]
        if groups and not rest.any() and len(present) < n_heads:
            # every target is cropped and some head outputs have none: a forward that keeps
            # only what their groups read (XLA drops the rest; SSD300's first source alone:
            # every layer after conv4_3)
            forward, keep = trimmed_forward(model, comp, present)
            ok, kept = forward(variables, xb)
            residual = dict(zip(keep, kept))
        else:
            forward, _ = compiled_functions(model, comp, chunk_size_for(len(sel), chunk_size), A, layers)
            ok, vjp_fn = forward(variables, xb)
            residual = dict(enumerate(jax.tree.leaves(vjp_fn))) if groups else {}
        collect.finite.append((int(b), ok))  # checked after dispatching everything (no sync here)
        for g, members in parts:
            if not len(members):
                continue
            chunk = chunk_size_for(len(members), chunk_size)
            if g is None:
                backward = compiled_functions(model, comp, chunk, A, layers)[1]
            else:
                backward = compiled_cropped(model, comp, chunk, A, g, dense_out=not (to_host or windows))
                leaves = tuple(residual[i] for i in g.leaves)
            for start in range(0, len(members), chunk):
                idx = members[start : start + chunk]
                a, c, l = _pad_chunk(anchors[idx], cls_coef[idx], loc_coef[idx], chunk)
                if g is None:
                    res = backward(vjp_fn, xb, a[None], c[None], l[None])
                else:
                    res = backward(leaves, xb, jnp.asarray(a, jnp.int32), c[:, None], l[:, None])
                collect.add(g is not None and (to_host or windows), idx, res)
    collect.flush()
    for b, ok in collect.finite:
        if not bool(ok):
            _raise_not_finite(model, variables, xs[b : b + 1], f"image {b}")
    out = collect.result()
    bad = _nonfinite_targets(out)
    if len(bad):
        _raise_nonfinite_relevance(model, variables, xs, targets, comp, bad, regressors)
    if layers:
        order = _layer_order(model, variables, xs[:1], comp)
        return out, {k: collect.flow[k] for k in order if k in collect.flow}
    return combine(out)


OUTPUTS = ("dense", "windows")


class _Collector:
    """Gathers ``explain``'s chunks into its output, one chunk behind the device: the
    device-to-host copy of chunk k starts as soon as it is dispatched and is read while
    chunk k + 1 runs.

    Memory: on the host every chunk is copied into its final place at once and dropped,
    so the peak is the output plus one chunk. The dense output is one array; windows go
    into one buffer per window size, allocated for all ``T`` targets with ``np.empty``
    (pages never written are never resident) and cut to the targets it holds at the end
    (``ndarray.resize``: shrinking reallocates in place). Keeping the chunks and
    concatenating them at the end, as before, held every window twice (10,000 targets on
    the shipped model peaked at 1.8x the dense output's peak, benchmarks/windows_memory.py).
    """

    def __init__(self, T: int, shape, to_host: bool, windows: bool, layers: bool, zeroed: bool):
        self.T, self.shape, self.to_host, self.windows, self.layers = T, tuple(shape), to_host, windows, layers
        # Cropped chunks only write their windows, so the dense output must start at zero;
        # otherwise every row is written and np.empty avoids touching 1 MiB per target twice.
        dense_host = to_host and not windows
        self.out = (np.zeros if zeroed else np.empty)((T, *self.shape), np.float32) if dense_host else None
        self.parts: list = []  # on the device: (indices, array) / (indices, windows, offsets)
        self.buffers: dict = {}  # windows on the host: window shape -> [array, [indices], [offsets], count]
        self.flow: dict[str, np.ndarray] = {}
        self.finite: list = []
        self.pending = None

    def add(self, cropped: bool, idx, res) -> None:
        if self.to_host:  # start the device-to-host copy now so it overlaps the next chunk
            jax.tree.map(lambda v: v.copy_to_host_async(), res)
        self.flush()
        self.pending = (cropped, idx, res)

    def _keep_windows(self, idx, wins, offs) -> None:
        if not self.to_host:
            self.parts.append((idx, wins, offs))
            return
        key = tuple(wins.shape[1:])
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = [np.empty((self.T, *key), np.float32), [], [], 0]
        n = len(idx)
        buf[0][buf[3] : buf[3] + n] = wins
        buf[1].append(np.asarray(idx))
        buf[2].append(np.asarray(offs))
        buf[3] += n

    def flush(self) -> None:
        if self.pending is None:
            return
        cropped, idx, res = self.pending
        self.pending = None
        n = len(idx)
        get = np.asarray if self.to_host else (lambda v: v)
        if cropped:
            wins, offs = get(res[0])[:n], np.asarray(res[1])[:n]
            if self.windows:
                self._keep_windows(idx, wins, offs)
                return
            h, w = wins.shape[1:3]
            for i, t in enumerate(idx):
                top, left = offs[i]
                self.out[t, top : top + h, left : left + w] = wins[i]
            return
        if self.layers:
            r, per = res
            for k, v in per.items():
                self.flow.setdefault(k, np.zeros((self.T, 2), np.float32))[idx] = np.asarray(v)[0, :n]
        else:
            r = res
        r = get(r)[0, :n]
        if self.windows:
            self._keep_windows(idx, r, np.zeros((n, 2), np.int64))
        elif self.to_host:
            self.out[idx] = r
        else:
            self.parts.append((idx, r))

    def result(self):
        if self.windows:
            groups = []
            if self.to_host:
                for key in list(self.buffers):
                    arr, idx, offs, n = self.buffers.pop(key)
                    if n < self.T:
                        try:  # in place: the unused (never written) tail is given back
                            arr.resize((n, *key), refcheck=False)
                        except ValueError:  # pragma: no cover - an array that does not own its data
                            arr = arr[:n]
                    groups.append((np.concatenate(idx), arr, np.concatenate(offs)))
            else:
                by_size: dict = {}
                while self.parts:  # release each part as it is taken
                    idx, wins, offs = self.parts.pop(0)
                    by_size.setdefault(tuple(wins.shape[1:3]), []).append((idx, wins, offs))
                for ps in by_size.values():
                    groups.append(
                        (
                            np.concatenate([p[0] for p in ps]),
                            jnp.concatenate([p[1] for p in ps]),
                            np.concatenate([p[2] for p in ps]),
                        )
                    )
            return RelevanceWindows(
                (self.T, *self.shape),
                tuple(g[0] for g in groups),
                tuple(g[1] for g in groups),
                tuple(g[2] for g in groups),
            )
        if self.to_host:
            return self.out
        return _gather_chunks(self.parts, self.T, self.shape)


def _whole_windows(R) -> RelevanceWindows:
    """Dense ``[T, H, W, C]`` as windows covering the whole image."""
    T = len(R)
    return RelevanceWindows(tuple(R.shape), (np.arange(T),), (R,), (np.zeros((T, 2), np.int64),))


def _cropped_groups(model, variables, xs, comp, A: int, K: int, crop, R: int = 4) -> tuple:
    """``(groups, number of head outputs)``: the anchor groups ``explain`` propagates
    cropped (docs/design.md §6), those whose window is small enough (``crop=True``) or every
    windowed one (``crop="always"``); none when the model's backward does not split its
    anchors per head output."""
    try:
        groups = crop_groups(model, variables, xs.shape, comp, A, K, R)
    except Unsupported:
        return (), 0
    return tuple(g for g in groups if (g.windowed if crop == "always" else g.cropped)), len(groups)


def heatmap(R, reduce: str = "sum") -> np.ndarray:
    """Channel-reduced heatmap: ``[..., H, W, C] -> [..., H, W]`` ("sum" keeps the sign,
    "abs" sums magnitudes, "max_abs" the largest magnitude). numpy in, numpy out; a
    ``jax.Array`` (``explain(..., to_host=False)``) is reduced on its device."""
    if isinstance(R, RelevanceWindows):
        if len(R.shape) < 4:
            raise InputError(f"heatmap needs relevance windows of shape [T, H, W, C], got {R.shape}")
        return R.map_windows(lambda w: heatmap(w, reduce), R.shape[:-1])
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


def output_sizes(model, variables, x) -> tuple[int, int]:
    """``(A, K)``: boxes and classes of a detector whose ``apply(variables, x)`` returns
    ``(cls [B, A, K], loc [B, A, R])``; from shapes only (``jax.eval_shape``, nothing runs).
    Variables that do not fit the model raise :class:`CheckpointError`."""
    A, K, _ = output_dims(model, variables, x)
    return A, K


def output_dims(model, variables, x) -> tuple[int, int, int]:
    """``(A, K, R)``: boxes, classes and regressors per box of a detector whose
    ``apply(variables, x)`` returns ``(cls [B, A, K], loc [B, A, R])`` (SSD: R = 4,
    BlazeFace: 16); from shapes only. Raises as :func:`output_sizes`."""
    apply = getattr(model, "apply", None)
    if not callable(apply):
        raise ConfigError(f"model must be a Flax module with .apply(variables, x), got {type(model).__name__}")
    if not isinstance(variables, Mapping) or "params" not in variables:
        keys = list(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise CheckpointError(f"variables must be a mapping with 'params' (as load_pretrained returns), got {keys}")
    import flax.errors

    try:
        out = jax.eval_shape(apply, variables, jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype))
    except flax.errors.FlaxError as e:
        raise CheckpointError(f"variables do not fit the model: {str(e).splitlines()[0]}") from None
    shapes = [getattr(o, "shape", None) for o in out] if isinstance(out, (tuple, list)) else None
    if not shapes or len(shapes) != 2 or any(s is None or len(s) != 3 for s in shapes) or min(shapes[1]) < 1:
        raise ConfigError(
            "explain needs a detector whose apply(variables, x) returns (cls [B, A, K], loc [B, A, R]); "
            f"this one returns {jax.tree.map(lambda o: getattr(o, 'shape', o), out)}"
        )
    (_, A, K), (_, A2, R) = shapes
    if A != A2:
        raise ConfigError(f"class and box outputs disagree on the number of boxes: {A} vs {A2}")
    return int(A), int(K), int(R)


def compiled_functions(model, comp: Composite, chunk: int, num_boxes: int, layers: bool = False):
    """The jitted ``(forward, backward)`` that ``explain`` runs per image (public, for
    benchmarks and for users who schedule their own work).

    ``forward(variables, x [N, H, W, C]) -> (ok, vjp_fn)``: ``ok`` a device bool, True when
    the outputs are finite; ``vjp_fn`` a pytree of residuals.
    ``backward(vjp_fn, x, anchors [N, chunk], cls_coef [N, chunk, K], loc_coef [N, chunk, R])
    -> R [N, chunk, H, W, C]`` (and per-layer totals ``path -> [N, chunk, 2]`` with
    ``layers=True``): slot ``c`` of image ``n`` is the target with initial relevance
    ``cls_coef[n, c]`` / ``loc_coef[n, c]`` at box ``anchors[n, c]``. Compiled once per
    (model, composite, chunk, layers) and shapes; ``num_boxes`` is A (:func:`output_sizes`).
    """
    return _jitted(model, comp, chunk, num_boxes, layers)


@functools.lru_cache(maxsize=16)
def _jitted(model, comp: Composite, chunk: int, num_boxes: int, layers: bool):
    """One jitted pair per (model, composite, chunk, A, layers): one per chunk size, so
    that a pair's compilation count says whether a chunk size recompiled
    (tests/test_engine.py). Modules and composites are frozen and hashable, so the
    package's one in-memory caching style (functools.lru_cache) serves."""
    del chunk  # part of the key only: jit specialises on the shapes it is called with
    forward, backward = _functions(model, comp, layers, num_boxes)
    return jax.jit(forward), jax.jit(backward)


# ---- internals ------------------------------------------------------------------------


def _functions(model, comp: Composite, layers: bool, num_boxes: int):
    """Un-jitted :func:`compiled_functions`. The backward takes one target slot of every
    image at a time (a ``[N, A, K]`` cotangent), vmapped over the chunk's slots, so the
    residuals' kernels stay unbatched (see the module docstring on sharding)."""

    def forward(variables, x):
        (cls, loc), vjp_fn = linearize(model.apply, variables, x, comp, layers=layers)
        ok = jnp.isfinite(cls).all() & jnp.isfinite(loc).all()
        return ok, vjp_fn

    def backward(vjp_fn, x, anchors, cls_coef, loc_coef):
        def one(a, cc, lc):  # one slot: a [N], cc [N, K], lc [N, R]
            ct = _initial_relevance(a, cc, lc, num_boxes)
            res = finish(comp, vjp_fn(ct), x, layers)
            if layers:
                rx, per = res
                totals = {
                    k: jnp.stack([v.reshape(v.shape[0], -1).sum(1), jnp.abs(v).reshape(v.shape[0], -1).sum(1)], -1)
                    for k, v in per.items()
                }
                return rx, totals
            return res

        return jax.vmap(one, in_axes=1, out_axes=1)(anchors, cls_coef, loc_coef)

    return forward, backward


def _initial_relevance(anchors, cls_coef, loc_coef, num_boxes: int):
    """Cotangent ``([N, A, K], [N, A, R])``: each image's coefficients at its anchor, zero
    elsewhere. Written as a one-hot product (elementwise, no scatter), which partitions
    along a sharded batch like any elementwise op."""
    onehot = (jnp.arange(num_boxes)[None, :] == anchors[:, None]).astype(cls_coef.dtype)[..., None]  # [N, A, 1]
    return onehot * cls_coef[:, None, :], onehot * loc_coef[:, None, :]


def _pad_chunk(anchors, cls_coef, loc_coef, chunk: int):
    pad = chunk - len(anchors)
    return (
        np.pad(anchors, (0, pad)),
        np.pad(cls_coef, ((0, pad), (0, 0))),
        np.pad(loc_coef, ((0, pad), (0, 0))),
    )


def _gather_chunks(parts, T: int, shape) -> jax.Array:
    """Chunks ``(target indices, [n, ...])`` -> ``[T, ...]`` in target order, on the device."""
    if not parts:
        return jnp.zeros((0, *tuple(shape)), jnp.float32)
    order = np.concatenate([idx for idx, _ in parts])
    R = jnp.concatenate([r for _, r in parts]) if len(parts) > 1 else parts[0][1]
    if np.array_equal(order, np.arange(T)):
        return R
    return R[jnp.asarray(np.argsort(order))]


def chunk_size_for(n_targets: int, chunk_size: int) -> int:
    """The chunk ``explain`` uses for ``n_targets`` targets of one image: ``chunk_size``, or
    the next power of two at or above ``n_targets`` when that is smaller (so that few
    targets do not pay for a whole chunk, and compilations repeat)."""
    return min(chunk_size, 1 << max(0, (n_targets - 1).bit_length()))


def _explain_sharded(model, variables, xs, images, anchors, cls_coef, loc_coef, comp, chunk_size, mesh, num_boxes):
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
    chunk = chunk_size_for(max(int(counts.max(initial=0)), 1), chunk_size)
    slots = max(chunk, -(-int(counts.max(initial=0)) // chunk) * chunk)
    K = cls_coef.shape[1]
    A = np.zeros((Bp, slots), np.int32)
    C = np.zeros((Bp, slots, K), np.float32)
    L = np.zeros((Bp, slots, loc_coef.shape[1]), np.float32)
    slot = np.zeros(T, np.int64)
    fill = np.zeros(Bp, np.int64)
    for t, b in enumerate(images):
        slot[t] = fill[b]
        A[b, fill[b]], C[b, fill[b]], L[b, fill[b]] = anchors[t], cls_coef[t], loc_coef[t]
        fill[b] += 1
    xp = np.zeros((Bp,) + xs.shape[1:], np.float32)
    xp[:B] = xs
    xp[B:] = xs[:1]  # padding images repeat a real one (all-zero input is fine too; this stays in range)
    sharded = NamedSharding(mesh, PartitionSpec(axis))
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(a):
        # Each process supplies the shards of its own devices (works on one or many hosts).
        return jax.make_array_from_callback(a.shape, sharded, lambda idx: a[idx])

    fwd, bwd = compiled_functions(model, comp, chunk, num_boxes)
    x_dev = put(xp)
    host_vars = jax.tree.map(np.asarray, variables)
    rep_vars = jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, replicated, lambda i: a[i]), host_vars)
    ok, vjp_b = fwd(rep_vars, x_dev)
    out = np.empty((T,) + xs.shape[1:], np.float32)  # every target lands in one slot
    for start in range(0, slots, chunk):
        sl = slice(start, start + chunk)
        R = _gather(bwd(vjp_b, x_dev, put(A[:, sl]), put(C[:, sl]), put(L[:, sl])))  # [Bp, chunk, ...]
        hit = (slot >= start) & (slot < start + chunk)
        out[hit] = R[images[hit], slot[hit] - start]
    if not bool(_gather(ok)):
        _raise_not_finite(model, variables, xs, "the batch")
    return out


def _gather(a) -> np.ndarray:
    if a.is_fully_addressable:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def _layer_order(model, variables, x, comp: Composite) -> list[str]:
    shapes: dict = {}

    def f(x):
        with comp.intercept(record=shapes, model_input=x):
            return model.apply(variables, x)

    jax.eval_shape(f, jnp.asarray(x))
    return list(shapes)


def _nonfinite_targets(out) -> np.ndarray:
    """Indices of the targets whose relevance holds NaN or Inf (one reduction per part)."""
    if isinstance(out, RelevanceWindows):
        parts = zip(out.targets, out.windows)
    else:
        parts = [(np.arange(len(out)), out)]
    bad = []
    for idx, r in parts:
        xp = jnp if isinstance(r, jax.Array) else np
        ok = np.asarray(xp.isfinite(r).reshape(len(r), -1).all(axis=1)) if len(r) else np.ones(0, bool)
        bad.append(np.asarray(idx)[~ok])
    return np.sort(np.concatenate(bad)) if bad else np.zeros(0, np.int64)


def _raise_nonfinite_relevance(model, variables, xs, targets, comp: Composite, bad: np.ndarray, regressors=4):
    """Slow path: some target's relevance is not finite although the forward was. Rerun the
    first such target densely with the per-layer relevance and name the first layer, going
    back from the outputs, whose output relevance holds NaN/Inf."""
    from crp_jax.relevance.core import relevance_vjp

    t = int(bad[0])
    target = targets[t]
    xb = jnp.asarray(xs[target.image : target.image + 1])
    A, K, R = output_dims(model, variables, xb)
    _, anchors, cls_coef, loc_coef = encode_targets(
        [dataclasses.replace(target, image=0)], 1, A, K, comp.contrast, regressors
    )
    cot = (
        jnp.zeros((1, A, K), jnp.float32).at[0, anchors[0]].set(cls_coef[0]),
        jnp.zeros((1, A, R), jnp.float32).at[0, anchors[0]].set(loc_coef[0]),
    )
    _, explain_fn = relevance_vjp(model.apply, variables, xb, comp, layers=True)
    _, per_layer = explain_fn(cot)  # layer path -> relevance at its output, in forward order
    nonfinite = [k for k, r in per_layer.items() if not bool(jnp.all(jnp.isfinite(r)))]
    where = (
        f"at the output of layer {nonfinite[-1]!r} (the first, going back from the outputs)"
        if nonfinite
        else "in the rule of the layer that reads the input (every layer's output relevance is finite)"
    )
    raise NumericsError(
        f"method {comp.name!r}: the relevance of {len(bad)} target(s) is not finite, first target {t} ({target}); "
        f"it becomes NaN/Inf {where}. The forward pass is finite: the composite's rules are unbounded here "
        "(use a sign-aware w+ preset such as 'crp' or 'lrp_ab', or larger stabilisers)"
    )


def _raise_not_finite(model, variables, x, where: str):
    """Slow path, after the forward's cheap ``isfinite`` check failed: name the first layer
    whose output is not finite (the plain forward, without rules: rules do not change it)."""
    from crp_jax.numerics import check_finite_forward

    check_finite_forward(model, variables, jnp.asarray(x), where=where)
    raise NumericsError(f"{where}: the model's outputs are not finite (every layer output was finite on a rerun)")


# ---- argument checks (one line each, naming the bad value) -----------------------------


def _check_images(x) -> np.ndarray:
    """``[B, H, W, C]`` floating, B >= 1, every pixel finite; returned as float32 numpy. (The
    model itself checks its own size and channels: SSD raises InputError.)"""
    check_image_batch(x, channels=None)
    xs = np.asarray(x, np.float32)
    bad = np.flatnonzero(~np.isfinite(xs).reshape(xs.shape[0], -1).all(axis=1))
    if bad.size:
        raise InputError(f"images {bad.tolist()} contain NaN or Inf pixels")
    return xs


def _float32_variables(variables):
    """Floating leaves of another precision (float16, bfloat16, float64) as float32, the
    precision the rules are written and tested for (and the images are cast to); a mapping
    that is not variables is left for ``output_sizes`` to name."""
    if not isinstance(variables, Mapping):
        return variables

    def cast(a):
        dtype = getattr(a, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and dtype != jnp.float32:
            return np.asarray(a, np.float32) if isinstance(a, np.ndarray) else jnp.asarray(a, jnp.float32)
        return a

    return jax.tree.map(cast, variables)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_target_list(targets) -> list:
    if isinstance(targets, (ClassTarget, LocTarget)):
        raise TargetError(f"targets must be a list of targets; got a single {targets!r}: wrap it in [...]")
    if isinstance(targets, (str, bytes, Mapping)) or not isinstance(targets, (Sequence, np.ndarray)):
        raise TargetError(f"targets must be a list of ClassTarget/LocTarget, got {type(targets).__name__}")
    return list(targets)


def _check_meta_fits(model, meta) -> None:
    """A meta that describes another architecture than the model's (both carry a
    ``config``) is refused, as ``detect`` refuses it."""
    mc, c = getattr(meta, "config", None), getattr(model, "config", None)
    if mc is not None and c is not None and mc != c:
        raise ConfigError(f"meta describes a different architecture than the model (meta: {mc}, model: {c})")
