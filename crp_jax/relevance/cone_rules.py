"""The rules of the cone walk (:mod:`crp_jax.relevance.cones`): per primitive, how the
demand on an equation's outputs (one interval per axis, per anchor row) becomes the demand on
its inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

from crp_jax.relevance import walk

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
        body = walk.call_body(e)
        if str(e.source_info.name_stack) or (body is not None and has_names(body[0])):
            return True
    return False


def shape_spec(a) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(
        tuple(np.shape(a)) if not hasattr(a, "shape") else tuple(a.shape),
        a.dtype if hasattr(a, "dtype") else np.result_type(a),
    )


def var_shape(v) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


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


def _shapes(vs) -> list[tuple[int, ...]]:
    return [var_shape(v) for v in vs]


class DemandRules(walk.Rules):
    """Per primitive, ``rule(eqn, outs, in_dep, scope) -> ins``: the demand on each operand
    (None: nothing) given the demand on each output (``outs``, one :class:`Demand` per
    output), which operands depend on the model input (``in_dep``) and the module scope
    (for the record). ``clip``: demands stay inside each value (padding reads nothing)."""

    def __init__(self, clip: bool, rec: Record):
        self.clip = clip
        self.rec = rec

    def active(self, outs) -> Demand:
        """The rows for which any output is demanded (no axes)."""
        n = self.rec.n
        rows = np.zeros(n, bool)
        for d in outs:
            if d is not None:
                rows |= d.active
        return Demand(rows, np.zeros((n, 0), np.int64), np.zeros((n, 0), np.int64))

    def fallback(self, eqn, outs, in_dep, scope):
        """No exact rule: every operand is needed whole, and the primitive is recorded."""
        act = self.active(outs)
        self.rec.note(self.rec.conservative, eqn.primitive.name, act.active)
        return [act.whole(s) for s in _shapes(eqn.invars)]

    def rule_optimization_barrier(self, eqn, outs, in_dep, scope):
        return list(outs)  # identity, one output per operand

    def elementwise(self, eqn, outs, in_dep, scope):
        d, out_shape = outs[0], var_shape(eqn.outvars[0])
        res = []
        for s in _shapes(eqn.invars):
            if s == out_shape:
                res.append(d)
            elif len(s) == 0:
                res.append(self.active(outs).whole(()))
            elif len(s) == len(out_shape):  # implicit size-1 broadcast
                lo = np.where(np.array(s) == 1, 0, d.lo)
                hi = np.where(np.array(s) == 1, 1, d.hi)
                res.append(Demand(d.active, lo, hi).normalized())
            else:
                return self.fallback(eqn, outs, in_dep, scope)
        return res

    def rule_conv_general_dilated(self, eqn, outs, in_dep, scope):
        return _conv_rule(eqn, outs[0], in_dep, self.clip, self.active(outs), self.rec)

    def _reduce_window(self, eqn, outs, in_dep, scope):
        params, in_shapes = eqn.params, _shapes(eqn.invars)
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
                    self.clip,
                )
            res.append(Demand(d.active, lo, hi).normalized())
        act = self.active(outs)
        return res + [act.whole(s) for s in in_shapes[k:]]  # init values (scalars)

    rule_reduce_window = rule_reduce_window_max = rule_reduce_window_min = rule_reduce_window_sum = _reduce_window

    def _reduce(self, eqn, outs, in_dep, scope):
        (d,) = outs
        axes = tuple(eqn.params["axes"])
        s = var_shape(eqn.invars[0])
        n = self.rec.n
        kept = [ax for ax in range(len(s)) if ax not in axes]
        lo = np.zeros((n, len(s)), np.int64)
        hi = np.tile(np.array(s, np.int64), (n, 1))
        lo[:, kept], hi[:, kept] = d.lo, d.hi
        if len(s) == 4 and any(ax != 3 and s[ax] > 1 for ax in axes):
            self.rec.note(self.rec.global_ops, f"{scope}:{eqn.primitive.name}{axes}", d.active)
        return [Demand(d.active, lo, hi).normalized()]

    rule_reduce_sum = rule_reduce_max = rule_reduce_min = rule_reduce_prod = _reduce
    rule_reduce_and = rule_reduce_or = rule_reduce_xor = rule_argmax = rule_argmin = _reduce

    def _cumulative(self, eqn, outs, in_dep, scope):
        (d,) = outs
        ax, s = eqn.params["axis"], var_shape(eqn.invars[0])
        lo, hi = d.lo.copy(), d.hi.copy()
        if eqn.params.get("reverse"):
            hi[:, ax] = s[ax]
        else:
            lo[:, ax] = 0
        return [Demand(d.active, lo, hi).clipped(s, [ax])]

    rule_cumsum = rule_cumprod = rule_cummax = rule_cummin = rule_cumlogsumexp = _cumulative

    def rule_broadcast_in_dim(self, eqn, outs, in_dep, scope):
        (d,) = outs
        n, s, out_shape = self.rec.n, var_shape(eqn.invars[0]), var_shape(eqn.outvars[0])
        dims = eqn.params["broadcast_dimensions"]
        lo = d.lo[:, list(dims)] if dims else np.zeros((n, 0), np.int64)
        hi = d.hi[:, list(dims)] if dims else np.zeros((n, 0), np.int64)
        for i, od in enumerate(dims):
            if s[i] == 1 and out_shape[od] != 1:
                lo[:, i], hi[:, i] = 0, 1
        return [Demand(d.active, lo, hi).normalized()] + [None] * (len(eqn.invars) - 1)

    def rule_reshape(self, eqn, outs, in_dep, scope):
        if eqn.params.get("dimensions") is not None or len(eqn.invars) != 1:
            return self.fallback(eqn, outs, in_dep, scope)
        out_shape = var_shape(eqn.outvars[0])
        return [_reshape_rule(outs[0].clipped(out_shape), var_shape(eqn.invars[0]), out_shape, self.rec)]

    def rule_squeeze(self, eqn, outs, in_dep, scope):
        (d,) = outs
        n, s = self.rec.n, var_shape(eqn.invars[0])
        dims = {ax % len(s) for ax in eqn.params["dimensions"]}
        kept = [ax for ax in range(len(s)) if ax not in dims]
        lo, hi = np.zeros((n, len(s)), np.int64), np.ones((n, len(s)), np.int64)
        lo[:, kept], hi[:, kept] = d.lo, d.hi
        return [Demand(d.active, lo, hi).normalized()]

    def rule_transpose(self, eqn, outs, in_dep, scope):
        (d,) = outs
        lo, hi = np.empty_like(d.lo), np.empty_like(d.hi)
        for i, p in enumerate(eqn.params["permutation"]):
            lo[:, p], hi[:, p] = d.lo[:, i], d.hi[:, i]
        return [Demand(d.active, lo, hi)]

    def rule_concatenate(self, eqn, outs, in_dep, scope):
        (d,) = outs
        ax = eqn.params["dimension"]
        res, off = [], 0
        for s in _shapes(eqn.invars):
            lo, hi = d.lo.copy(), d.hi.copy()
            lo[:, ax] = np.maximum(d.lo[:, ax] - off, 0)
            hi[:, ax] = np.minimum(d.hi[:, ax] - off, s[ax])
            res.append(Demand(d.active, lo, hi).normalized())
            off += s[ax]
        return res

    def rule_split(self, eqn, outs, in_dep, scope):
        ax = eqn.params["axis"]
        s = var_shape(eqn.invars[0])
        total, off = Demand.empty(self.rec.n, len(s)), 0
        for d, os_ in zip(outs, _shapes(eqn.outvars)):
            if d is not None:
                d = d.clipped(os_, [ax])
                lo, hi = d.lo.copy(), d.hi.copy()
                lo[:, ax] += off
                hi[:, ax] += off
                total = total.union(Demand(d.active, lo, hi).normalized())
            off += os_[ax]
        return [total]

    def rule_slice(self, eqn, outs, in_dep, scope):
        (d,) = outs
        s, os_ = var_shape(eqn.invars[0]), var_shape(eqn.outvars[0])
        starts = eqn.params["start_indices"]
        steps = eqn.params.get("strides") or (1,) * len(s)
        moved = [ax for ax in range(len(s)) if starts[ax] != 0 or steps[ax] != 1 or os_[ax] != s[ax]]
        if self.clip:
            # Unclipped, a demand beyond the slice maps beyond it: a conv written as pad +
            # strided slices per tap (crp_jax/grouped_conv.py) then counts its padding as
            # cells as lax's conv does.
            d = d.clipped(os_, moved)
        lo, hi = d.lo.copy(), d.hi.copy()
        for ax in moved:
            lo[:, ax] = starts[ax] + d.lo[:, ax] * steps[ax]
            hi[:, ax] = starts[ax] + (d.hi[:, ax] - 1) * steps[ax] + 1
        return [Demand(d.active, lo, hi).normalized()]

    def rule_rev(self, eqn, outs, in_dep, scope):
        (d,) = outs
        s = var_shape(eqn.invars[0])
        dims = eqn.params["dimensions"]
        d = d.clipped(s, dims)
        lo, hi = d.lo.copy(), d.hi.copy()
        for ax in dims:
            lo[:, ax], hi[:, ax] = s[ax] - d.hi[:, ax], s[ax] - d.lo[:, ax]
        return [Demand(d.active, lo, hi).normalized()]

    def rule_pad(self, eqn, outs, in_dep, scope):
        (d,) = outs
        lo, hi = d.lo.copy(), d.hi.copy()
        for ax, (pl, _ph, interior) in enumerate(eqn.params["padding_config"]):
            st = interior + 1
            lo[:, ax] = _ceil_div(d.lo[:, ax] - pl, st)
            hi[:, ax] = (d.hi[:, ax] - 1 - pl) // st + 1
        return [Demand(d.active, lo, hi).normalized(), self.active(outs).whole(var_shape(eqn.invars[1]))]

    def rule_dot_general(self, eqn, outs, in_dep, scope):
        (d,) = outs
        n = self.rec.n
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        res = []
        free_off = len(lb)
        for side, (contract, batch) in enumerate(((lc, lb), (rc, rb))):
            s = var_shape(eqn.invars[side])
            free = [ax for ax in range(len(s)) if ax not in contract and ax not in batch]
            lo = np.zeros((n, len(s)), np.int64)
            hi = np.tile(np.array(s, np.int64), (n, 1))
            for i, ax in enumerate(batch):
                lo[:, ax], hi[:, ax] = d.lo[:, i], d.hi[:, i]
            for i, ax in enumerate(free):
                lo[:, ax], hi[:, ax] = d.lo[:, free_off + i], d.hi[:, free_off + i]
            free_off += len(free)
            if len(s) == 4 and any(ax != 3 and s[ax] > 1 for ax in contract):
                self.rec.note(self.rec.global_ops, f"{scope}:dot_general{tuple(contract)}", d.active)
            res.append(Demand(d.active, lo, hi).normalized())
        return res


def _conv_rule(eqn, d, in_dep, clip, act, rec):
    params = eqn.params
    in_shapes, out_shape = _shapes(eqn.invars), var_shape(eqn.outvars[0])
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
    groups = walk.reshape_groups(in_shape, out_shape)
    lo, hi = np.zeros((n, len(in_shape)), np.int64), np.ones((n, len(in_shape)), np.int64)
    for (i0, i1), (j0, j1) in groups or ():
        ia = [a for a in range(i0, i1) if in_shape[a] != 1]
        oa = [a for a in range(j0, j1) if out_shape[a] != 1]
        if len(ia) > 1 or len(oa) > 1:  # axes merged or split: the flat runs below
            break
        if ia:
            lo[:, ia[0]], hi[:, ia[0]] = d.lo[:, oa[0]], d.hi[:, oa[0]]
    else:
        if groups is not None:  # only size-1 axes added or removed
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
