"""Linear layers as (apply, transpose) pairs, the substrate every rule is written on.

A rule's backward is a sum of *transposed* linear maps of the (rescaled) relevance. On XLA
CPU the transposed convolution that autodiff emits is slow inside loops (docs/design.md §6), so
:meth:`ConvOp.transpose` is written as an ordinary forward convolution (NHWC x HWIO, stride 1,
input dilation for strided layers) on a kernel that :meth:`ConvOp.transpose_kernel` flips and
transposes once, in the forward pass, outside the per-target work.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from crp_jax.errors import ConfigError

_DN = ("NHWC", "HWIO", "NHWC")


@dataclass(frozen=True)
class ConvOp:
    """2-D convolution without bias: ``[N, H, W, Cin] x [kh, kw, Cin, Cout] -> [N, H', W', Cout]``.

    ``padding`` is explicit ``((top, bottom), (left, right))``.
    """

    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    dilation: tuple[int, int] = (1, 1)

    def apply(self, x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            x, w, self.strides, self.padding, rhs_dilation=self.dilation, dimension_numbers=_DN
        )

    @staticmethod
    def transpose_kernel(w: jax.Array) -> jax.Array:
        """``[kh, kw, Cin, Cout] -> [kh, kw, Cout, Cin]``, spatially flipped."""
        return jnp.swapaxes(w[::-1, ::-1], 2, 3)

    def transpose(self, s: jax.Array, wt: jax.Array, in_hw: tuple[int, int]) -> jax.Array:
        """Adjoint of :meth:`apply` in ``x``: ``[N, H', W', Cout] -> [N, H, W, Cin]`` using the
        pre-transposed kernel ``wt`` (from :meth:`transpose_kernel`)."""
        pads = []
        for n, m, k, st, d, (lo, _hi) in zip(
            in_hw, s.shape[1:3], wt.shape[:2], self.strides, self.dilation, self.padding
        ):
            ke = d * (k - 1) + 1  # effective (dilated) kernel extent
            left = ke - 1 - lo
            # the right pad makes the output exactly n long (rows the forward never read get 0)
            right = n + lo - (m - 1) * st - 1
            pads.append((left, right))
        return lax.conv_general_dilated(
            s, wt, (1, 1), pads, lhs_dilation=self.strides, rhs_dilation=self.dilation, dimension_numbers=_DN
        )


@dataclass(frozen=True)
class DenseOp:
    """Dense layer without bias: ``[..., Cin] x [Cin, Cout] -> [..., Cout]``."""

    def apply(self, x: jax.Array, w: jax.Array) -> jax.Array:
        return x @ w

    @staticmethod
    def transpose_kernel(w: jax.Array) -> jax.Array:
        return w.T

    def transpose(self, s: jax.Array, wt: jax.Array, in_hw=None) -> jax.Array:
        return s @ wt


def conv_op_from_module(module) -> ConvOp:
    """The :class:`ConvOp` of a ``flax.linen.Conv`` (2-D, explicit or SAME/VALID padding)."""
    ks = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)
    if len(ks) != 2:
        raise ConfigError(f"only 2-D convolutions are supported, got kernel_size {ks} at {module.path}")
    if getattr(module, "feature_group_count", 1) != 1 or getattr(module, "input_dilation", 1) not in (1, None, (1, 1)):
        raise ConfigError(f"grouped or input-dilated convolutions are not supported ({module.path})")
    strides = _pair(module.strides)
    dilation = _pair(module.kernel_dilation)
    pad = module.padding
    if isinstance(pad, str):
        if pad.upper() == "VALID":
            padding = ((0, 0), (0, 0))
        elif pad.upper() == "SAME" and strides == (1, 1):
            padding = tuple(_same_pad(k, d) for k, d in zip(ks, dilation))
        else:
            raise ConfigError(
                f"padding {pad!r} with strides {strides} at {module.path} is not supported; use explicit padding"
            )
    elif isinstance(pad, int):
        padding = ((pad, pad), (pad, pad))
    else:
        padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in pad)
    return ConvOp(strides=strides, padding=padding, dilation=dilation)


def _pair(v) -> tuple[int, int]:
    if v is None:
        return (1, 1)
    if isinstance(v, int):
        return (v, v)
    return tuple(int(a) for a in v)


def _same_pad(k: int, d: int) -> tuple[int, int]:
    total = d * (k - 1)
    return (total // 2, total - total // 2)
