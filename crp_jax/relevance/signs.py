"""Which layers see negative values, read from the model's own graph (docs/design.md §2).

The problem: the w+ rule ``R_i = x_i w+_ij / z+_j R_j`` is bounded only for inputs ``x >= 0``
(after a ReLU). Where inputs can be negative (after hardswish, a linear bottleneck or a
residual add), ``z+_j = sum_i x_i w+_ij`` can cancel to ~0 and relevance grows by
1/stabiliser at every such layer: torchvision's SSDlite with calibrated random weights
reached 1e36 and then Inf. Where relevance reaches *negative outputs* (a linear bottleneck,
a conv before hardswish), positive contributions alone cannot carry it and relevance is lost.
Both are facts of the graph, not of a layer's type, so they are read from the graph rather
than from a hand-kept list in each detector.

How: the model's forward is traced once (``jax.make_jaxpr``, shapes only) with every
Conv/Dense module's input and output tagged by its path (``checkpoint_name``, an identity).
Two passes over the jaxpr then give, for every tagged layer,

- ``input_signed``: a forward pass marks every value that is provably ``>= 0``: the output of
  ``max(a, b)`` with a ``>= 0`` operand (ReLU), a clip whose lower bound is ``>= 0`` (ReLU6),
  a sigmoid, ``exp``, a square, and sums, products, pools, pads, reshapes and concatenations
  of values ``>= 0``; literals by their value. Everything else, parameters included (their
  values are not known while tracing), may be negative.
- ``output_signed``: a backward pass marks every value whose negative entries can receive
  relevance: a value read by a conv, a dense layer or a product with a signed factor is such
  a value wherever that op's output receives relevance; ``max(a, 0)`` and clips at 0 stop
  it (the negative entries of ``a`` have zero derivative); shape ops, adds and products with
  a factor ``>= 0`` pass it on. The model outputs themselves start unmarked: the composite's
  rule for the heads is applied as written.

Both are over-approximations: a layer marked signed gets the sign-aware form of its rule
(always exact, bounded, at about twice the cost of a conv); a layer proven non-negative keeps
the cheap form, which is equal there. Anything the passes do not know (``while``, ``cond``,
scatter, unknown primitives) is treated as "may be negative".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.extend import core as jcore

from crp_jax.compiled import cached
from crp_jax.relevance.jaxprs import call_body

_IN, _OUT = "crp_jax.in:", "crp_jax.out:"
# Addends and sum of a module of kind "add", which the presets split by sign
# (``rules.Proportional(by_sign=True)``): an addend's negative entries get relevance only
# where the sum's do, unlike a plain add's gradient.
_ADDEND, _ADDSUM = "crp_jax.addend:", "crp_jax.addsum:"


@dataclass(frozen=True)
class LayerSigns:
    """Sign facts of one linear layer, from :func:`layer_signs`.

    Attributes:
      input_signed: the layer's input may hold negative values.
      output_signed: relevance may reach negative values of the layer's output.
    """

    input_signed: bool = True
    output_signed: bool = True


# Ops whose output is >= 0 when every data operand is (and whose backward routes relevance
# from output entries to input entries of the same sign, for the backward pass).
_STRUCTURAL = frozenset(
    {
        "reshape",
        "broadcast_in_dim",
        "squeeze",
        "expand_dims",
        "transpose",
        "slice",
        "dynamic_slice",
        "concatenate",
        "pad",
        "rev",
        "copy",
        "copy_p",
        "convert_element_type",
        "reduce_precision",
        "reduce_max",
        "reduce_min",
        "reduce_window_max",
        "cummax",
        "name",
        "stop_gradient",
        "optimization_barrier",
        "select_n",
        "gather",
        "sort",
    }
)
# Ops whose output is >= 0 for any finite input.
_NONNEG_ALWAYS = frozenset({"logistic", "exp", "exp2", "abs", "sqrt", "rsqrt", "square"})
# Ops that are non-negative when all operands are. Sums of several entries (an add, a
# reduce_sum, an average pool, an interpolation) are not structural for the backward pass:
# their gradient gives relevance to a negative entry whatever the sum's sign.
_SUMS = frozenset({"add", "add_any", "max", "min", "reduce_sum", "reduce_window_sum", "reduce_window", "cumsum"})
# Products/quotients: non-negative if both operands are.
_PRODUCTS = frozenset({"mul", "div", "dot_general", "conv_general_dilated"})


def _is_literal(v) -> bool:
    return isinstance(v, jcore.Literal)


def _literal_nonneg(v) -> bool:
    try:
        return bool(np.all(np.asarray(v.val) >= 0))
    except (TypeError, ValueError):
        return False


def _sub_jaxpr(eqn):
    body = call_body(eqn)
    return None if body is None else body[0]


def _forward(jaxpr, in_nonneg: list[bool], nonneg: dict, consts_nonneg: list[bool] | None = None) -> list[bool]:
    """Mark ``nonneg[var] = True`` for every var of ``jaxpr`` provably >= 0."""

    def get(v) -> bool:
        return _literal_nonneg(v) if _is_literal(v) else nonneg.get(v, False)

    for v, f in zip(jaxpr.constvars, consts_nonneg or [False] * len(jaxpr.constvars)):
        nonneg[v] = f
    for v, f in zip(jaxpr.invars, in_nonneg):
        nonneg[v] = f
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        ins = [get(v) for v in eqn.invars]
        inner = _sub_jaxpr(eqn)
        if inner is not None:
            outs = _forward(inner, ins, nonneg)
        elif prim in _NONNEG_ALWAYS:
            outs = [True] * len(eqn.outvars)
        elif prim == "max":
            outs = [any(ins)]
        elif prim == "clamp":  # clamp(lo, x, hi)
            outs = [ins[0] or ins[1]]
        elif prim == "integer_pow":
            outs = [ins[0] or eqn.params.get("y", 1) % 2 == 0]
        elif prim == "select_n":  # the predicate is operand 0
            outs = [all(ins[1:])]
        elif prim in ("gather", "dynamic_slice", "dynamic_update_slice", "pad"):
            # data operands: gather/dynamic_slice read operand 0; pad's operand 1 is its value
            outs = [ins[0] and (prim != "pad" or ins[1])]
        elif prim in _STRUCTURAL or prim in _SUMS or prim in _PRODUCTS:
            outs = [all(ins)] * len(eqn.outvars)
        else:
            outs = [False] * len(eqn.outvars)
        for v, f in zip(eqn.outvars, outs):
            nonneg[v] = f
    return [get(v) for v in jaxpr.outvars]


def _backward(
    jaxpr, out_live: list[bool], out_neg: list[bool], nonneg: dict, live: dict, neg: dict, sums: dict | None = None
):
    """``live[v]``: relevance may reach ``v``; ``neg[v]``: it may reach negative entries of ``v``.
    ``sums``: kind-"add" module path -> whether its sum's negative entries get relevance."""
    sums = {} if sums is None else sums

    def mark(v, is_live: bool, is_neg: bool):
        if _is_literal(v):
            return
        live[v] = live.get(v, False) or is_live
        neg[v] = neg.get(v, False) or is_neg

    def is_nonneg(v) -> bool:
        return _literal_nonneg(v) if _is_literal(v) else nonneg.get(v, False)

    for v, lv, ng in zip(jaxpr.outvars, out_live, out_neg):
        mark(v, lv, ng)
    for eqn in reversed(jaxpr.eqns):
        o_live = any(live.get(v, False) for v in eqn.outvars if not _is_literal(v))
        o_neg = any(neg.get(v, False) for v in eqn.outvars if not _is_literal(v))
        if not o_live:
            continue
        prim = eqn.primitive.name
        inner = _sub_jaxpr(eqn)
        if inner is not None:
            _backward(
                inner,
                [live.get(v, False) for v in eqn.outvars],
                [neg.get(v, False) for v in eqn.outvars],
                nonneg,
                live,
                neg,
                sums,
            )
            for v, iv in zip(eqn.invars, inner.invars):
                mark(v, live.get(iv, False), neg.get(iv, False))
            continue
        ins = eqn.invars
        if prim == "max":
            # max(a, c) with c >= 0 zeroes a's negative entries (ReLU): they get no relevance
            for i, v in enumerate(ins):
                other_nonneg = any(is_nonneg(u) for j, u in enumerate(ins) if j != i)
                mark(v, True, o_neg and not other_nonneg)
        elif prim == "clamp":
            mark(ins[1], True, o_neg and not is_nonneg(ins[0]))
        elif prim in ("mul", "div"):
            a, b = ins
            mark(a, True, o_neg if is_nonneg(b) else True)
            if prim == "mul":
                mark(b, True, o_neg if is_nonneg(a) else True)
            else:
                mark(b, True, True)
        elif prim == "name" and eqn.params.get("name", "").startswith(_ADDSUM):
            sums[eqn.params["name"][len(_ADDSUM) :]] = o_neg
            mark(ins[0], True, o_neg)
        elif prim == "name" and eqn.params.get("name", "").startswith(_ADDEND):
            path = eqn.params["name"][len(_ADDEND) :].rsplit(":", 1)[0]
            mark(ins[0], True, sums.get(path, True))
        elif prim in _STRUCTURAL or prim == "min":
            for v in ins:
                mark(v, True, o_neg)
        else:  # convs, dense layers, sums, anything unknown: negative inputs may get relevance
            for v in ins:
                mark(v, True, True)


def _tag_layers(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not args:
        return next_fun(*args, **kwargs)
    path = "/".join(module.path)
    if getattr(type(module), "relevance_kind", None) == "add":
        y = next_fun(*(checkpoint_name(a, f"{_ADDEND}{path}:{k}") for k, a in enumerate(args)), **kwargs)
        return checkpoint_name(y, _ADDSUM + path)
    if not isinstance(module, (nn.Conv, nn.Dense)):
        return next_fun(*args, **kwargs)
    x = checkpoint_name(args[0], _IN + path)
    y = next_fun(x, *args[1:], **kwargs)
    return checkpoint_name(y, _OUT + path)


def layer_signs(apply_fn: Callable, variables: Any, x: Any) -> dict[str, LayerSigns]:
    """Sign facts of every Conv/Dense layer ``apply_fn(variables, x)`` calls, by module path.

    Args:
      apply_fn: ``apply_fn(variables, x) -> outputs`` (e.g. ``model.apply``).
      variables, x: arrays, tracers or ``jax.ShapeDtypeStruct``s (only shapes are used); the
        model input ``x`` is taken to be of either sign.

    Returns:
      ``{path: LayerSigns}``; a layer called more than once gets the union of its calls'
      facts.
    """
    spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), (variables, x))
    return dict(_layer_signs_cached(apply_fn, spec))


def _analyse(apply_fn, spec) -> tuple[tuple[str, LayerSigns], ...]:
    def f(variables, x):
        with nn.intercept_methods(_tag_layers):
            return apply_fn(variables, x)

    closed = jax.make_jaxpr(f)(*spec)
    jaxpr = closed.jaxpr
    consts_nonneg = [bool(np.all(np.asarray(c) >= 0)) if np.size(c) else True for c in closed.consts]
    nonneg: dict = {}
    _forward(jaxpr, [False] * len(jaxpr.invars), nonneg, consts_nonneg)
    live: dict = {}
    neg: dict = {}
    n_out = len(jaxpr.outvars)
    _backward(jaxpr, [True] * n_out, [False] * n_out, nonneg, live, neg)

    facts: dict[str, list[bool]] = {}
    _collect(jaxpr, nonneg, neg, facts)
    return tuple((p, LayerSigns(*f)) for p, f in facts.items())


def _collect(jaxpr, nonneg: Mapping, neg: Mapping, facts: dict) -> None:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "name":
            tag = eqn.params.get("name", "")
            if tag.startswith(_IN):
                f = facts.setdefault(tag[len(_IN) :], [False, False])
                v = eqn.invars[0]
                f[0] |= not (_literal_nonneg(v) if _is_literal(v) else nonneg.get(v, False))
            elif tag.startswith(_OUT):
                f = facts.setdefault(tag[len(_OUT) :], [False, False])
                f[1] |= bool(neg.get(eqn.outvars[0], False))
        inner = _sub_jaxpr(eqn)
        if inner is not None:
            _collect(inner, nonneg, neg, facts)


@cached("layer_signs", maxsize=64)
def _layer_signs_hashable(apply_fn, spec_leaves, treedef):
    return _analyse(apply_fn, jax.tree_util.tree_unflatten(treedef, spec_leaves))


def _layer_signs_cached(apply_fn, spec):
    leaves, treedef = jax.tree_util.tree_flatten(spec)
    return _layer_signs_hashable(apply_fn, tuple(leaves), treedef)
