"""``relevance_vjp``: relevance propagation as a vector-Jacobian product (docs/design.md §2-3).

Every rule is linear in the relevance once the forward pass is fixed, so propagating
relevance is a VJP whose cotangent *is* the relevance. ``relevance_vjp`` mirrors
``jax.vjp``: it runs the forward once under a composite and returns the outputs and a
function from initial relevance (shaped like the outputs) to relevance at the input.
It works under ``jax.jit`` and ``jax.vmap`` (over initial relevances or images).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from crp_jax.relevance.composite import Composite, get_composite
from crp_jax.relevance.signs import layer_signs


def relevance_vjp(
    apply_fn: Callable,
    variables: Any,
    x: jax.Array,
    composite: Composite | str,
    *,
    meta=None,
    layers: bool = False,
):
    """Forward pass under ``composite``; returns ``(outputs, explain_fn)``.

    Args:
      apply_fn: ``apply_fn(variables, x) -> outputs`` (e.g. ``model.apply``).
      variables: the model's variables.
      x: the input, e.g. ``[B, H, W, 3]`` NHWC.
      composite: a :class:`Composite` or a preset name ("crp", "lrp_ab", ...).
      meta: needed by presets whose input layer uses z^B (pixel bounds).
      layers: if True, ``explain_fn`` also returns the relevance at the output of every
        Conv/Dense/L2Norm layer as a dict ``path -> array`` (per-layer relevance flow).

    Returns:
      ``outputs`` as ``apply_fn`` returns them, and ``explain_fn(initial_relevance)`` (a
      ``jax.tree_util.Partial``, so it can be returned from ``jax.jit`` like jax.vjp's):
      ``initial_relevance`` is a pytree shaped like ``outputs``; the result is relevance
      shaped like ``x`` (and the per-layer dict when ``layers=True``).
    """
    comp = get_composite(composite, meta)
    outputs, vjp_fn = linearize(apply_fn, variables, x, comp, layers=layers)
    # A Partial (pytree of residuals), like jax.vjp's function: it can leave a jit.
    explain_fn = Partial(functools.partial(_explain, comp=comp, layers=layers), vjp_fn, x)
    return outputs, explain_fn


def _explain(vjp_fn, x, initial_relevance, *, comp, layers):
    return finish(comp, vjp_fn(initial_relevance), x, layers)


def linearize(apply_fn, variables, x, comp: Composite, layers: bool = False):
    """``(outputs, vjp_fn)`` with ``vjp_fn`` a ``jax.tree_util.Partial`` (a pytree of
    residuals), so it can be returned from one ``jit`` and passed into another."""
    # which linear layers see negative inputs or pass relevance to negative outputs: read
    # from the graph, once per model and shapes (signs.py)
    signs = layer_signs(apply_fn, variables, x) if comp.needs_signs() else None
    if not layers:

        def f(x):
            with comp.intercept(model_input=x, signs=signs):
                return apply_fn(variables, x)

        return jax.vjp(f, x)

    shapes: dict = {}

    def record(x):
        with comp.intercept(record=shapes, model_input=x, signs=signs):
            return apply_fn(variables, x)

    jax.eval_shape(record, x)
    probes = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

    def g(x, probes):
        with comp.intercept(probes=probes, model_input=x, signs=signs):
            return apply_fn(variables, x)

    return jax.vjp(g, x, probes)


def finish(comp: Composite, cotangents, x, layers: bool):
    """Turn the raw VJP cotangents into input relevance (and per-layer relevance)."""
    if layers:
        rx, per_layer = cotangents
    else:
        (rx,) = cotangents
    if comp.times_input:
        rx = rx * x
    return (rx, per_layer) if layers else rx
