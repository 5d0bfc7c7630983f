"""Small helpers shared by the three jaxpr walkers of the engine (sign facts:
:mod:`crp_jax.relevance.signs`; receptive-field cones: :mod:`crp_jax.relevance.cones`; the
windowed backward: :mod:`crp_jax.relevance.windowed`)."""

from __future__ import annotations

from jax.extend import core as jcore


def call_body(eqn) -> tuple[jcore.Jaxpr, tuple] | None:
    """``(open jaxpr, consts)`` of a call-like equation (``pjit``, ``custom_jvp_call``,
    ``custom_vjp_call``, ``remat``, ``closed_call``...) whose inputs and outputs map one to one
    onto the equation's, so a walker can step into it; None for any other equation."""
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
