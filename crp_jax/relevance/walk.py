"""The one jaxpr walker of the engine: how a jaxpr's equations are visited and how a rule is
found for each primitive. Three analyses stand on it: sign facts (:mod:`~crp_jax.relevance.signs`,
a forward and a backward walk over flags), receptive-field cones
(:mod:`~crp_jax.relevance.cones`, a backward walk over intervals) and the windowed backward
(:mod:`~crp_jax.relevance.windowed`, a forward walk over arrays).

- :func:`forward` visits equations in program order; ``step(index, eqn, ins) -> outs``;
- :func:`backward` visits them in reverse; ``step(index, eqn, outs) -> ins``, and what reaches
  a value from several consumers is combined with ``union``;
- a walker steps into call equations (``pjit``, ``custom_jvp_call`` ...) itself, through
  :func:`call_body`, because each decides whether a call is worth entering;
- :class:`Rules` finds the rule of a primitive by name: ``rule_<primitive>``, else
  :meth:`Rules.elementwise` for :data:`ELEMENTWISE`, else :meth:`Rules.fallback`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jax.extend import core as jcore

# Primitives that act entry by entry (operands of one shape, or broadcast scalars).
ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp complex conj
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
    floor ge gt igamma igammac imag integer_pow is_finite le lgamma log log1p logistic lt max
    min mul ne neg nextafter not or population_count pow real reduce_precision rem round rsqrt
    select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square
    stop_gradient sub tan tanh xor""".split()
)


def is_var(v: Any) -> bool:
    """Whether ``v`` is a jaxpr variable (not a literal, not a dropped output)."""
    return isinstance(v, jcore.Var) and not isinstance(v, jcore.DropVar)


# Primitives that call a jaxpr once, operands and results one to one (not loops: a scan's
# or while's body also has a "jaxpr" parameter, but runs many times).
CALLS = frozenset(
    "jit pjit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr remat checkpoint".split()
)


def call_body(eqn: jcore.JaxprEqn) -> tuple[jcore.Jaxpr, tuple] | None:
    """``(open jaxpr, consts)`` of a call equation (:data:`CALLS`) whose inputs and outputs map
    one to one onto the equation's, so a walker can step into it; None for any other equation."""
    if eqn.primitive.name not in CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is None:
            continue
        inner, consts = (j.jaxpr, tuple(j.consts)) if isinstance(j, jcore.ClosedJaxpr) else (j, ())
        if (
            isinstance(inner, jcore.Jaxpr)
            and len(inner.invars) == len(eqn.invars)
            and len(inner.outvars) == len(eqn.outvars)
        ):
            return inner, consts
    return None


def forward(
    jaxpr: jcore.Jaxpr,
    consts: Sequence[Any],
    args: Sequence[Any],
    step: Callable[[int, jcore.JaxprEqn, list], Sequence[Any]],
    *,
    literal: Callable[[jcore.Literal], Any] = lambda v: v.val,
    env: dict | None = None,
) -> list:
    """Walk ``jaxpr`` in program order and return the values of its outputs.

    Args:
      jaxpr: an open jaxpr.
      consts, args: values of its ``constvars`` and ``invars``.
      step: ``step(index, eqn, ins) -> outs``, one value per ``eqn.outvars``.
      literal: the value of a literal operand.
      env: the var -> value table to fill (pass one to read values after the walk, e.g.
        across nested calls); a fresh one by default.
    """
    env = {} if env is None else env

    def read(v):
        return literal(v) if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for i, eqn in enumerate(jaxpr.eqns):
        outs = step(i, eqn, [read(v) for v in eqn.invars])
        for var, o in zip(eqn.outvars, outs):
            if not isinstance(var, jcore.DropVar):
                env[var] = o
    return [read(v) for v in jaxpr.outvars]


def backward(
    jaxpr: jcore.Jaxpr,
    outs: Sequence[Any],
    step: Callable[[int, jcore.JaxprEqn, list], Sequence[Any]],
    union: Callable[[Any, Any], Any],
) -> list:
    """Walk ``jaxpr`` from its outputs back to its inputs; return what reaches each input.

    Args:
      jaxpr: an open jaxpr.
      outs: one value per ``jaxpr.outvars`` (None: nothing).
      step: ``step(index, eqn, outs) -> ins``: given what reached the equation's outputs
        (None where nothing did), what reaches each of its operands (None: nothing). Not
        called for an equation none of whose outputs was reached.
      union: combines two values that reach one variable.

    Returns:
      One value per ``jaxpr.invars`` (None where nothing reached it). A value is released as
      soon as its defining equation has been visited, so memory stays at the live frontier.
    """
    table: dict = {}

    def add(v, x):
        if is_var(v) and x is not None:
            table[v] = x if v not in table else union(table[v], x)

    for v, x in zip(jaxpr.outvars, outs):
        add(v, x)
    for i in reversed(range(len(jaxpr.eqns))):
        eqn = jaxpr.eqns[i]
        reached = [table.pop(o, None) if is_var(o) else None for o in eqn.outvars]
        if all(x is None for x in reached):
            continue
        for v, x in zip(eqn.invars, step(i, eqn, reached)):
            add(v, x)
    return [table.get(v) if is_var(v) else None for v in jaxpr.invars]


class Rules:
    """Per-primitive rules found by name. A subclass defines ``rule_<primitive>`` methods
    (``rule_reduce_window_max = rule_reduce_window_sum = ...`` shares one rule among
    several), :meth:`elementwise` for :data:`ELEMENTWISE` and :meth:`fallback` for the rest;
    every rule takes the arguments given to :meth:`apply`."""

    def rule(self, name: str) -> Callable:
        """The rule of primitive ``name``."""
        found = getattr(self, "rule_" + name, None)
        if found is not None:
            return found
        return self.elementwise if name in ELEMENTWISE else self.fallback

    def apply(self, eqn: jcore.JaxprEqn, *args: Any) -> Any:
        return self.rule(eqn.primitive.name)(eqn, *args)

    def elementwise(self, eqn: jcore.JaxprEqn, *args: Any) -> Any:
        return self.fallback(eqn, *args)

    def fallback(self, eqn: jcore.JaxprEqn, *args: Any) -> Any:
        raise NotImplementedError(eqn.primitive.name)


def reshape_groups(old: Sequence[int], new: Sequence[int]) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """How a row-major reshape ``old -> new`` regroups axes: pairs of index ranges
    ``((i0, i1), (j0, j1))``, in order, whose sizes have equal products (the axes ``old[i0:i1]``
    become ``new[j0:j1]``), or None when the shapes do not split into such groups."""
    groups, i, j = [], 0, 0
    while i < len(old) or j < len(new):
        i0, j0 = i, j
        p, q = 1, 1
        if i < len(old):
            p *= old[i]
            i += 1
        if j < len(new):
            q *= new[j]
            j += 1
        while p != q:
            if p < q and i < len(old):
                p *= old[i]
                i += 1
            elif q < p and j < len(new):
                q *= new[j]
                j += 1
            else:
                return None
        groups.append(((i0, i), (j0, j)))
    return groups
