"""The windowed interpreter: runs a detector's backward jaxpr with each target's relevance
held on windows of the feature maps (docs/design.md §6; planning and compiled functions:
:mod:`crp_jax.relevance.cropped`).

- every value that carries the target's relevance is a **window**: an array whose spatial
  axes are a static-size slice of the full map, positioned at a dynamic offset; the offset is
  looked up per target in a table indexed by the anchor's cell row (or column), both computed
  in numpy from the ops themselves while tracing;
- values that do not depend on the target (the residuals of the shared dense forward pass:
  inputs, kernels, reciprocal denominators, ReLU and max-pool masks) stay whole and are
  sliced to each window where they meet it;
- values known to be zero (the relevance of every other head output) are dropped.

Exactness. A window is always a subset of its map; where a window meets the map's border
the op's own padding applies (a conv window is computed in full, then the part that falls
outside the map is dropped, exactly as the dense conv never produces it). Windows of two
branches that meet (residual adds, the cls and loc heads) are united: their union's static
size is the largest union over all cells. An op the interpreter does not window (a strided
convolution, a reduction over a spatial axis, anything unknown) gets its inputs placed into
whole maps first (:attr:`Plan.densified` lists them), so the result is always the dense
result, only slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crp_jax.relevance import walk

# Linear ops: every output is zero when every input is.
_LINEAR = {
    "conv_general_dilated", "pad", "slice", "reshape", "transpose", "broadcast_in_dim",
    "concatenate", "split", "squeeze", "expand_dims", "reduce_sum", "dot_general", "rev",
    "dynamic_slice", "dynamic_update_slice", "cumsum", "gather", "select_and_scatter_add",
}  # fmt: skip


class Unsupported(Exception):
    """The backward cannot be grouped by anchor (no per-source split of the cotangent)."""


@dataclass(frozen=True, eq=False)
class _Axis:
    """One windowed axis: the window is ``[table[c], table[c] + n)`` of an axis of ``full``
    cells, where ``c`` is the anchor cell's coordinate ``tag`` (0: row, 1: column)."""

    tag: int
    table: np.ndarray  # int64 [cells of the source along tag]
    n: int
    full: int

    def same(self, other: _Axis) -> bool:
        return self.tag == other.tag and self.n == other.n and np.array_equal(self.table, other.table)


@dataclass
class WindowValue:
    """A value held on its windows: ``a`` has size ``axes[k].n`` on each windowed axis ``k``."""

    a: jax.Array
    axes: dict[int, _Axis]
    full_shape: tuple[int, ...]

    @property
    def shape(self):
        return self.full_shape


@dataclass(frozen=True)
class ZeroValue:
    """A value known to be zero (shape and dtype only)."""

    shape: tuple[int, ...]
    dtype: Any


@dataclass
class AnchorValue:
    """Initial relevance ``[N, n, K]`` for anchors ``[lo, lo + n)``: ``coef`` at the target's
    anchor, zero elsewhere."""

    lo: int
    n: int
    anchor: jax.Array  # traced int32 scalar: the global anchor index
    coef: jax.Array  # [N, K]

    @property
    def shape(self):
        return (self.coef.shape[0], self.n, self.coef.shape[1])


@dataclass
class Plan:
    """What tracing one group's cropped backward found (filled while tracing).

    Attributes:
      grid: the anchor grid ``(rows, cols)`` of the group's head output.
      input_window: ``(height, width)`` of the relevance window at the model input.
      densified: ops that had to run on whole maps (primitive names, in order).
      leaves: indices of the residual leaves that some op computed with.
    """

    grid: tuple[int, int] | None = None
    input_window: tuple[int, int] | None = None
    densified: list[str] = field(default_factory=list)
    leaves: set = field(default_factory=set)


class MissingLeaf:
    """A residual leaf the trimmed forward did not keep (the plan says no op reads it)."""


def _special(v) -> bool:
    return isinstance(v, (WindowValue, ZeroValue, AnchorValue, MissingLeaf))


def _shape_of(v) -> tuple[int, ...]:
    return tuple(v.shape) if _special(v) else tuple(np.shape(v))


def _is_zero_literal(v) -> bool:
    return not _special(v) and np.ndim(v) == 0 and not isinstance(v, jax.core.Tracer) and float(v) == 0.0


class Interpreter(walk.Rules):
    """Runs a backward jaxpr with the target's relevance held on windows (module docstring)."""

    def __init__(self, group: tuple[int, int], plan: Plan, leaves: Sequence = ()):
        self.group = group
        self.plan = plan
        self.coords: tuple[jax.Array, jax.Array] | None = None
        self.leaf_index = {id(v): i for i, v in enumerate(leaves) if not isinstance(v, MissingLeaf)}

    # ---- offsets and re-positioning -------------------------------------------------------

    def at(self, table: np.ndarray, tag: int) -> jax.Array:
        """The entry of ``table`` for the current target's cell (a traced int32)."""
        if np.all(table == table[0]):
            return jnp.int32(int(table[0]))
        return jnp.asarray(table.astype(np.int32))[self.coords[tag]]

    def shift(self, a, axis: int, f: np.ndarray, L: int, q: np.ndarray, n: int, tag: int):
        """Re-position ``a`` (``L`` cells on ``axis`` starting at ``f``) into ``[q, q + n)``:
        cells outside the new window are dropped (they are outside the map or zero), cells
        ``a`` does not cover are zero."""
        d = np.broadcast_to(q - f, np.broadcast_shapes(np.shape(q), np.shape(f)))
        if n == L and not d.any():
            return a
        lo = max(0, int(-d.min()))
        hi = max(0, int((d + n - L).max()))
        if lo or hi:
            pads = [(0, 0)] * a.ndim
            pads[axis] = (lo, hi)
            a = jnp.pad(a, pads)
        start = d + lo
        if np.all(start == start.flat[0]):
            s = int(start.flat[0])
            return lax.slice_in_dim(a, s, s + n, axis=axis)
        return lax.dynamic_slice_in_dim(a, self.at(start, tag), n, axis)

    def place(self, a, axis: int, f: np.ndarray, L: int, full: int, tag: int):
        """``a`` covers ``[f, f + L)`` of an axis of ``full`` cells, possibly beyond its ends:
        keep the part inside the axis, as a window of static size clamped into it."""
        start = np.clip(f, 0, full)
        extent = np.clip(f + L, 0, full) - start
        n = int(max(1, extent.max()))
        q = np.minimum(start, full - n)
        return self.shift(a, axis, f, L, q, n, tag), _Axis(tag, q, n, full)

    @staticmethod
    def union(axes: Sequence[_Axis]) -> _Axis | None:
        """The smallest static window holding every one of ``axes`` for every cell (None
        if they follow different cell coordinates)."""
        first = axes[0]
        if all(first.same(ax) for ax in axes[1:]):
            return first
        if any(ax.tag != first.tag for ax in axes):
            return None
        start = np.min([ax.table for ax in axes], axis=0)
        end = np.max([ax.table + ax.n for ax in axes], axis=0)
        n = int((end - start).max())
        return _Axis(first.tag, np.minimum(start, first.full - n), n, first.full)

    # ---- conversions ----------------------------------------------------------------------

    def dense(self, v):
        """The whole value as an array (a window placed into zeros)."""
        if isinstance(v, ZeroValue):
            return jnp.zeros(v.shape, v.dtype)
        if isinstance(v, AnchorValue):
            onehot = (jnp.arange(v.n) == v.anchor - v.lo).astype(v.coef.dtype)
            return onehot[None, :, None] * v.coef[:, None, :]
        if isinstance(v, WindowValue):
            a = v.a
            for axis, ax in v.axes.items():
                a = self.shift(a, axis, ax.table, ax.n, np.zeros(1, np.int64), ax.full, ax.tag)
            return a
        return v

    def on(self, v, axes: dict[int, _Axis]):
        """Value ``v`` (a whole value or a scalar) restricted to the windows ``axes``."""
        if isinstance(v, ZeroValue):
            s = [axes[k].n if k in axes and d != 1 else d for k, d in enumerate(v.shape)]
            return jnp.zeros(s, v.dtype)
        if isinstance(v, WindowValue):
            a = v.a
            for k, ax in axes.items():
                mine = v.axes.get(k)
                if mine is None:
                    if a.shape[k] != 1:
                        a = self.shift(a, k, np.zeros(1, np.int64), a.shape[k], ax.table, ax.n, ax.tag)
                elif not mine.same(ax):
                    a = self.shift(a, k, mine.table, mine.n, ax.table, ax.n, ax.tag)
            return a
        a = self.dense(v)
        if np.ndim(a) == 0:
            return a
        for k, ax in axes.items():
            if a.shape[k] != 1:
                a = self.shift(a, k, np.zeros(1, np.int64), a.shape[k], ax.table, ax.n, ax.tag)
        return a

    # ---- the interpreter ------------------------------------------------------------------

    def run(self, jaxpr, consts, args) -> list:
        return walk.forward(jaxpr, consts, args, self.step)

    def step(self, index, eqn, ins) -> list:
        out = self.eqn(eqn, ins)
        return out if eqn.primitive.multiple_results else [out]

    def eqn(self, eqn, ins):
        name = eqn.primitive.name
        params = dict(eqn.params)
        if name == "broadcast_in_dim" and _is_zero_literal(ins[0]):
            return ZeroValue(tuple(params["shape"]), eqn.outvars[0].aval.dtype)
        if not any(_special(v) for v in ins):
            self.plan.leaves.update(self.leaf_index[id(v)] for v in ins if id(v) in self.leaf_index)
            return eqn.primitive.bind(*ins, **params)
        sub = walk.call_body(eqn)
        if sub is not None:
            jaxpr, consts = sub
            n_in = len(jaxpr.invars)
            outs = self.run(jaxpr, consts, ins[len(ins) - n_in :])
            return outs if eqn.primitive.multiple_results else outs[0]
        zero = self.zero_rule(eqn, name, ins)
        if zero is not None:
            return zero
        if any(isinstance(v, MissingLeaf) for v in ins):
            raise RuntimeError(f"cropped backward: {name} reads a residual that its plan did not list")  # a bug
        self.plan.leaves.update(self.leaf_index[id(v)] for v in ins if id(v) in self.leaf_index)
        if any(isinstance(v, AnchorValue) for v in ins):
            out = self.anchor_rule(eqn, name, params, ins)
        else:
            out = self.apply(eqn, params, ins)  # rule_<name>, elementwise or fallback
        if out is None:
            out = self.densify(eqn, params, ins)
        return out

    def zeros_out(self, eqn):
        outs = [ZeroValue(tuple(v.aval.shape), v.aval.dtype) for v in eqn.outvars]
        return outs if eqn.primitive.multiple_results else outs[0]

    def zero_rule(self, eqn, name, ins):
        """Outputs known to be zero, or an operand that passes through; None otherwise."""
        z = [isinstance(v, ZeroValue) for v in ins]
        if not any(z):
            return None
        if name in ("mul", "dot_general", "conv_general_dilated") or (name == "div" and z[0]):
            return self.zeros_out(eqn)
        if name in ("add", "add_any"):
            live = [v for v, zz in zip(ins, z) if not zz]
            if not live:
                return self.zeros_out(eqn)
            same = len(live) == 1 and _shape_of(live[0]) == tuple(eqn.outvars[0].aval.shape)
            return live[0] if same else None
        if name == "sub" and z[1] and _shape_of(ins[0]) == tuple(eqn.outvars[0].aval.shape):
            return ins[0]
        if name in ("neg", "copy", "copy_p", "stop_gradient", "reduce_precision", "convert_element_type"):
            return self.zeros_out(eqn)
        if name == "select_n" and all(z[1:]):
            return self.zeros_out(eqn)
        if name == "pad" and z[0] and (z[1] or _is_zero_literal(ins[1])):
            return self.zeros_out(eqn)
        if name in _LINEAR and name not in ("concatenate", "pad", "dynamic_update_slice") and all(z):
            return self.zeros_out(eqn)
        if name in ("concatenate", "dynamic_update_slice") and all(z):
            return self.zeros_out(eqn)
        return None

    def fallback(self, eqn, params, ins):
        return None  # not windowed: the caller densifies

    def densify(self, eqn, params, ins):
        self.plan.densified.append(eqn.primitive.name)
        return eqn.primitive.bind(*[self.dense(v) for v in ins], **params)

    # ---- the initial relevance ------------------------------------------------------------

    def anchor_rule(self, eqn, name, params, ins):
        """The initial relevance through the ops that route anchors to their head output:
        a split or slice along the anchor axis keeps this group's part (the others are
        zero), and a reshape to the head's grid turns it into a 1x1 window."""
        v = ins[0]
        if not isinstance(v, AnchorValue) or any(isinstance(u, AnchorValue) for u in ins[1:]):
            return None
        if name == "split" and params["axis"] == 1:
            edges = v.lo + np.cumsum([0, *params["sizes"]])
            return [self.anchor_part(v, int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]
        if name == "slice":
            start, limit, strides = params["start_indices"], params["limit_indices"], params["strides"]
            whole = all(s == 0 and e == d for k, (s, e, d) in enumerate(zip(start, limit, v.shape)) if k != 1)
            if whole and (strides is None or all(st == 1 for st in strides)):
                return self.anchor_part(v, v.lo + start[1], v.lo + limit[1])
            return None
        if name == "reshape":
            return self.anchor_grid(v, tuple(params["new_sizes"]))
        if name in ("convert_element_type", "copy", "copy_p"):
            return AnchorValue(v.lo, v.n, v.anchor, v.coef.astype(eqn.outvars[0].aval.dtype))
        return None

    def anchor_part(self, v: AnchorValue, lo: int, hi: int):
        """Anchors ``[lo, hi)`` of ``v``: zero outside this group, the group's ``AnchorValue``
        where they hold all of it; a part that cuts the group is made whole."""
        a0, a1 = self.group
        if a1 <= lo or a0 >= hi:
            return ZeroValue((v.shape[0], hi - lo, v.shape[2]), v.coef.dtype)
        if lo <= a0 and a1 <= hi:
            return AnchorValue(lo, hi - lo, v.anchor, v.coef)
        self.plan.densified.append("split")
        return lax.slice_in_dim(self.dense(v), lo - v.lo, hi - v.lo, axis=1)

    def anchor_grid(self, v: AnchorValue, new: tuple[int, ...]):
        """``[N, n, K] -> [N, H, W, C]`` (anchors ordered row, column, box; ``C = boxes * K``):
        the target's relevance becomes a 1x1 window at its anchor's cell."""
        N, n, K = v.shape
        if len(new) != 4 or new[0] != N or new[1] * new[2] * new[3] != n * K or new[3] % K:
            return None
        H, W, C = new[1:]
        if self.plan.grid not in (None, (H, W)):
            return None
        self.plan.grid = (H, W)
        per_cell = C // K
        local = v.anchor - v.lo
        cell, box = local // per_cell, local % per_cell
        coords = (cell // W, cell % W)
        if self.coords is None:
            self.coords = coords
        a = jnp.zeros((N, 1, 1, C), v.coef.dtype)
        a = lax.dynamic_update_slice(a, v.coef.reshape(N, 1, 1, K), (0, 0, 0, box * K))
        axes = {1: _Axis(0, np.arange(H), 1, H), 2: _Axis(1, np.arange(W), 1, W)}
        return WindowValue(a, axes, (N, H, W, C))

    # ---- rules on windows ----------------------------------------------------------------

    def common_axes(self, ins) -> dict[int, _Axis] | None:
        per: dict[int, list[_Axis]] = {}
        for v in ins:
            if isinstance(v, WindowValue):
                for k, ax in v.axes.items():
                    per.setdefault(k, []).append(ax)
        out = {}
        for k, axs in per.items():
            u = self.union(axs)
            if u is None:
                return None
            out[k] = u
        return out

    def elementwise(self, eqn, params, ins):
        axes = self.common_axes(ins)
        if axes is None:
            return None
        shape = tuple(eqn.outvars[0].aval.shape)
        a = eqn.primitive.bind(*[self.on(v, axes) for v in ins], **params)
        return WindowValue(a, axes, shape) if axes else a

    def rule_conv_general_dilated(self, eqn, params, ins):
        lhs, rhs = ins
        if not isinstance(lhs, WindowValue) or _special(rhs) or params["batch_group_count"] != 1:
            return None
        dn = params["dimension_numbers"]
        lhs_sp, out_sp = list(dn.lhs_spec[2:]), list(dn.out_spec[2:])
        if any(k not in lhs_sp for k in lhs.axes):
            return None
        padding = list(params["padding"])
        geom = []
        for k, ax in lhs.axes.items():
            i = lhs_sp.index(k)
            if params["window_strides"][i] != 1:
                return None
            kh = rhs.shape[dn.rhs_spec[2 + i]]
            ld, rd = params["lhs_dilation"][i], params["rhs_dilation"][i]
            ke = rd * (kh - 1) + 1
            geom.append((out_sp[i], ax, padding[i][0] + ax.table * ld - (ke - 1), (ax.n - 1) * ld + ke))
            padding[i] = (ke - 1, ke - 1)
        a = eqn.primitive.bind(lhs.a, rhs, **{**params, "padding": tuple(padding)})
        return self.placed(eqn, a, geom)

    def placed(self, eqn, a, geom) -> WindowValue:
        """``a`` (an op's result on its input windows) placed on its output windows: each
        ``(axis, input window axis, first output cell per source cell, length)`` of ``geom``
        through :meth:`place`."""
        out_shape = tuple(eqn.outvars[0].aval.shape)
        axes = {}
        for k, ax, f, L in geom:
            a, axes[k] = self.place(a, k, f, L, out_shape[k], ax.tag)
        return WindowValue(a, axes, out_shape)

    def rule_pad(self, eqn, params, ins):
        x, value = ins
        if not isinstance(x, WindowValue) or not (_is_zero_literal(value) or isinstance(value, ZeroValue)):
            return None
        config = list(params["padding_config"])
        geom = []
        for k, ax in x.axes.items():
            lo, _, interior = config[k]
            geom.append((k, ax, lo + ax.table * (interior + 1), (ax.n - 1) * (interior + 1) + 1))
            config[k] = (0, 0, interior)
        a = eqn.primitive.bind(x.a, jnp.zeros((), x.a.dtype), padding_config=tuple(config))
        return self.placed(eqn, a, geom)

    def rule_slice(self, eqn, params, ins):
        (x,) = ins
        start, limit = list(params["start_indices"]), list(params["limit_indices"])
        strides = list(params["strides"] or (1,) * len(start))
        win_start, win_limit = list(start), list(limit)
        geom = []
        a = x.a
        for k, ax in x.axes.items():
            s = strides[k]
            win_start[k], win_limit[k], strides[k] = 0, ax.n, 1
            if s == 1:
                geom.append((k, ax, ax.table - start[k], ax.n))
                continue
            # strided: the first kept element of the window, and how many fit
            i0 = -((start[k] - ax.table) // s)  # ceil((table - start) / s)
            r = start[k] + i0 * s - ax.table  # its place in the window, in [0, s)
            count = int(max(1, ((ax.n - 1 - r) // s + 1).max()))
            a = self.shift(a, k, np.zeros(1, np.int64), ax.n, r, s * count, ax.tag)
            a = lax.slice_in_dim(a, 0, s * count, s, axis=k)
            win_limit[k] = count
            geom.append((k, ax, i0, count))
        a = lax.slice(a, win_start, win_limit, strides)
        return self.placed(eqn, a, geom)

    def rule_broadcast_in_dim(self, eqn, params, ins):
        x = ins[0]
        if not isinstance(x, WindowValue) or len(ins) != 1:
            return None
        dims = params["broadcast_dimensions"]
        shape = list(params["shape"])
        axes = {}
        for k, ax in x.axes.items():
            if shape[dims[k]] != ax.full:
                return None
            shape[dims[k]] = ax.n
            axes[dims[k]] = ax
        a = eqn.primitive.bind(x.a, **{**params, "shape": tuple(shape)})
        return WindowValue(a, axes, tuple(params["shape"]))

    def rule_reshape(self, eqn, params, ins):
        (x,) = ins
        if not isinstance(x, WindowValue) or params.get("dimensions") is not None:
            return None
        old, new = tuple(x.shape), tuple(params["new_sizes"])
        groups = walk.reshape_groups(old, new)
        if groups is None:
            return None
        win_new, axes = list(new), {}
        for (i0, i1), (j0, j1) in groups:
            wk = [k for k in x.axes if i0 <= k < i1]
            if not wk:
                continue
            k = wk[0]
            # the window's axis must lead its group and the group become one axis (a merge
            # such as [N, h, 2, w, 2, C] -> [N, 2h, 2w, C], or an axis kept as it is)
            if len(wk) > 1 or k != i0 or j1 - j0 != 1:
                return None
            inner = int(np.prod(old[i0 + 1 : i1]))
            ax = x.axes[k]
            win_new[j0] = ax.n * inner
            axes[j0] = _Axis(ax.tag, ax.table * inner, ax.n * inner, ax.full * inner)
        a = x.a.reshape(win_new)
        return WindowValue(a, axes, new)

    def rule_transpose(self, eqn, params, ins):
        (x,) = ins
        perm = params["permutation"]
        axes = {j: x.axes[p] for j, p in enumerate(perm) if p in x.axes}
        return WindowValue(eqn.primitive.bind(x.a, **params), axes, tuple(eqn.outvars[0].aval.shape))

    def rule_squeeze(self, eqn, params, ins):
        (x,) = ins
        axes = _without_axes(x, params["dimensions"])
        return WindowValue(eqn.primitive.bind(x.a, **params), axes, tuple(eqn.outvars[0].aval.shape))

    def rule_reduce_sum(self, eqn, params, ins):
        (x,) = ins
        axes = _without_axes(x, params["axes"])
        a = eqn.primitive.bind(x.a, **params)  # outside the window the value is zero
        return WindowValue(a, axes, tuple(eqn.outvars[0].aval.shape)) if axes else a

    def rule_rev(self, eqn, params, ins):
        (x,) = ins
        axes = dict(x.axes)
        for k in params["dimensions"]:
            if k in axes:
                ax = axes[k]
                axes[k] = _Axis(ax.tag, ax.full - ax.table - ax.n, ax.n, ax.full)
        return WindowValue(eqn.primitive.bind(x.a, **params), axes, x.shape)

    def rule_concatenate(self, eqn, params, ins):
        d = params["dimension"]
        axes = self.common_axes(ins)
        if axes is None or d in axes:
            return None
        parts = [self.on(v, axes) for v in ins]
        return WindowValue(eqn.primitive.bind(*parts, **params), axes, tuple(eqn.outvars[0].aval.shape))

    def rule_split(self, eqn, params, ins):
        (x,) = ins
        if params["axis"] in x.axes:
            return None
        outs = eqn.primitive.bind(x.a, **params)
        return [WindowValue(o, dict(x.axes), tuple(v.aval.shape)) for o, v in zip(outs, eqn.outvars)]


def _without_axes(x: WindowValue, dropped) -> dict[int, _Axis]:
    """``x``'s windowed axes renumbered after removing the axes ``dropped``."""
    keep = [k for k in range(len(x.shape)) if k not in set(dropped)]
    return {j: x.axes[k] for j, k in enumerate(keep) if k in x.axes}
