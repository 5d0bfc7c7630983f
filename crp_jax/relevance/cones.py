"""Receptive-field cones of a detector's anchors, read from the model's own traced computation.

A target's relevance (and gradient) at an activation is exactly zero outside the set of
elements that its anchor's output row depends on. This module computes that set's
bounding box for every anchor, at the model input and at every intermediate 4-D activation,
without knowing anything about the architecture: it traces ``model.apply(variables, x)``
to a jaxpr (``jax.make_jaxpr`` on shapes only; no weights are read and nothing is compiled)
and walks it backward from the output rows. It is the geometry a receptive-field-cropped
relevance pass needs (docs/design.md §6); it computes no relevance itself. The cropped engine
measures its windows itself, from the backward it runs (:mod:`crp_jax.relevance.cropped`);
``tests/test_cropped.py`` checks the two agree. The rules per primitive live in
:mod:`crp_jax.relevance.cone_rules` (a :class:`~crp_jax.relevance.walk.Rules`), and the walk
itself is :func:`crp_jax.relevance.walk.backward`.

**What is tracked.** Per value, the dependency of one anchor's output row (all K logits and
the 4 box offsets: every output whose axis 1 is the anchor axis) as one interval per axis,
``[lo, hi)``; a value read by several consumers gets the bounding box of their demands. The
rules, per primitive:

- ``conv_general_dilated``: output cells ``[a, b)`` read the input elements at
  ``o * stride + j * rhs_dilation - pad_lo`` (``o`` in ``[a, b)``, ``j`` a kernel tap) that are
  multiples of ``lhs_dilation``; the interval is the min and max of those actually read
  (taps on padding read nothing), so it is exact for strides, padding (also asymmetric and
  negative), both dilations and ``feature_group_count`` (depthwise convs: channel groups);
- ``reduce_window_*`` / ``reduce_window`` (max-, min-, sum-pools): the same, per axis, with
  base and window dilation. Padding is where ceil mode shows up (``crp_jax/ssd/pool.py``
  pads the last window on the high side), and it is read from the traced op;
- elementwise ops: the union of their consumers' demands, broadcast (size-1) axes ``[0, 1)``;
- ``reshape`` (exact bounding box of the flat ranges), ``concatenate``, ``split``, ``slice``,
  ``pad``, ``transpose``, ``rev``, ``squeeze``, ``broadcast_in_dim``: index maps, so an anchor
  row at the heads maps back to its one source cell (and the box's channels);
- ``reduce_*`` / ``argmax`` / ``cum*``, ``dot_general``: reduced or contracted axes are needed
  whole (a spatial mean makes the cone the whole map, see below);
- call primitives (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``, ...): recursed;
- anything else (``gather``, ``while``, ``scan``, ...): every input needed whole, and the
  primitive is listed in :attr:`Cone.conservative`, so an inexact cone never passes silently.

Max-pool relevance goes to one winner per window, so the true support of a given image's
relevance is a subset of the cone, which is the structural (value-independent) dependency.
Intervals are bounding boxes: a dilated conv reads a sparse set (SSD's conv6 reads every
6th cell), whose bounding box is kept and propagated.

**Clipped and unclipped.** *Clipped* windows (:attr:`Cone.windows`, :attr:`Cone.input`)
lie inside their map: padding reads nothing, so they are the exact positions, and near the
image border they are smaller. *Unclipped* windows (:attr:`Cone.unclipped`,
:func:`cone_sizes`) are the same walk with convolution and pool padding counted as cells (as
if every map extended beyond its border): their size is the same for every anchor of a source
in a conv/pool network, and it is the static window size a cropped pass would compile once
per source, positioned at the unclipped window's (possibly negative) corner on a padded map.
Index maps (reshape, concatenate) clip the axes they move in both modes; ``slice`` clips
only the clipped walk, so that convolutions written as pad + strided slices (the tap-by-tap
grouped convolutions of :mod:`crp_jax.grouped_conv`) get the unclipped sizes of lax's conv.

**Global operations.** A reduction over a spatial axis depends on the whole map. SSDlite's
squeeze-excitation gates (``g = hardsigmoid(fc2(relu(fc1(mean_hw(x)))))``, then ``x * g``)
are such reductions, and every SSDlite source sits downstream of one (blocks 3-5 of
MobileNetV3 already have SE), so every SSDlite anchor's cone is the whole image: the gate
really does depend on every pixel, and the *gradient* does flow there. Relevance does not:
the composites hold the gate constant (the ``"gate"`` kind gives ``x`` all of the
relevance), so the *relevance* cone is the one with the gate treated as a constant, which
``constant=("*/se/gate_act",)`` computes. Whether a cropped pass may rely on that (it must
then take the gate values from the uncropped forward pass, which is shared by all targets
anyway) is a design question for the cropped engine; this module only reports both
geometries, and lists the reductions it met in :attr:`Cone.global_ops`.

**Names.** Every 4-D activation that depends on the input gets a stable key:

- the Flax module path (``"conv4_3"``, ``"block_3/se"``, ``"cls_0"``), read from the jaxpr's
  name stacks, for the last 4-D value computed inside that module call (its output for a
  single-output module); a module called more than once gets ``"path@1"``, ``"path@2"`` ...;
- otherwise ``"<scope>/<label>#<k>"``: the innermost module path (omitted at the top), the
  primitive or called function (``relu#0``, ``_max_pool#2``, ``conv1_1/conv_general_dilated#0``
  for the conv before its bias) and a counter in program order;
- ``"input"``: the model input.

Windows are ``(top, left, height, width)`` over axes 1 and 2 (NHWC), in cells of that map.

The engine imports nothing from ``crp_jax.ssd``; any detector whose ``apply(variables, x)``
returns ``(cls [B, A, K], loc [B, A, 4])`` works.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.compiled import cached, shape_key, shape_tree
from crp_jax.errors import InputError
from crp_jax.relevance import walk
from crp_jax.relevance.cone_rules import Demand, DemandRules, Record, eqn_label, has_names, shape_spec, var_shape

__all__ = ["Window", "Cone", "SourceCone", "ConeGeometry", "cone_geometry", "anchor_cone", "cone_sizes"]


class Window(NamedTuple):
    """An axis-aligned window ``[top, top + height) x [left, left + width)`` of a map's cells."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Cone:
    """The receptive-field cone of one anchor (see the module docstring).

    Attributes:
      anchor: the output row (anchor index).
      input: clipped window at the model input, in pixels (inside ``[0, H) x [0, W)``).
      windows: clipped window per 4-D activation the anchor depends on, key -> Window, in
        that activation's cells, program order (activations outside the cone are absent).
      unclipped: the same keys (and ``"input"``) with padding counted as cells: windows of
        the static size a cropped pass would use; ``top``/``left`` may be negative and the
        window may end past the map.
      map_sizes: ``(height, width)`` of each keyed map (and of ``"input"``).
      global_ops: reductions over a non-channel axis of a 4-D value met on the cone's path
        (``"scope:primitive(axes)"``), e.g. SSDlite's squeeze-excitation means: the cone is
        the whole map there.
      conservative: primitives on the path whose inputs were taken whole because no exact
        rule exists (empty for SSD and SSDlite).
    """

    anchor: int
    input: Window
    windows: Mapping[str, Window]
    unclipped: Mapping[str, Window]
    map_sizes: Mapping[str, tuple[int, int]]
    global_ops: tuple[str, ...]
    conservative: tuple[str, ...]


@dataclass(frozen=True)
class SourceCone:
    """Static window sizes of one group of anchors: consecutive anchors whose cones touch the
    same activations (for SSD-style detectors: the anchors of one source).

    Attributes:
      anchors: the group's anchor rows, ``range(start, stop)``.
      heads: the keys of activations that only this group's anchors depend on (its head
        convs, and e.g. SSD's ``l2norm`` for source 0).
      sizes: key (and ``"input"``) -> ``(height, width)``: the *unclipped* window size, the
        largest over the group's anchors. Clipped positions differ per anchor
        (:func:`anchor_cone`); these are the sizes to compile once per group.
      global_ops: as :attr:`Cone.global_ops`, for any anchor of the group.
    """

    anchors: range
    heads: tuple[str, ...]
    sizes: Mapping[str, tuple[int, int]]
    global_ops: tuple[str, ...]


# ---- names: module paths from the jaxpr's name stacks -----------------------------------


def _module_path(name_stack: str, root: str | None) -> tuple[tuple[str, ...], str | None]:
    """Flax name-stack parts (``"SSD/SSD.sources/conv1_1"``) -> module path ``("conv1_1",)``
    and the root module's name; ``"Parent.method"`` parts of the root are dropped and a
    submodule's method ``"sub.method"`` counts as ``"sub"``."""
    parts = [p for p in name_stack.split("/") if p]
    if not parts:
        return (), root
    if root is None:
        root = parts[0]
    if parts[0] == root:
        parts = parts[1:]
    out = []
    for p in parts:
        if "." in p:
            head = p.split(".")[0]
            if head == root:
                continue
            p = head
        out.append(p)
    return tuple(out), root


@dataclass
class _Site:
    path: tuple  # eqn indices from the top-level jaxpr down
    index: int  # which output of the eqn
    scope: tuple[str, ...]
    label: str
    visible: bool
    hw: tuple[int, int]


class ConeGeometry:
    """The traced model and the keys of its activations; windows for any anchors.

    ``ConeGeometry(model, variables, x_shape, constant=())`` traces ``model.apply(variables,
    x)`` for ``x`` of ``x_shape = (B, H, W, C)`` float32 (shapes only: ``variables`` may be
    ``jax.ShapeDtypeStruct`` leaves). ``constant``: globs on module paths (``fnmatch``, e.g.
    ``"*/se/gate_act"``): operations inside matching modules propagate no dependency, as if
    those modules' outputs were constants (the relevance composites' view of SSDlite's gates).

    Attributes:
      x_shape: ``(B, H, W, C)``.
      num_anchors: A, axis 1 of the outputs (every output with that axis is an anchor row).
      names: every key, ``"input"`` first, then the activations in program order.
      map_sizes: key -> ``(height, width)`` of that map.
    """

    def __init__(self, model: Any, variables: Any, x_shape: Sequence[int], *, constant: Sequence[str] = ()):
        x_shape = tuple(int(s) for s in x_shape)
        if len(x_shape) != 4:
            raise InputError(f"x_shape must be (B, H, W, C), got {x_shape!r}")
        self.x_shape = x_shape
        self.constant = tuple(constant)
        shapes = jax.tree_util.tree_map(shape_spec, variables)
        closed = jax.make_jaxpr(lambda v, x: model.apply(v, x))(shapes, jax.ShapeDtypeStruct(x_shape, jnp.float32))
        self._jaxpr = closed.jaxpr
        n_in = len(self._jaxpr.invars)
        self._in_dep = [False] * (n_in - 1) + [True]  # x is the last leaf of (variables, x)
        outs = [var_shape(v) for v in self._jaxpr.outvars]
        rows = [s for s in outs if len(s) >= 2]
        if not rows:
            raise InputError(f"the model's outputs {outs} have no anchor axis (axis 1 of [B, A, ...])")
        self.num_anchors = rows[0][1]
        self._outputs = [i for i, s in enumerate(outs) if len(s) >= 2 and s[1] == self.num_anchors]
        self._sites: dict[tuple, _Site] = {}
        self._root: str | None = None
        self._module_last: dict[tuple, tuple] = {}  # (module path, call) -> site id
        self._calls: dict[tuple, int] = {}
        self._prev_scopes: set = set()
        self._name(self._jaxpr, self._in_dep, (), (), True)
        self._site_keys, self.map_sizes = self._assign_keys()
        self._sizes: tuple[SourceCone, ...] | None = None

    # -- naming (forward, program order) --
    def _scope_of(self, eqn, outer: tuple[str, ...]) -> tuple[str, ...]:
        own, self._root = _module_path(str(eqn.source_info.name_stack), self._root)
        return outer + own

    def _name(self, jaxpr, in_dep, path, outer, visible):
        def step(i, e, ins):
            d = any(ins)  # the equation depends on the input
            scope = self._scope_of(e, outer)
            self._enter(scope)
            body = walk.call_body(e)
            if body is not None and d:
                self._name(body[0], ins, path + (i,), scope, has_names(body[0]))
            for j, o in enumerate(e.outvars):
                if d and len(var_shape(o)) == 4:
                    site = (path + (i,), j)
                    self._sites[site] = _Site(path + (i,), j, scope, eqn_label(e), visible, var_shape(o)[1:3])
                    for q in range(1, len(scope) + 1):
                        key = scope[:q]
                        self._module_last[(key, self._calls[key])] = site
            return [d] * len(e.outvars)

        walk.forward(jaxpr, [False] * len(jaxpr.constvars), in_dep, step, literal=_no_dependency)

    def _enter(self, scope: tuple[str, ...]) -> None:
        """Count module calls: a module path met again after an equation outside it is a new call."""
        current = {scope[:q] for q in range(1, len(scope) + 1)}
        for key in current - self._prev_scopes:
            self._calls[key] = self._calls.get(key, -1) + 1
        self._prev_scopes = current

    def _assign_keys(self):
        keys: dict[tuple, list[str]] = {site: [] for site in self._sites}
        for (path, call), site in self._module_last.items():
            keys[site].append("/".join(path) + (f"@{call}" if call else ""))
        counters: dict[tuple, int] = {}
        for site, info in self._sites.items():
            if keys[site] or not info.visible:
                continue
            c = counters.get((info.scope, info.label), 0)
            counters[(info.scope, info.label)] = c + 1
            keys[site].append(("/".join(info.scope) + "/" if info.scope else "") + f"{info.label}#{c}")
        keys = {s: sorted(k, key=len, reverse=True) for s, k in keys.items() if k}
        sizes = {"input": self.x_shape[1:3]}
        for s, ks in keys.items():
            for k in ks:
                sizes[k] = self._sites[s].hw
        return keys, sizes

    @property
    def names(self) -> tuple[str, ...]:
        """Every key (``"input"`` first, then activations in program order)."""
        return tuple(self.map_sizes)

    # -- the backward walk --
    def _constant(self, scope: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase("/".join(scope[:q]), g) for g in self.constant for q in range(1, len(scope) + 1))

    def _backward(self, jaxpr, in_dep, out_dem, path, outer, rules: DemandRules):
        dep: dict = {}  # var -> whether it depends on the model input
        walk.forward(
            jaxpr,
            [False] * len(jaxpr.constvars),
            in_dep,
            lambda i, e, ins: [any(ins)] * len(e.outvars),
            literal=_no_dependency,
            env=dep,
        )
        scopes = []
        root = self._root
        for e in jaxpr.eqns:
            own, root = _module_path(str(e.source_info.name_stack), root)
            scopes.append(outer + own)
        rec = rules.rec

        def step(i, e, outs):
            for j, o in enumerate(outs):
                if o is not None and (path + (i,), j) in self._site_keys:
                    rec.sites[(path + (i,), j)] = o
            if self._constant(scopes[i]):
                return []
            ins_dep = [walk.is_var(v) and dep.get(v, False) for v in e.invars]
            body = walk.call_body(e)
            if body is not None:
                ins = self._backward(body[0], ins_dep, outs, path + (i,), scopes[i], rules)
            else:
                outs = [o if o is not None else Demand.empty(rec.n, len(var_shape(v))) for o, v in zip(outs, e.outvars)]
                ins = rules.apply(e, outs, ins_dep, "/".join(scopes[i]))
            res = []
            for v, d, xd in zip(e.invars, ins, ins_dep):
                if xd and d is not None and rules.clip:
                    d = d.clipped(var_shape(v))
                res.append(d if xd and d is not None and d.active.any() else None)
            return res

        outs = [d if walk.is_var(v) and dep.get(v, False) else None for v, d in zip(jaxpr.outvars, out_dem)]
        return walk.backward(jaxpr, outs, step, Demand.union)

    def _walk(self, anchors: np.ndarray, clip: bool) -> tuple[Demand, Record]:
        n = len(anchors)
        rec = Record(n)
        out_dem: list[Demand | None] = [None] * len(self._jaxpr.outvars)
        for i in self._outputs:
            s = var_shape(self._jaxpr.outvars[i])
            lo = np.zeros((n, len(s)), np.int64)
            hi = np.tile(np.array(s, np.int64), (n, 1))
            lo[:, 1], hi[:, 1] = anchors, anchors + 1
            out_dem[i] = Demand(np.ones(n, bool), lo, hi)
        ins = self._backward(self._jaxpr, self._in_dep, out_dem, (), (), DemandRules(clip, rec))
        x = ins[-1] if ins[-1] is not None else Demand.empty(n, 4)
        return x, rec

    def windows(self, anchors: Sequence[int] | np.ndarray, *, clip: bool = True) -> dict[str, np.ndarray]:
        """Windows of many anchors at once (one vectorized walk).

        Args:
          anchors: anchor indices ``[N]`` in ``[0, A)``.
          clip: True for positions inside each map; False for unclipped windows (padding
            counted as cells; the static sizes).

        Returns:
          key -> int64 ``[N, 4]`` rows ``(top, left, height, width)``, for ``"input"`` and
          every keyed activation; a row whose anchor does not depend on that activation is
          ``(0, 0, 0, 0)``.
        """
        a = np.asarray(anchors, np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= self.num_anchors):
            raise InputError(f"anchor indices must be in [0, {self.num_anchors}), got {a.min()}..{a.max()}")
        x, rec = self._walk(a, clip)
        out = {"input": _rows(x)}
        for site, ks in self._site_keys.items():
            r = _rows(rec.sites.get(site, Demand.empty(len(a), 4)))
            for k in ks:
                out[k] = r
        return {k: out[k] for k in self.names}

    def cone(self, anchor: int) -> Cone:
        """The :class:`Cone` of one anchor."""
        anchor = _check_anchor(anchor, self.num_anchors)
        a = np.array([anchor], np.int64)
        x, rec = self._walk(a, True)
        ux, urec = self._walk(a, False)
        win, unc = {}, {"input": Window(*(int(v) for v in _rows(ux)[0]))}
        for site, ks in self._site_keys.items():
            if site in rec.sites and rec.sites[site].active[0]:
                w = Window(*(int(v) for v in _rows(rec.sites[site])[0]))
                u = Window(*(int(v) for v in _rows(urec.sites[site])[0]))
                for k in ks:
                    win[k], unc[k] = w, u
        order = {k: i for i, k in enumerate(self.names)}
        win = dict(sorted(win.items(), key=lambda kv: order[kv[0]]))
        unc = dict(sorted(unc.items(), key=lambda kv: order[kv[0]]))
        return Cone(
            anchor=anchor,
            input=Window(*(int(v) for v in _rows(x)[0])),
            windows=win,
            unclipped=unc,
            map_sizes={k: self.map_sizes[k] for k in unc},
            global_ops=tuple(k for k, m in rec.global_ops.items() if m[0]),
            conservative=tuple(k for k, m in rec.conservative.items() if m[0]),
        )

    def sizes(self) -> tuple[SourceCone, ...]:
        """Static (unclipped) window sizes per group of anchors, see :class:`SourceCone`
        (walked once per geometry: ``explain``'s crop="auto" asks on every call)."""
        if self._sizes is None:
            self._sizes = self._walk_sizes()
        return self._sizes

    def _walk_sizes(self) -> tuple[SourceCone, ...]:
        A = self.num_anchors
        x, rec = self._walk(np.arange(A, dtype=np.int64), False)
        sites = list(self._site_keys)
        touched = np.stack([rec.sites[s].active if s in rec.sites else np.zeros(A, bool) for s in sites], axis=1)
        starts = [0] + [i for i in range(1, A) if not np.array_equal(touched[i], touched[i - 1])] + [A]
        groups = [range(a, b) for a, b in zip(starts[:-1], starts[1:])]
        first = np.array([g.start for g in groups])
        counts = np.zeros(len(sites), np.int64)  # how many groups touch each site
        for g in first:
            counts += touched[g]
        result = []
        for g in groups:
            sel = slice(g.start, g.stop)
            sizes = {"input": _max_size(x, sel)}
            heads = []
            for j, s in enumerate(sites):
                if not touched[g.start, j]:
                    continue
                for k in self._site_keys[s]:
                    sizes[k] = _max_size(rec.sites[s], sel)
                    if counts[j] == 1:
                        heads.append(k)
            result.append(
                SourceCone(
                    anchors=g,
                    heads=tuple(heads),
                    sizes=sizes,
                    global_ops=tuple(k for k, m in rec.global_ops.items() if m[sel].any()),
                )
            )
        return tuple(result)


def _no_dependency(literal) -> bool:
    return False  # a literal is a constant


def _rows(d: Demand) -> np.ndarray:
    """``[N, 4]`` ``(top, left, height, width)`` over axes 1, 2; zeros where inactive."""
    top, left = d.lo[:, 1], d.lo[:, 2]
    h, w = d.hi[:, 1] - top, d.hi[:, 2] - left
    out = np.stack([top, left, h, w], axis=1)
    return np.where(d.active[:, None], out, 0)


def _max_size(d: Demand, sel: slice) -> tuple[int, int]:
    r = _rows(d)[sel]
    return int(r[:, 2].max()), int(r[:, 3].max())


def _check_anchor(anchor: Any, num_anchors: int) -> int:
    if isinstance(anchor, bool) or not isinstance(anchor, (int, np.integer)) or not 0 <= anchor < num_anchors:
        raise InputError(f"anchor must be an integer in [0, {num_anchors}), got {anchor!r}")
    return int(anchor)


@cached("cone_geometry", maxsize=8)
def _cached(model, key, x_shape, constant):
    return ConeGeometry(model, shape_tree(key), x_shape, constant=constant)


def cone_geometry(model: Any, variables: Any, x_shape: Sequence[int], *, constant: Sequence[str] = ()) -> ConeGeometry:
    """A :class:`ConeGeometry`, cached per (model, variable shapes, ``x_shape``, ``constant``)
    when the model is hashable (Flax modules are). Tracing SSD300 takes about 0.3 s on a CPU."""
    key = shape_key(jax.tree_util.tree_map(shape_spec, variables))
    return _cached(model, key, tuple(int(s) for s in x_shape), tuple(constant))


def anchor_cone(
    model: Any, variables: Any, x_shape: Sequence[int], anchor: int, *, constant: Sequence[str] = ()
) -> Cone:
    """The receptive-field cone of output row ``anchor``.

    Args:
      model: a Flax module whose ``apply(variables, x [B, H, W, C])`` returns outputs with
        the anchor on axis 1 (``(cls [B, A, K], loc [B, A, 4])``).
      variables: its variables, or their ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of
        ``model.init``): only shapes are read.
      x_shape: ``(B, H, W, C)`` of the input.
      anchor: the row in ``[0, A)``.
      constant: module-path globs treated as constants (see :class:`ConeGeometry`).

    Returns:
      A :class:`Cone`: clipped windows (positions) at the input and every activation the
      anchor depends on, and the unclipped windows (static sizes).
    """
    return cone_geometry(model, variables, x_shape, constant=constant).cone(anchor)


def cone_sizes(
    model: Any, variables: Any, x_shape: Sequence[int], *, constant: Sequence[str] = ()
) -> tuple[SourceCone, ...]:
    """Per group of anchors (a source, for SSD-style detectors), the largest *unclipped*
    window size at the input and at every activation: what a cropped pass would compile
    once per group. Arguments as :func:`anchor_cone`; all anchors go through one
    vectorized walk (SSD300's 8732: about 0.3 s on a CPU)."""
    return cone_geometry(model, variables, x_shape, constant=constant).sizes()
