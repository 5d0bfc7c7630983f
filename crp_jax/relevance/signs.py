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

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.extend import core as jcore

from crp_jax.compiled import cached, shape_key, shape_tree
from crp_jax.relevance import walk

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


def _literal_nonneg(v) -> bool:
    try:
        return bool(np.all(np.asarray(v.val) >= 0))
    except (TypeError, ValueError):
        return False


def _nonneg_rule(eqn, ins: list[bool]) -> list[bool]:
    """Which outputs of ``eqn`` are provably >= 0, given which operands are."""
    prim = eqn.primitive.name
    n = len(eqn.outvars)
    if prim in _NONNEG_ALWAYS:
        return [True] * n
    if prim == "max":
        return [any(ins)]
    if prim == "clamp":  # clamp(lo, x, hi)
        return [ins[0] or ins[1]]
    if prim == "integer_pow":
        return [ins[0] or eqn.params.get("y", 1) % 2 == 0]
    if prim == "select_n":  # the predicate is operand 0
        return [all(ins[1:])]
    if prim in ("gather", "dynamic_slice", "dynamic_update_slice", "pad"):
        # data operands: gather/dynamic_slice read operand 0; pad's operand 1 is its value
        return [ins[0] and (prim != "pad" or ins[1])]
    if prim in _STRUCTURAL or prim in _SUMS or prim in _PRODUCTS:
        return [all(ins)] * n
    return [False] * n


def _forward(jaxpr, consts_nonneg: list[bool], in_nonneg: list[bool], nonneg: dict, facts: dict) -> list[bool]:
    """Fill ``nonneg[var]`` (provably >= 0) for every var of ``jaxpr``, and each tagged layer's
    ``input_signed`` in ``facts``."""

    def step(index, eqn, ins):
        body = walk.call_body(eqn)
        if body is not None:
            return _forward(body[0], [False] * len(body[0].constvars), ins, nonneg, facts)
        tag = eqn.params.get("name", "") if eqn.primitive.name == "name" else ""
        if tag.startswith(_IN):
            facts.setdefault(tag[len(_IN) :], [False, False])[0] |= not ins[0]
        return _nonneg_rule(eqn, ins)

    return walk.forward(jaxpr, consts_nonneg, in_nonneg, step, literal=_literal_nonneg, env=nonneg)


def _backward(jaxpr, out_neg: list[bool | None], nonneg: dict, facts: dict, sums: dict) -> list[bool | None]:
    """What reaches each input of ``jaxpr``: None when no relevance does, else whether relevance
    may reach its negative entries. Fills each tagged layer's ``output_signed`` in ``facts``;
    ``sums``: kind-"add" module path -> whether its sum's negative entries get relevance."""

    def is_nonneg(v) -> bool:
        return _literal_nonneg(v) if isinstance(v, jcore.Literal) else nonneg.get(v, False)

    def step(index, eqn, outs):
        body = walk.call_body(eqn)
        if body is not None:
            return _backward(body[0], outs, nonneg, facts, sums)
        o_neg = any(bool(o) for o in outs)
        prim, ins = eqn.primitive.name, eqn.invars
        tag = eqn.params.get("name", "") if prim == "name" else ""
        if prim == "max":
            # max(a, c) with c >= 0 zeroes a's negative entries (ReLU): they get no relevance
            return [o_neg and not any(is_nonneg(u) for j, u in enumerate(ins) if j != k) for k in range(len(ins))]
        if prim == "clamp":
            return [None, o_neg and not is_nonneg(ins[0]), None]
        if prim in ("mul", "div"):
            a, b = ins
            return [o_neg if is_nonneg(b) else True, (o_neg if is_nonneg(a) else True) if prim == "mul" else True]
        if tag.startswith(_OUT):
            facts.setdefault(tag[len(_OUT) :], [False, False])[1] |= o_neg
            return [o_neg]
        if tag.startswith(_ADDSUM):
            sums[tag[len(_ADDSUM) :]] = o_neg
            return [o_neg]
        if tag.startswith(_ADDEND):
            return [sums.get(tag[len(_ADDEND) :].rsplit(":", 1)[0], True)]
        if prim in _STRUCTURAL or prim == "min":
            return [o_neg] * len(ins)
        return [True] * len(ins)  # convs, dense layers, sums, anything unknown

    return walk.backward(jaxpr, out_neg, step, operator.or_)


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
    facts: dict[str, list[bool]] = {}
    _forward(jaxpr, consts_nonneg, [False] * len(jaxpr.invars), nonneg, facts)
    _backward(jaxpr, [False] * len(jaxpr.outvars), nonneg, facts, {})
    return tuple((p, LayerSigns(*f)) for p, f in facts.items())


@cached("layer_signs", maxsize=64)
def _layer_signs_hashable(apply_fn, key):
    return _analyse(apply_fn, shape_tree(key))


def _layer_signs_cached(apply_fn, spec):
    return _layer_signs_hashable(apply_fn, shape_key(spec))
