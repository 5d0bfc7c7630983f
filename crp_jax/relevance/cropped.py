"""Receptive-field-cropped relevance: each target's backward pass runs only inside its cone
(docs/design.md §6).

A target's relevance is exactly zero outside the receptive-field cone of its anchor, so
propagating it over whole feature maps wastes most of the work for anchors of the early,
fine sources. This module plans and compiles the *same* backward computation as the dense
path, the jaxpr of the VJP that :func:`crp_jax.relevance.core.linearize` returns, run by the
windowed interpreter (:mod:`crp_jax.relevance.windowed`): it splits the anchors into groups
(one per head output, read from the ``split``/``slice`` the backward applies to the
cotangent's anchor axis; nothing here knows SSD), measures each group's window, decides
which groups ``explain`` crops (:attr:`CropGroup.cropped`), and owns the compiled cropped
backward and the trimmed forward (:mod:`crp_jax.compiled`). Cropped == dense is checked in
``tests/test_cropped.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crp_jax.compiled import cached, shape_key, shape_tree
from crp_jax.relevance import stored_plans
from crp_jax.relevance.windowed import AnchorValue, Interpreter, MissingLeaf, Plan, Unsupported, WindowValue

# ---- building the cropped backward -------------------------------------------------------


def residual_spec(vjp_fn) -> tuple:
    """``(treedef, ((shape, dtype name), ...))`` of a VJP's residual leaves: hashable, so
    that compiled functions can be cached on it."""
    return shape_key(vjp_fn)


def backward_jaxpr(
    spec: tuple, num_images: int, num_boxes: int, num_classes: int, dtype=jnp.float32, num_regressors: int = 4
):
    """The VJP of a detector as a closed jaxpr whose inputs are its residual leaves (``spec``
    from :func:`residual_spec`) followed by the cotangents ``[N, A, K]`` and ``[N, A, R]``
    (R = ``num_regressors``: 4 for an SSD, 16 for BlazeFace). Traced once per process and
    arguments (held by :mod:`crp_jax.compiled` as ``"backward_jaxpr"``): the crop plan of every
    group and every compiled cropped backward read the same jaxpr, which is built from shapes
    only (it closes over no traced value)."""
    return _backward_jaxpr(
        spec, int(num_images), int(num_boxes), int(num_classes), np.dtype(dtype), int(num_regressors)
    )


@cached("backward_jaxpr", maxsize=64)
def _backward_jaxpr(spec: tuple, num_images: int, num_boxes: int, num_classes: int, dtype, num_regressors: int):
    treedef, leaf_specs = spec
    specs = [jax.ShapeDtypeStruct(s, d) for s, d in leaf_specs]
    cts = (
        jax.ShapeDtypeStruct((num_images, num_boxes, num_classes), dtype),
        jax.ShapeDtypeStruct((num_images, num_boxes, num_regressors), dtype),
    )
    return jax.make_jaxpr(lambda lv, ct: jax.tree.unflatten(treedef, lv)(ct))(specs, cts)


def anchor_groups(closed) -> tuple[tuple[int, int], ...]:
    """Anchor ranges ``[a0, a1)`` that the backward splits the cotangents into (one per head
    output, in order): read from the ``split``/``slice`` ops on the anchor axis of the two
    cotangent inputs. Raises :class:`Unsupported` when they disagree or there are none."""
    jaxpr = closed.jaxpr
    found = []
    for ct in jaxpr.invars[-2:]:
        ranges = set()
        for eqn in jaxpr.eqns:
            if ct not in eqn.invars:
                continue
            if eqn.primitive.name == "split" and eqn.params["axis"] == 1:
                edges = np.cumsum([0, *eqn.params["sizes"]])
                ranges.update(zip(edges[:-1].tolist(), edges[1:].tolist()))
            elif eqn.primitive.name == "slice" and all(
                s == 0 for k, s in enumerate(eqn.params["start_indices"]) if k != 1
            ):
                ranges.add((eqn.params["start_indices"][1], eqn.params["limit_indices"][1]))
            elif eqn.primitive.name == "reshape":
                ranges.add((0, ct.aval.shape[1]))
        found.append(tuple(sorted(ranges)))
    if not found[0] or found[0] != found[1]:
        raise Unsupported(f"the backward does not split both outputs' anchors alike: {found}")
    return found[0]


def cropped_slot(leaves, x, anchor, cls_coef, loc_coef, *, spec, num_boxes: int, group, times_input: bool, plan: Plan):
    """One target's relevance on its window.

    Args:
      leaves: the residual leaves of the dense forward (``linearize``'s VJP, for ``N``
        images), in ``spec``'s order; leaves the group does not read may be ``None``.
      x: the model input ``[N, H, W, C]`` (for gradient x input).
      anchor: int32 scalar, the target's anchor, inside ``group``.
      cls_coef, loc_coef: ``[N, K]`` and ``[N, R]`` initial relevance at that anchor.
      spec: :func:`residual_spec` of the VJP.
      num_boxes: A, the detector's number of anchors.
      group: the anchor range ``[a0, a1)`` of one head output (:func:`anchor_groups`).
      plan: filled while tracing (window size, ops run on whole maps, leaves read).

    Returns:
      ``(window [N, h, w, C], offset [2])``: relevance on the window whose top-left corner is
      ``offset`` (row, column) at the input; zero outside it. ``(h, w)`` is static.
    """
    N, K = cls_coef.shape
    closed = backward_jaxpr(spec, N, num_boxes, K, cls_coef.dtype, loc_coef.shape[-1])
    A = num_boxes
    leaves = [MissingLeaf() if v is None else v for v in leaves]
    interp = Interpreter(tuple(group), plan, leaves)
    cts = [AnchorValue(0, A, anchor, cls_coef), AnchorValue(0, A, anchor, loc_coef)]
    (rx,) = interp.run(closed.jaxpr, closed.consts, list(leaves) + cts)
    if isinstance(rx, WindowValue) and set(rx.axes) <= {1, 2}:
        window = rx.a
        if times_input:
            window = window * interp.on(x, rx.axes)
        offset = [interp.at(rx.axes[k].table, rx.axes[k].tag) if k in rx.axes else jnp.int32(0) for k in (1, 2)]
    else:
        window = interp.dense(rx)
        if times_input:
            window = window * x
        offset = [jnp.int32(0), jnp.int32(0)]
        if isinstance(rx, WindowValue):
            plan.densified.append("output")
    plan.input_window = tuple(window.shape[1:3])
    return window, jnp.stack(offset)


# crop="auto" crops a group when its input window covers at most CROP_MAX_AREA of the image, or
# at most CROP_MAX_AREA_MANY when one call has at least CROP_MANY_TARGETS of its targets.
# Measured (benchmarks/RESULTS.md "Cropped propagation", "Which groups crop=auto should crop"):
# SSD300's 108 px window (13% of the image) makes the backward 14x cheaper; whole-image windows
# gain nothing and, chunked per group, lose to the shared dense chunks (0.93x). Between the two,
# the shipped 128 px model's first source (71%): cropped, crp over the batched floor fell from
# 1.50 to 1.24 (48 images x 1 target) and 1.37 to 1.02 (16 x 3), but each method then traces one
# more program per process (+0.9 s on a one-scene, three-target CLI run of five methods), which
# only many targets pay back.
CROP_MAX_AREA = 0.5
CROP_MAX_AREA_MANY = 0.75
CROP_MANY_TARGETS = 16


def auto_crops(window: Sequence[int], image: Sequence[int], targets: int = 0) -> bool:
    """crop="auto"'s one test: whether a group whose input window is ``(h, w)`` (clipped to
    the ``image`` ``(H, W)``) is cropped in a call with ``targets`` of its targets."""
    h, w = min(int(window[0]), int(image[0])), min(int(window[1]), int(image[1]))
    share = h * w / (int(image[0]) * int(image[1]))
    return share <= CROP_MAX_AREA or (share <= CROP_MAX_AREA_MANY and targets >= CROP_MANY_TARGETS)


@dataclass(frozen=True)
class CropGroup:
    """One head output's anchors and how :func:`crp_jax.explain` propagates them.

    Attributes:
      anchors: the anchor range ``[a0, a1)``.
      grid: its anchor grid ``(rows, columns)``.
      window: ``(height, width)`` of its relevance window at the input.
      image: ``(height, width)`` of the input.
      densified: ops that had to run on whole maps.
      leaves: indices of the dense forward's residual leaves its cropped backward reads.
      spec: :func:`residual_spec` of that forward.
    """

    anchors: tuple[int, int]
    grid: tuple[int, int] | None
    window: tuple[int, int]
    image: tuple[int, int]
    densified: tuple[str, ...]
    leaves: tuple[int, ...] = ()
    spec: tuple = field(default=(), repr=False)

    @property
    def windowed(self) -> bool:
        """The interpreter windowed every op (the cropped backward is faster than dense)."""
        return not self.densified

    @property
    def cropped(self) -> bool:
        """Whether ``explain`` crops this group by default for a few targets: windowed, and
        the window covers at most :data:`CROP_MAX_AREA` of the image."""
        return self.crops(0)

    def crops(self, targets: int) -> bool:
        """Whether crop="auto" crops this group in a call with ``targets`` of its targets
        (:func:`auto_crops`)."""
        return self.windowed and auto_crops(self.window, self.image, targets)


def crop_groups(
    model, variables, x_shape: Sequence[int], composite, num_boxes: int, num_classes: int, num_regressors: int = 4
):
    """The :class:`CropGroup` of every head output of ``model`` (in anchor order), from
    shapes only (nothing is compiled or run); cached per model, composite and shapes, and
    with JAX's compilation cache on, on disk beside it (:mod:`crp_jax.relevance.stored_plans`:
    a later process traces only the forward, whose trace the dense path's jit then reuses).

    Raises :class:`Unsupported` when the backward does not split its anchors per head."""
    key = shape_key(variables)
    return _crop_groups(
        model, composite, tuple(x_shape[1:]), int(num_boxes), int(num_classes), key, int(num_regressors)
    )


@cached("crop_plans", maxsize=32)
def _crop_groups(model, comp, image_shape, A, K, key, R=4):
    from crp_jax.relevance.dense import dense_forward

    variables = shape_tree(key)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    # the shapes of the dense path's own jitted forward: jit keeps this trace, so the forward
    # that explain then runs on one image is not traced a second time
    forward = dense_forward(model, comp)
    vjp = jax.eval_shape(forward, variables, x)[1]
    spec = residual_spec(vjp)
    closed = backward_jaxpr(spec, 1, A, K, jnp.float32, R)
    stored = stored_plans.stored_or_computed(
        closed,
        lambda: [_plan_group(group, spec, vjp, x, A, K, R, comp.times_input) for group in anchor_groups(closed)],
        image=list(image_shape),
        A=A,
        K=K,
        R=R,
        times_input=bool(comp.times_input),
    )
    return tuple(CropGroup(image=tuple(image_shape[:2]), spec=spec, **g) for g in stored)


def _plan_group(group, spec, vjp, x, A: int, K: int, R: int, times_input: bool) -> dict:
    """One head output's plan (the fields of :class:`CropGroup` but ``image`` and ``spec``):
    the cropped backward of one target traced on shapes by the windowed interpreter."""
    plan = Plan()
    slot = functools.partial(cropped_slot, spec=spec, num_boxes=A, group=group, times_input=times_input, plan=plan)
    coef = jax.ShapeDtypeStruct((1, K), jnp.float32)
    leaves = jax.tree.leaves(vjp)
    jax.eval_shape(
        slot, leaves, x, jax.ShapeDtypeStruct((), jnp.int32), coef, jax.ShapeDtypeStruct((1, R), jnp.float32)
    )
    ints = lambda t: None if t is None else tuple(int(i) for i in t)  # noqa: E731
    return {
        "anchors": ints(group),
        "grid": ints(plan.grid),
        "window": ints(plan.input_window),
        "densified": tuple(str(d) for d in plan.densified),
        "leaves": tuple(sorted(int(i) for i in plan.leaves)),
    }


def batch_rows_readable(model, variables, x_shape: Sequence[int], composite) -> bool:
    """Whether the cropped backward may read one image's row of a batch's residuals: every
    residual of the forward that depends on the batch has it on axis 0 (shapes only, traced
    once per model, composite and shapes; ``explain`` asks only when it batches images that
    have cropped targets)."""
    return _batch_rows_readable(model, composite.forward_part(), tuple(x_shape[1:]), shape_key(variables))


@cached("batch_rows_readable", maxsize=32)
def _batch_rows_readable(model, comp, image_shape, key) -> bool:
    from crp_jax.relevance.core import linearize

    variables = shape_tree(key)

    def spec(n):
        x = jax.ShapeDtypeStruct((n, *image_shape), jnp.float32)
        return residual_spec(jax.eval_shape(lambda v, x: linearize(model.apply, v, x, comp)[1], variables, x))[1]

    one, two = spec(1), spec(2)
    return len(one) == len(two) and all(
        s1 == s2 or (s1[0] == 1 and s2[0] == 2 and s1[1:] == s2[1:]) for (s1, _), (s2, _) in zip(one, two)
    )


def group_leaves(group: CropGroup, vjp_fn) -> tuple:
    """The residual leaves of ``vjp_fn`` that ``group``'s cropped backward reads."""
    leaves = jax.tree.leaves(vjp_fn)
    return tuple(leaves[i] for i in group.leaves)


def compiled_cropped(model, comp, chunk: int, num_boxes: int, group: CropGroup, dense_out: bool = False):
    """The jitted cropped backward of one anchor group (public, for benchmarks):
    ``backward(leaves, x [N, H, W, C], anchors [chunk], cls_coef [chunk, 1, K],
    loc_coef [chunk, 1, R], row=0) -> (windows [chunk, h, w, C], offsets [chunk, 2])`` for
    targets of image ``row`` of the forward's batch, or the dense ``[1, chunk, H, W, C]``
    with ``dense_out=True`` (windows placed on the device, laid out as the dense backward's
    result). ``leaves`` are :func:`group_leaves` of the forward's VJP (or of
    :func:`trimmed_forward`), for one image or a batch of ``N``: a leaf whose shape is not the
    one-image plan's is that batch's, and the backward reads its row ``row``."""
    return _compiled_cropped(model, comp, chunk, num_boxes, group, dense_out)


@cached("cropped_backward", maxsize=64)
def _compiled_cropped(model, comp, chunk, num_boxes, group, dense_out):
    del model, chunk  # part of the key only: one jitted function per chunk size, as the dense path
    n = len(group.spec[1])

    def backward(leaves, x, anchors, cls_coef, loc_coef, row=0):
        full = [None] * n
        for i, v in zip(group.leaves, leaves):
            if tuple(v.shape) != group.spec[1][i][0]:  # a batch's leaf (the plan checked: axis 0)
                v = lax.dynamic_slice_in_dim(v, row, 1, axis=0)
            full[i] = v
        if x.shape[0] != 1:
            x = lax.dynamic_slice_in_dim(x, row, 1, axis=0)
        slot = functools.partial(
            cropped_slot,
            spec=group.spec,
            num_boxes=num_boxes,
            group=group.anchors,
            times_input=comp.times_input,
            plan=Plan(),
        )
        wins, offs = jax.vmap(slot, in_axes=(None, None, 0, 0, 0))(full, x, anchors, cls_coef, loc_coef)
        wins = wins[:, 0]  # one image
        if not dense_out:
            return wins, offs

        def paste(w, o):
            return lax.dynamic_update_slice(jnp.zeros(x.shape[1:], w.dtype), w, (o[0], o[1], 0))

        return jax.vmap(paste)(wins, offs)[None]

    return jax.jit(backward)


def trimmed_forward(model, comp, groups: Sequence[CropGroup]):
    """The jitted forward of an image whose targets all lie in ``groups``:
    ``forward(variables, x [1, H, W, C]) -> (ok, leaves)``, where ``leaves`` are the union
    of the groups' residual leaves (in index order) and ``ok`` says whether the groups'
    outputs are finite. XLA drops every computation nothing returned needs: for SSD300's
    first source, the layers after conv4_3 and the other heads (their relevance is zero)."""
    return _trimmed_forward(model, comp.forward_part(), tuple(groups))


@cached("trimmed_forward", maxsize=16)
def _trimmed_forward(model, comp, groups):
    from crp_jax.relevance.core import linearize

    keep = sorted(set().union(*(g.leaves for g in groups)))

    def forward(variables, x):
        (cls, loc), vjp_fn = linearize(model.apply, variables, x, comp)
        ok = jnp.bool_(True)
        for g in groups:
            a0, a1 = g.anchors
            ok = ok & jnp.isfinite(cls[:, a0:a1]).all() & jnp.isfinite(loc[:, a0:a1]).all()
        leaves = jax.tree.leaves(vjp_fn)
        return ok, tuple(leaves[i] for i in keep)

    return jax.jit(forward), tuple(keep)
