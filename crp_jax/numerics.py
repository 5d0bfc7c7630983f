"""Where a forward pass stops being finite, for any Flax model.

The problem: weights that load fine (every array finite) can still make the forward pass
overflow float32, e.g. kernels scaled by 1e30 give 1e30 after conv1_1, Inf after conv1_2 and
NaN (Inf - Inf) soon after. What comes out is all NaN: ``detect`` would report "0
detections" and every relevance map would be NaN, with nothing pointing at the cause.

The cost: callers check only the final outputs for finiteness (one reduction inside their
own jitted function). Only when that check fails do they call :func:`first_nonfinite_layer`,
which runs the forward once more under ``flax.linen.intercept_methods``, records how many
values of every module method's output are NaN/Inf, and returns the first one in the order
the calls *finished*: a parent module finishes after its children, so the first finished
non-finite output is the innermost, earliest layer where the overflow happened.

Nothing here knows a detector: it works for any ``flax.linen`` module (or any function
``apply_fn(variables, x)`` that calls Flax modules). It imports nothing from
``crp_jax.ssd`` or ``crp_jax.relevance``, so both may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.errors import ConfigError, NumericsError

#: Path reported when the input itself holds NaN/Inf.
INPUT_PATH = "<input>"
#: Path reported when every recorded module output is finite but the function's result is
#: not (the overflow happened in plain jnp code outside any module method).
OUTPUT_PATH = "<output>"


class NonFiniteLayer(NamedTuple):
    """The first module output of a forward pass that holds NaN or Inf.

    Attributes:
      path: the module's path joined with ``/`` (``"conv1_2"``, ``"backbone/block3/conv"``);
        ``ClassName`` for the root module; ``path.method`` for a method other than
        ``__call__``; :data:`INPUT_PATH` or :data:`OUTPUT_PATH` (see there).
      count: how many values of that output are NaN or Inf.
    """

    path: str
    count: int


def nonfinite_counts(a) -> tuple[int, int]:
    """``(number of NaN, number of +-Inf)`` in an array of any shape (0, 0 for integer and
    boolean arrays, which cannot hold either)."""
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.inexact):
        return 0, 0
    nan = int(np.count_nonzero(np.isnan(arr)))
    inf = int(np.count_nonzero(np.isinf(arr)))
    return nan, inf


def _count_tree(tree) -> jax.Array:
    """Number of NaN/Inf values over the inexact array leaves of a pytree (int32 scalar)."""
    total = jnp.zeros((), jnp.int32)
    for leaf in jax.tree_util.tree_leaves(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.inexact):
            total = total + jnp.sum(~jnp.isfinite(leaf), dtype=jnp.int32)
    return total


def _module_label(context) -> str:
    module = context.module
    path = "/".join(str(p) for p in getattr(module, "path", ()) or ())
    label = path or type(module).__name__
    if context.method_name != "__call__":
        label = f"{label}.{context.method_name}"
    return label


def first_nonfinite_layer(
    apply_fn_or_model: nn.Module | Callable[..., Any],
    variables: Mapping,
    x,
    **apply_kwargs,
) -> NonFiniteLayer | None:
    """The first module whose output holds NaN or Inf when ``x`` is run forward, or ``None``.

    Args:
      apply_fn_or_model: a ``flax.linen.Module`` (its ``.apply`` is used) or a function
        ``apply_fn(variables, x, **apply_kwargs)`` that calls Flax modules. Pass it
        un-jitted: a ``jax.jit``-compiled function that was already traced for these shapes
        would not run its modules again, so nothing could be recorded.
      variables: the model's variables.
      x: the input, e.g. ``[B, H, W, C]``; any array or pytree the function takes.
      **apply_kwargs: passed on to the apply function.

    Returns:
      ``NonFiniteLayer(path, count)`` for the first module method call (in the order the
      calls finished, i.e. forward order, innermost first) whose output holds NaN/Inf;
      ``(INPUT_PATH, count)`` if ``x`` itself does; ``(OUTPUT_PATH, count)`` if every module
      output is finite but the function's result is not; ``None`` if everything is finite.

    It runs one extra jitted forward pass (compiled afresh: this is the slow path, for after
    a cheap finiteness check of the outputs has failed).
    """
    apply_fn = apply_fn_or_model.apply if isinstance(apply_fn_or_model, nn.Module) else apply_fn_or_model
    if not callable(apply_fn):
        raise ConfigError(f"first_nonfinite_layer needs a flax Module or an apply function, got {apply_fn!r}")
    # Both filled while tracing, in the order the calls finish: the jitted function returns
    # the counts, the labels stay here.
    labels: list[str] = []
    counts: list[jax.Array] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "setup":
            labels.append(_module_label(context))
            counts.append(_count_tree(out))
        return out

    def probe(variables, x):
        counts.clear()
        labels.clear()
        with nn.intercept_methods(interceptor):
            out = apply_fn(variables, x, **apply_kwargs)
        return _count_tree(x), jnp.stack(counts) if counts else jnp.zeros((0,), jnp.int32), _count_tree(out)

    n_in, per_call, n_out = jax.device_get(jax.jit(probe)(variables, x))
    if int(n_in):
        return NonFiniteLayer(INPUT_PATH, int(n_in))
    for label, n in zip(labels, np.asarray(per_call).tolist()):
        if n:
            return NonFiniteLayer(label, int(n))
    if int(n_out):
        return NonFiniteLayer(OUTPUT_PATH, int(n_out))
    return None


def nonfinite_forward_message(layer: NonFiniteLayer, where: str | None = None) -> str:
    """The one-line explanation of a :class:`NonFiniteLayer` used in :class:`NumericsError`."""
    prefix = f"{where}: " if where else ""
    if layer.path == INPUT_PATH:
        return f"{prefix}the input holds {layer.count} NaN/Inf values"
    if layer.path == OUTPUT_PATH:
        return (
            f"{prefix}the forward pass is not finite: every layer output is finite but the result "
            f"holds {layer.count} NaN/Inf values"
        )
    return (
        f"{prefix}the forward pass is not finite: the first layer whose output holds NaN/Inf is "
        f"{layer.path} ({layer.count} values); its weights (or those before it) make float32 "
        "overflow"
    )


def check_finite_forward(
    apply_fn_or_model: nn.Module | Callable[..., Any],
    variables: Mapping,
    x,
    *,
    where: str | None = None,
    **apply_kwargs,
) -> None:
    """Raise :class:`NumericsError` naming the first non-finite layer of the forward pass
    of ``x`` (see :func:`first_nonfinite_layer`); return ``None`` when all of it is finite.

    Meant for the slow path, after a cheap check of a caller's outputs found NaN/Inf.
    ``where`` (e.g. ``"image 3"``) prefixes the message.
    """
    layer = first_nonfinite_layer(apply_fn_or_model, variables, x, **apply_kwargs)
    if layer is not None:
        raise NumericsError(nonfinite_forward_message(layer, where))
