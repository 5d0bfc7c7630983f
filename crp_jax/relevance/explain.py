"""``explain`` and its two siblings, one contract each, and the orchestration that picks the
path for every target (docs/design.md §3):

- :func:`explain` -> relevance ``[T, H, W, C]`` at the input, one row per target;
- :func:`explain_windows` -> :class:`RelevanceWindows`, each target kept on its window;
- :func:`relevance_flow` -> ``(R, flow)``: also the relevance at every layer's output.

Each call validates its arguments, encodes the targets as initial relevance
(:mod:`crp_jax.relevance.targets`), plans which images share a forward pass and which targets
share a backward call (:mod:`crp_jax.relevance.schedule`), and runs each target on one path:
dense (:mod:`crp_jax.relevance.dense`), cropped to its anchor's receptive-field cone
(:mod:`crp_jax.relevance.cropped`), or sharded over a mesh (:mod:`crp_jax.relevance.sharded`).
The engine knows nothing of SSD: any Flax module whose ``apply(variables, x)`` returns
``(cls [B, A, K], loc [B, A, R])`` is explained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.checks import check_image_batch
from crp_jax.compiled import cached, shape_key, shape_tree
from crp_jax.errors import CheckpointError, ConfigError, InputError, NumericsError, TargetError
from crp_jax.relevance.collect import Collector, whole_windows
from crp_jax.relevance.composite import Composite, get_composite
from crp_jax.relevance.cones import cone_sizes
from crp_jax.relevance.cropped import (
    Unsupported,
    auto_crops,
    batch_rows_readable,
    compiled_cropped,
    crop_groups,
    trimmed_forward,
)
from crp_jax.relevance.dense import compiled_functions
from crp_jax.relevance.pairs import expand_pairs
from crp_jax.relevance.schedule import DENSE, chunk_size_for, plan, slot_arrays
from crp_jax.relevance.targets import ClassTarget, LocTarget, Target, encode_targets, regressor_names
from crp_jax.relevance.windows import RelevanceWindows

#: How ``crop=`` chooses between the cropped and the dense path: "auto" crops a head output
#: whose receptive-field window covers at most half the image, or at most three quarters when
#: the call has at least 16 of its targets (:func:`crp_jax.relevance.cropped.auto_crops`: a
#: cropped program pays back its tracing only over many targets), "always" every head output
#: the cropped engine windows, "never" none. ``True`` and ``False`` mean "auto" and "never".
CROP_MODES = ("auto", "always", "never")

_ARGS = """
    Args:
      model: a Flax module whose ``apply(variables, x)`` returns ``(cls [B, A, K],
        loc [B, A, R])`` (raw logits and regressors: R = 4 box offsets for an SSD, 16 for
        BlazeFace), e.g. ``crp_jax.SSD``.
      variables: its variables (a mapping with ``"params"``).
      x: preprocessed images ``[B, H, W, C]`` float.
      targets: ``ClassTarget``/``LocTarget``/``AnchorContrastTarget`` list (e.g.
        ``targets_from_detections``; anchor contrasts: :mod:`crp_jax.relevance.pairs`). A
        ``LocTarget``'s ``coord`` is one of ``meta.regressor_names`` (without a meta: cx, cy,
        w, h for R = 4, indices otherwise).
      method: preset name ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input", or
        one registered with ``register_composite``) or a :class:`Composite`.
      meta: weights' meta (pixel bounds for z^B, required by "crp" and "lrp_ab";
        regressor names).
      chunk_size: at most this many targets' backwards per compiled call (targets of one
        image, or slots of several images); bounds memory.
"""

_RAISES = """
    Raises:
      InputError, TargetError, ConfigError, CheckpointError: bad arguments (named).
      NumericsError: the model's forward pass is not finite for some image (names the
        first layer whose output is not finite), or a target's relevance is not finite
        (names the first layer, going back from the outputs, where it is not).
"""


def explain(
    model,
    variables,
    x,
    targets: Sequence[Target],
    method: str | Composite = "crp",
    meta=None,
    chunk_size: int = 8,
    mesh=None,
    to_host: bool = True,
    crop: str | bool = "auto",
) -> np.ndarray | jax.Array:
    return _explain(model, variables, x, targets, method, meta, chunk_size, mesh, to_host, crop, windows=False)


explain.__doc__ = f"""Relevance at the input for every target: ``[T, H, W, C]`` float32, in target order.
{_ARGS}      mesh: a ``jax.sharding.Mesh`` (its first axis shards the image batch) or "auto" for
        every device (:mod:`crp_jax.relevance.sharded`); works across processes
        (``jax.distributed``): every process passes the same arguments and gets all of R.
        Runs dense.
      to_host: False keeps ``R`` on the default device as a ``jax.Array`` (no device-to-host
        copy); not with a mesh.
      crop: one of :data:`CROP_MODES` ("auto": crop head outputs with small windows). The
        cropped result equals the dense one up to float32 rounding.

    Returns:
      numpy ``[T, H, W, C]`` float32 (a ``jax.Array`` with ``to_host=False``).
{_RAISES}"""


def explain_windows(
    model,
    variables,
    x,
    targets: Sequence[Target],
    method: str | Composite = "crp",
    meta=None,
    chunk_size: int = 8,
    mesh=None,
    to_host: bool = True,
    crop: str | bool = "auto",
) -> RelevanceWindows:
    return _explain(model, variables, x, targets, method, meta, chunk_size, mesh, to_host, crop, windows=True)


explain_windows.__doc__ = f"""Relevance of every target kept on its receptive-field window: a
    :class:`RelevanceWindows` (for explaining thousands of targets; ``.dense()`` or ``[t]``
    give dense arrays). Targets that run dense get whole-image windows.
{_ARGS}      mesh, to_host, crop: as :func:`explain`.

    Returns:
      :class:`RelevanceWindows` of shape ``(T, H, W, C)`` (windows as numpy, or ``jax.Array``
      with ``to_host=False``).
{_RAISES}"""


def relevance_flow(
    model,
    variables,
    x,
    targets: Sequence[Target],
    method: str | Composite = "crp",
    meta=None,
    chunk_size: int = 8,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    job = _prepare(model, variables, x, targets, method, meta, chunk_size, flow=True)
    out, flow = _run_local(job, (), 0, to_host=True, windows=False, layers=True)
    bad = _nonfinite_targets(out)
    if len(bad):
        _raise_nonfinite_relevance(job, bad)
    order = _layer_order(job.model, job.variables, job.xs[:1], job.comp)
    return out, {k: flow[k] for k in order if k in flow}


relevance_flow.__doc__ = f"""Relevance at the input and its total at every layer's output (dense path).
{_ARGS}
    Returns:
      ``(R, flow)``: ``R`` as :func:`explain`; ``flow`` maps each layer path (forward order)
      to ``[T, 2]``: total and absolute relevance at that layer's output.
{_RAISES}"""


@dataclass(frozen=True)
class _Job:
    """One call's validated arguments and encoded targets."""

    model: Any
    variables: Any
    xs: np.ndarray  # [B, H, W, C] float32
    targets: list
    comp: Composite
    chunk_size: int
    num_boxes: int
    num_classes: int
    num_regressors: int
    regressors: Any  # names, or the count
    combine: Any  # elementary targets' relevance -> one row per given target (pairs.expand_pairs)
    images: np.ndarray  # [T]
    anchors: np.ndarray  # [T]
    cls_coef: np.ndarray  # [T, K]
    loc_coef: np.ndarray  # [T, R]


def _prepare(model, variables, x, targets, method, meta, chunk_size, flow: bool = False) -> _Job:
    """Checks, composite and encoded targets; anchor contrasts (:mod:`crp_jax.relevance.pairs`)
    become two elementary targets each, in the same calls."""
    xs = _check_images(x)
    chunk_size = _check_count("chunk_size", chunk_size)
    targets, combine = expand_pairs(_check_target_list(targets), layers=flow)
    comp = get_composite(method, meta)
    _check_meta_fits(model, meta)
    variables = _float32_variables(variables)
    A, K, n_reg = output_dims(model, variables, xs)
    names = regressor_names(meta, n_reg)
    regressors = names if names is not None else n_reg
    images, anchors, cls_coef, loc_coef = encode_targets(targets, xs.shape[0], A, K, comp.contrast, regressors)
    return _Job(
        model,
        variables,
        xs,
        targets,
        comp,
        chunk_size,
        A,
        K,
        n_reg,
        regressors,
        combine,
        images,
        anchors,
        cls_coef,
        loc_coef,
    )


def _explain(model, variables, x, targets, method, meta, chunk_size, mesh, to_host, crop, windows: bool):
    to_host = _check_flag("to_host", to_host)
    crop = _crop_mode(crop)
    job = _prepare(model, variables, x, targets, method, meta, chunk_size)
    if mesh is not None:
        if not to_host:
            raise ConfigError(
                "to_host=False is not supported with mesh=... (a mesh's devices may belong to other processes)"
            )
        from crp_jax.relevance.sharded import explain_sharded

        R = explain_sharded(job, mesh, lambda images: _raise_not_finite(job, images))
        out = whole_windows(R) if windows else R
    else:
        groups, n_heads = _cropped_groups(job, crop)
        out = _run_local(job, groups, n_heads, to_host=to_host, windows=windows, layers=False)
    bad = _nonfinite_targets(out)
    if len(bad):
        _raise_nonfinite_relevance(job, bad)
    return job.combine(out)


def _run_local(job: _Job, groups: tuple, n_heads: int, *, to_host: bool, windows: bool, layers: bool):
    """Runs every target of ``job`` on this process's default device: images batched through
    the forward as :func:`crp_jax.relevance.schedule.plan` says, dense targets in slots,
    cropped targets per image and group. Returns the output (and the flow with ``layers``)."""
    model, comp, A = job.model, job.comp, job.num_boxes
    anchors, cls_coef, loc_coef = job.anchors, job.cls_coef, job.loc_coef
    T = len(job.images)
    group_of = np.full(T, DENSE)
    for i, g in enumerate(groups):
        group_of[(anchors >= g.anchors[0]) & (anchors < g.anchors[1])] = i
    batches = plan(job.images, group_of, job.chunk_size)
    if groups and any(len(b.images) > 1 and b.cropped for b in batches):
        if not batch_rows_readable(model, job.variables, job.xs.shape, comp):
            groups, group_of = (), np.full(T, DENSE)  # cannot crop within a batch: all dense
            batches = plan(job.images, group_of, job.chunk_size)
    collect = Collector(T, job.xs.shape[1:], to_host, windows, layers, zeroed=bool(groups))
    dense_out = not (to_host or windows)  # cropped results placed on the device
    finite = []
    for batch in batches:
        xb = jnp.asarray(job.xs[batch.images])
        present = [groups[i] for i in batch.groups]
        if not batch.width and len(present) < n_heads:
            # every target is cropped and some head outputs have none: a forward that keeps
            # only what their groups read (XLA drops the rest; SSD300's first source alone:
            # every layer after conv4_3)
            forward, keep = trimmed_forward(model, comp, present)
            ok, kept = forward(job.variables, xb)
            residual = dict(zip(keep, kept))
        else:
            forward, backward = compiled_functions(model, comp, max(batch.width, 1), A, layers)
            ok, vjp_fn = forward(job.variables, xb)
            residual = dict(enumerate(jax.tree.leaves(vjp_fn))) if present else {}
        finite.append((batch.images, ok))  # checked after dispatching everything (no sync here)
        for start, pos in batch.calls():
            idx, rows, slots = batch.dense[pos], batch.rows[pos], batch.slots[pos] - start
            a, c, l = _slots(rows, slots, job, idx, len(batch.images), batch.width)
            collect.add_dense(idx, rows, slots, backward(vjp_fn, xb, a, c, l))
        for row, i, members in batch.cropped:
            g = groups[i]
            chunk = chunk_size_for(len(members), job.chunk_size)
            cropped = compiled_cropped(model, comp, chunk, A, g, dense_out=dense_out)
            leaves = tuple(residual[k] for k in g.leaves)
            for start in range(0, len(members), chunk):
                idx = members[start : start + chunk]
                pad = chunk - len(idx)
                a = jnp.asarray(np.pad(anchors[idx], (0, pad)), jnp.int32)
                c = np.pad(cls_coef[idx], ((0, pad), (0, 0)))[:, None]
                l = np.pad(loc_coef[idx], ((0, pad), (0, 0)))[:, None]
                res = cropped(leaves, xb, a, c, l, row)
                if dense_out:
                    collect.add_dense(idx, np.zeros(len(idx), np.int64), np.arange(len(idx)), res)
                else:
                    collect.add_windows(idx, res)
    out = collect.result()
    for images, ok in finite:
        if not bool(ok):
            _raise_not_finite(job, images.tolist())
    return (out, collect.flow) if layers else out


def _slots(rows, slots, job: _Job, idx, num_rows: int, width: int):
    return slot_arrays(rows, slots, job.anchors[idx], job.cls_coef[idx], job.loc_coef[idx], num_rows, width)


def _crop_mode(crop) -> str:
    if isinstance(crop, (bool, np.bool_)):
        return "auto" if crop else "never"
    if isinstance(crop, str) and crop in CROP_MODES:
        return crop
    raise InputError(f"crop must be one of {CROP_MODES} (or True/False), got {crop!r}")


def _cropped_groups(job: _Job, crop: str) -> tuple:
    """``(groups, number of head outputs)``: the anchor groups to propagate cropped, those
    whose window is small enough ("auto") or every windowed one ("always"); none with
    "never" or when the model's backward does not split its anchors per head output."""
    if crop == "never" or (crop == "auto" and not _may_crop(job)):
        return (), 0
    try:
        groups = crop_groups(
            job.model, job.variables, job.xs.shape, job.comp, job.num_boxes, job.num_classes, job.num_regressors
        )
    except Unsupported:
        return (), 0
    if crop == "always":
        return tuple(g for g in groups if g.windowed), len(groups)
    return tuple(g for g in groups if g.crops(_targets_in(job, g.anchors))), len(groups)


def _targets_in(job: _Job, anchors: Sequence[int]) -> int:
    """How many of the call's targets lie in the anchor rows ``[start, stop)``."""
    return int(((job.anchors >= anchors[0]) & (job.anchors < anchors[1])).sum())


def _may_crop(job: _Job) -> bool:
    """Whether "auto" may crop some head output (:func:`crp_jax.relevance.cropped.auto_crops`
    of some group of anchors, its window and its targets). Read from the receptive fields of
    the forward (:func:`crp_jax.relevance.cones.cone_sizes`: one traced forward per model and
    shapes), which the crop plan's windows contain; when no group qualifies (the shipped 128 px
    model, whose fields cover 71% to 100% of the image, with fewer than 16 targets in the
    first) the per-composite plan, a traced backward per method, is skipped."""
    _, H, W, C = job.xs.shape
    try:
        fields = cone_sizes(job.model, job.variables, (1, H, W, C))
    except InputError:  # no anchor axis the cone walk understands: let the plan decide
        return True
    return any(
        auto_crops(f.sizes["input"], (H, W), _targets_in(job, (f.anchors.start, f.anchors.stop))) for f in fields
    )


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
    x_spec = ((1,) + tuple(x.shape[1:]), np.dtype(x.dtype).name)
    try:
        key = shape_key(variables)
    except (AttributeError, TypeError):  # leaves that are not arrays: traced uncached, and named there
        return _output_dims(model, variables, x_spec)
    return _cached_output_dims(model, key, x_spec)


@cached("output_dims", maxsize=32)
def _cached_output_dims(model, key, x_spec) -> tuple[int, int, int]:
    return _output_dims(model, shape_tree(key), x_spec)


def _output_dims(model, variables, x_spec) -> tuple[int, int, int]:
    import flax.errors

    try:
        out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(*x_spec))
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


def _layer_order(model, variables, x, comp: Composite) -> list[str]:
    """Layer paths in forward order (shapes only; once per model, composite and shapes)."""
    x_spec = (tuple(x.shape), np.dtype(x.dtype).name)
    return list(_cached_layer_order(model, shape_key(variables), x_spec, comp))


@cached("layer_order", maxsize=32)
def _cached_layer_order(model, key, x_spec, comp: Composite) -> tuple[str, ...]:
    shapes: dict = {}

    def f(variables, x):
        with comp.intercept(record=shapes, model_input=x):
            return model.apply(variables, x)

    jax.eval_shape(f, shape_tree(key), jax.ShapeDtypeStruct(*x_spec))
    return tuple(shapes)


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


def _raise_nonfinite_relevance(job: _Job, bad: np.ndarray):
    """Slow path: some target's relevance is not finite although the forward was. Rerun the
    first such target densely with the per-layer relevance and name the first layer, going
    back from the outputs, whose output relevance holds NaN/Inf."""
    from crp_jax.relevance.core import relevance_vjp

    model, variables, xs, comp = job.model, job.variables, job.xs, job.comp
    t = int(bad[0])
    target = job.targets[t]
    xb = jnp.asarray(xs[target.image : target.image + 1])
    A, K, R = output_dims(model, variables, xb)
    _, anchors, cls_coef, loc_coef = encode_targets(
        [dataclasses.replace(target, image=0)], 1, A, K, comp.contrast, job.regressors
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


def _raise_not_finite(job: _Job, images) -> None:
    """Slow path, after a batch's cheap ``isfinite`` check failed: name the first image and
    layer whose output is not finite (the plain forward, without rules: rules do not
    change it)."""
    from crp_jax.numerics import check_finite_forward

    for b in images:
        check_finite_forward(job.model, job.variables, jnp.asarray(job.xs[b : b + 1]), where=f"image {b}")
    raise NumericsError(
        f"images {list(images)}: the model's outputs are not finite (every layer output was finite on a rerun)"
    )


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
