"""The rules of the cone walk (:mod:`crp_jax.relevance.cones`): per primitive, how the
demand on an equation's outputs (one interval per axis, per anchor row) becomes the demand on
its inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np
from jax.extend import core as jex_core

from crp_jax.relevance.jaxprs import call_body

_BIG = 1 << 40  # the lo of an empty interval (hi is -_BIG), so min/max give unions

# ---- demands: per anchor row, an interval per axis ------------------------------------


@dataclass
class Demand:
    """``lo``/``hi`` int64 ``[N, ndim]``; inactive rows hold ``(_BIG, -_BIG)`` on every axis.
    ``active [N]`` is kept separately so that rank-0 values can be demanded too."""

    active: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @staticmethod
    def empty(n: int, ndim: int) -> Demand:
        return Demand(np.zeros(n, bool), np.full((n, ndim), _BIG, np.int64), np.full((n, ndim), -_BIG, np.int64))

    def normalized(self) -> Demand:
        act = self.active & np.all(self.hi > self.lo, axis=1)
        lo = np.where(act[:, None], self.lo, _BIG)
        hi = np.where(act[:, None], self.hi, -_BIG)
        return Demand(act, lo, hi)

    def clipped(self, shape, axes=None) -> Demand:
        lo, hi = self.lo.copy(), self.hi.copy()
        for ax in range(len(shape)) if axes is None else axes:
            lo[:, ax] = np.maximum(lo[:, ax], 0)
            hi[:, ax] = np.minimum(hi[:, ax], shape[ax])
        return Demand(self.active, lo, hi).normalized()

    def union(self, other: Demand | None) -> Demand:
        if other is None:
            return self
        return Demand(self.active | other.active, np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def whole(self, shape) -> Demand:
        """Every element of a value of ``shape``, for the active rows."""
        n = len(self.active)
        return Demand(
            self.active.copy(), np.zeros((n, len(shape)), np.int64), np.tile(np.array(shape, np.int64), (n, 1))
        ).normalized()


def _ceil_div(a, b):
    return -((-a) // b)


def _window_back(lo, hi, n, k, s, p, rd, ld, clip):
    """One axis of a windowed op: output cells ``[lo, hi)`` (int64 ``[N]``) -> bounding box
    ``[lo', hi')`` of the input elements they read. Output ``o``, tap ``j`` reads the
    (base-dilated, padded) position ``u = o * s + j * rd - p``: an input element iff ``u`` is
    a multiple of ``ld`` (and, clipped, ``0 <= u / ld < n``). Per tap, the first and last
    ``o`` that read an element lie within ``ld`` steps of the ends (``u mod ld`` has period
    at most ``ld`` in ``o``), so a few vector operations give the exact min and max."""
    best_lo = np.full(lo.shape, _BIG, np.int64)
    best_hi = np.full(lo.shape, -_BIG, np.int64)
    for j in range(k):
        off = j * rd - p
        first = np.maximum(lo, _ceil_div(-off, s)) if clip else lo
        last = np.minimum(hi - 1, ((n - 1) * ld - off) // s) if clip else hi - 1
        for t in range(ld):
            o = first + t
            u = o * s + off
            ok = (o < hi) & (u % ld == 0)
            if clip:
                ok &= u // ld < n
            best_lo = np.where(ok, np.minimum(best_lo, u // ld), best_lo)
            o = last - t
            u = o * s + off
            ok = (o >= lo) & (u % ld == 0)
            if clip:
                ok &= u >= 0
            best_hi = np.where(ok, np.maximum(best_hi, u // ld + 1), best_hi)
    return best_lo, best_hi


def _flat_bbox(a: int, b: int, shape: Sequence[int]) -> list[tuple[int, int]]:
    """Exact bounding box (per axis ``[lo, hi)``) of the row-major flat range ``[a, b)``."""
    if not shape:
        return []
    inner = math.prod(shape[1:])
    qa, ra = divmod(a, inner)
    qb, rb = divmod(b - 1, inner)
    if qa == qb:
        return [(qa, qa + 1)] + _flat_bbox(ra, rb + 1, shape[1:])
    if qb - qa >= 2:
        rest = [(0, n) for n in shape[1:]]
    else:  # the tail of block qa and the head of block qb
        t, h = _flat_bbox(ra, inner, shape[1:]), _flat_bbox(0, rb + 1, shape[1:])
        rest = [(min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(t, h)]
    return [(qa, qb + 1)] + rest


_MAX_RUNS = 1 << 14


def _box_bbox_after_reshape(lo, hi, out_shape, in_shape):
    """Bounding box in ``in_shape`` of the box ``[lo, hi)`` of ``out_shape`` (same elements,
    row-major), via the box's contiguous flat runs; ``None`` if there are too many runs."""
    nd = len(out_shape)
    t = nd  # axes t.. are whole
    while t > 0 and lo[t - 1] == 0 and hi[t - 1] == out_shape[t - 1]:
        t -= 1
    if t == 0:
        return [(0, n) for n in in_shape]
    run = (hi[t - 1] - lo[t - 1]) * math.prod(out_shape[t:])
    lead = [range(lo[i], hi[i]) for i in range(t - 1)]
    if math.prod(len(r) for r in lead) > _MAX_RUNS:
        return None
    strides = [math.prod(out_shape[i + 1 :]) for i in range(nd)]
    box = None
    for idx in np.ndindex(*[len(r) for r in lead]) if lead else [()]:
        start = sum((lead[i][c]) * strides[i] for i, c in enumerate(idx)) + lo[t - 1] * strides[t - 1]
        bb = _flat_bbox(int(start), int(start + run), in_shape)
        box = bb if box is None else [(min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(box, bb)]
    return box


# ---- the rules: output demands -> input demands ----------------------------------------

_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp complex conj
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
    floor ge gt igamma igammac imag integer_pow is_finite le lgamma log log1p logistic lt max
    min mul ne neg nextafter not or population_count pow real reduce_precision rem round rsqrt
    select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square
    sub tan tanh xor""".split()
)
_REDUCE = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_CALLS = frozenset(
    "jit pjit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr remat checkpoint".split()
)


def sub_jaxpr(eqn):
    """The called jaxpr of a call primitive (open ``Jaxpr``), else None."""
    body = call_body(eqn) if eqn.primitive.name in _CALLS else None
    return None if body is None else body[0]


def eqn_label(eqn) -> str:
    name = eqn.params.get("name")
    if isinstance(name, str) and name:
        return name
    for key in ("call_jaxpr", "fun_jaxpr", "jaxpr"):
        info = getattr(getattr(eqn.params.get(key), "jaxpr", None), "debug_info", None)
        if getattr(info, "func_name", None):
            return info.func_name.split(" ")[0]
    return eqn.primitive.name


def has_names(jaxpr) -> bool:
    """Whether any equation of ``jaxpr`` (or of a jaxpr it calls) has a name stack of its own:
    a call that wraps modules (``nn.jit``), whose values are then keyed one by one."""
    for e in jaxpr.eqns:
        sub = sub_jaxpr(e)
        if str(e.source_info.name_stack) or (sub is not None and has_names(sub)):
            return True
    return False


def shape_spec(a) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(
        tuple(np.shape(a)) if not hasattr(a, "shape") else tuple(a.shape),
        a.dtype if hasattr(a, "dtype") else np.result_type(a),
    )


def var_shape(v) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def is_var(v) -> bool:
    return isinstance(v, jex_core.Var)


class Record:
    """What a backward walk collects: demand per keyed site, plus the global reductions
    and conservative primitives met, each with the rows (anchors) that met them."""

    def __init__(self, n: int):
        self.n = n
        self.sites: dict[tuple, Demand] = {}
        self.global_ops: dict[str, np.ndarray] = {}
        self.conservative: dict[str, np.ndarray] = {}

    def note(self, table: dict, label: str, rows: np.ndarray) -> None:
        table[label] = table.get(label, np.zeros(self.n, bool)) | rows


def demand_rule(eqn, outs: list[Demand | None], in_dep: list[bool], scope: str, clip: bool, rec: Record):
    """Input demands of ``eqn`` given its outputs' demands (None where nothing is demanded)."""
    prim = eqn.primitive.name
    params = eqn.params
    n = rec.n
    out_shapes = [var_shape(o) for o in eqn.outvars]
    in_shapes = [var_shape(v) for v in eqn.invars]
    # rows for which any output is demanded (for rules whose inputs are needed whole)
    any_out = np.zeros(n, bool)
    for d in outs:
        if d is not None:
            any_out |= d.active
    act = Demand(any_out, np.zeros((n, 0), np.int64), np.zeros((n, 0), np.int64))

    def whole_all(label=None):
        if label is not None:
            rec.note(rec.conservative, label, any_out)
        return [act.whole(s) for s in in_shapes]

    if prim == "optimization_barrier":  # identity, one output per operand
        return list(outs)

    if prim in _ELEMENTWISE:
        d = outs[0]
        res = []
        for s in in_shapes:
            if s == out_shapes[0]:
                res.append(d)
            elif len(s) == 0:
                res.append(act.whole(()))
            elif len(s) == len(out_shapes[0]):  # implicit size-1 broadcast
                lo = np.where(np.array(s) == 1, 0, d.lo)
                hi = np.where(np.array(s) == 1, 1, d.hi)
                res.append(Demand(d.active, lo, hi).normalized())
            else:
                return whole_all(prim)
        return res

    if prim == "conv_general_dilated":
        return _conv_rule(eqn, outs[0], in_dep, in_shapes, out_shapes[0], clip, act, rec)

    if prim.startswith("reduce_window"):
        k = len(eqn.outvars)
        res = []
        for i in range(k):
            d = outs[i]
            if d is None:
                res.append(None)
                continue
            lo, hi = d.lo.copy(), d.hi.copy()
            for ax in range(len(in_shapes[i])):
                lo[:, ax], hi[:, ax] = _window_back(
                    d.lo[:, ax],
                    d.hi[:, ax],
                    in_shapes[i][ax],
                    params["window_dimensions"][ax],
                    params["window_strides"][ax],
                    params["padding"][ax][0],
                    params["window_dilation"][ax],
                    params["base_dilation"][ax],
                    clip,
                )
            res.append(Demand(d.active, lo, hi).normalized())
        return res + [act.whole(s) for s in in_shapes[k:]]  # init values (scalars)

    if prim in _REDUCE:
        (d,) = outs
        axes = tuple(params["axes"])
        s = in_shapes[0]
        kept = [ax for ax in range(len(s)) if ax not in axes]
        lo = np.zeros((n, len(s)), np.int64)
        hi = np.tile(np.array(s, np.int64), (n, 1))
        lo[:, kept], hi[:, kept] = d.lo, d.hi
        if len(s) == 4 and any(ax != 3 and s[ax] > 1 for ax in axes):
            rec.note(rec.global_ops, f"{scope}:{prim}{axes}", d.active)
        return [Demand(d.active, lo, hi).normalized()]

    if prim in _CUMULATIVE:
        (d,) = outs
        ax, s = params["axis"], in_shapes[0]
        lo, hi = d.lo.copy(), d.hi.copy()
        if params.get("reverse"):
            hi[:, ax] = s[ax]
        else:
            lo[:, ax] = 0
        return [Demand(d.active, lo, hi).clipped(s, [ax])]

    if prim == "broadcast_in_dim":
        (d,) = outs
        s = in_shapes[0]
        dims = params["broadcast_dimensions"]
        lo = d.lo[:, list(dims)] if dims else np.zeros((n, 0), np.int64)
        hi = d.hi[:, list(dims)] if dims else np.zeros((n, 0), np.int64)
        for i, od in enumerate(dims):
            if s[i] == 1 and out_shapes[0][od] != 1:
                lo[:, i], hi[:, i] = 0, 1
        return [Demand(d.active, lo, hi).normalized()] + [None] * (len(in_shapes) - 1)

    if prim == "reshape":
        if params.get("dimensions") is not None or len(in_shapes) != 1:
            return whole_all(prim)
        return [_reshape_rule(outs[0].clipped(out_shapes[0]), in_shapes[0], out_shapes[0], rec)]

    if prim == "squeeze":
        (d,) = outs
        s = in_shapes[0]
        dims = {ax % len(s) for ax in params["dimensions"]}
        kept = [ax for ax in range(len(s)) if ax not in dims]
        lo, hi = np.zeros((n, len(s)), np.int64), np.ones((n, len(s)), np.int64)
        lo[:, kept], hi[:, kept] = d.lo, d.hi
        return [Demand(d.active, lo, hi).normalized()]

    if prim == "transpose":
        (d,) = outs
        perm = params["permutation"]
        lo, hi = np.empty_like(d.lo), np.empty_like(d.hi)
        for i, p in enumerate(perm):
            lo[:, p], hi[:, p] = d.lo[:, i], d.hi[:, i]
        return [Demand(d.active, lo, hi)]

    if prim == "concatenate":
        (d,) = outs
        ax = params["dimension"]
        res, off = [], 0
        for s in in_shapes:
            lo, hi = d.lo.copy(), d.hi.copy()
            lo[:, ax] = np.maximum(d.lo[:, ax] - off, 0)
            hi[:, ax] = np.minimum(d.hi[:, ax] - off, s[ax])
            res.append(Demand(d.active, lo, hi).normalized())
            off += s[ax]
        return res

    if prim == "split":
        ax = params["axis"]
        s = in_shapes[0]
        total, off = Demand.empty(n, len(s)), 0
        for d, os_ in zip(outs, out_shapes):
            if d is not None:
                d = d.clipped(os_, [ax])
                lo, hi = d.lo.copy(), d.hi.copy()
                lo[:, ax] += off
                hi[:, ax] += off
                total = total.union(Demand(d.active, lo, hi).normalized())
            off += os_[ax]
        return [total]

    if prim == "slice":
        (d,) = outs
        s, os_ = in_shapes[0], out_shapes[0]
        starts = params["start_indices"]
        steps = params.get("strides") or (1,) * len(s)
        moved = [ax for ax in range(len(s)) if starts[ax] != 0 or steps[ax] != 1 or os_[ax] != s[ax]]
        if clip:
            # Unclipped, a demand beyond the slice maps beyond it: a conv written as pad +
            # strided slices per tap (crp_jax/grouped_conv.py) then counts its padding as
            # cells as lax's conv does.
            d = d.clipped(os_, moved)
        lo, hi = d.lo.copy(), d.hi.copy()
        for ax in moved:
            lo[:, ax] = starts[ax] + d.lo[:, ax] * steps[ax]
            hi[:, ax] = starts[ax] + (d.hi[:, ax] - 1) * steps[ax] + 1
        return [Demand(d.active, lo, hi).normalized()]

    if prim == "rev":
        (d,) = outs
        s = in_shapes[0]
        dims = params["dimensions"]
        d = d.clipped(s, dims)
        lo, hi = d.lo.copy(), d.hi.copy()
        for ax in dims:
            lo[:, ax], hi[:, ax] = s[ax] - d.hi[:, ax], s[ax] - d.lo[:, ax]
        return [Demand(d.active, lo, hi).normalized()]

    if prim == "pad":
        (d,) = outs
        s = in_shapes[0]
        lo, hi = d.lo.copy(), d.hi.copy()
        for ax, (pl, _ph, interior) in enumerate(params["padding_config"]):
            st = interior + 1
            lo[:, ax] = _ceil_div(d.lo[:, ax] - pl, st)
            hi[:, ax] = (d.hi[:, ax] - 1 - pl) // st + 1
        return [Demand(d.active, lo, hi).normalized(), act.whole(in_shapes[1])]

    if prim == "dot_general":
        (d,) = outs
        (lc, rc), (lb, rb) = params["dimension_numbers"]
        res = []
        free_off = len(lb)
        for side, (contract, batch) in enumerate(((lc, lb), (rc, rb))):
            s = in_shapes[side]
            free = [ax for ax in range(len(s)) if ax not in contract and ax not in batch]
            lo = np.zeros((n, len(s)), np.int64)
            hi = np.tile(np.array(s, np.int64), (n, 1))
            for i, ax in enumerate(batch):
                lo[:, ax], hi[:, ax] = d.lo[:, i], d.hi[:, i]
            for i, ax in enumerate(free):
                lo[:, ax], hi[:, ax] = d.lo[:, free_off + i], d.hi[:, free_off + i]
            free_off += len(free)
            if len(s) == 4 and any(ax != 3 and s[ax] > 1 for ax in contract):
                rec.note(rec.global_ops, f"{scope}:dot_general{tuple(contract)}", d.active)
            res.append(Demand(d.active, lo, hi).normalized())
        return res

    return whole_all(prim)


def _conv_rule(eqn, d, in_dep, in_shapes, out_shape, clip, act, rec):
    params = eqn.params
    dn = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    ls, rs = in_shapes
    n = rec.n
    lo = np.zeros((n, len(ls)), np.int64)
    hi = np.tile(np.array(ls, np.int64), (n, 1))
    if params.get("batch_group_count", 1) == 1:
        lo[:, lhs_spec[0]], hi[:, lhs_spec[0]] = d.lo[:, out_spec[0]], d.hi[:, out_spec[0]]
        g = params["feature_group_count"]
        og, ig = out_shape[out_spec[1]] // g, ls[lhs_spec[1]] // g
        lo[:, lhs_spec[1]] = (d.lo[:, out_spec[1]] // og) * ig
        hi[:, lhs_spec[1]] = ((d.hi[:, out_spec[1]] - 1) // og + 1) * ig
    else:
        rec.note(rec.conservative, "conv_general_dilated(batch_group_count)", d.active)
    for i in range(len(ls) - 2):
        la, oa = lhs_spec[2 + i], out_spec[2 + i]
        lo[:, la], hi[:, la] = _window_back(
            d.lo[:, oa],
            d.hi[:, oa],
            ls[la],
            rs[rhs_spec[2 + i]],
            params["window_strides"][i],
            params["padding"][i][0],
            params["rhs_dilation"][i],
            params["lhs_dilation"][i],
            clip,
        )
    res = [Demand(d.active, lo, hi).normalized(), None]
    if in_dep[1]:  # a kernel computed from the input: needed whole
        rec.note(rec.conservative, "conv_general_dilated(kernel from input)", d.active)
        res[1] = act.whole(rs)
    return res


def _reshape_rule(d: Demand, in_shape, out_shape, rec: Record) -> Demand:
    n = rec.n
    sq_in = [(ax, s) for ax, s in enumerate(in_shape) if s != 1]
    sq_out = [(ax, s) for ax, s in enumerate(out_shape) if s != 1]
    if [s for _, s in sq_in] == [s for _, s in sq_out]:  # only size-1 axes added or removed
        lo, hi = np.zeros((n, len(in_shape)), np.int64), np.ones((n, len(in_shape)), np.int64)
        for (ia, _), (oa, _) in zip(sq_in, sq_out):
            lo[:, ia], hi[:, ia] = d.lo[:, oa], d.hi[:, oa]
        return Demand(d.active, lo, hi).normalized()
    res = Demand.empty(n, len(in_shape))
    rows = np.nonzero(d.active)[0]
    if len(rows) == 0:
        return res
    boxes = np.concatenate([d.lo[rows], d.hi[rows]], axis=1)
    uniq, inverse = np.unique(boxes, axis=0, return_inverse=True)
    for u, box in enumerate(uniq):
        bb = _box_bbox_after_reshape(box[: len(out_shape)], box[len(out_shape) :], out_shape, in_shape)
        sel = rows[inverse.reshape(-1) == u]
        if bb is None:
            bb = [(0, s) for s in in_shape]
            mask = np.zeros(n, bool)
            mask[sel] = True
            rec.note(rec.conservative, "reshape(too many runs)", mask)
        res.active[sel] = True
        res.lo[sel] = [b[0] for b in bb]
        res.hi[sel] = [b[1] for b in bb]
    return res.normalized()
