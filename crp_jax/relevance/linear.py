"""Linear layers as (apply, transpose) pairs, the substrate every rule is written on.

A rule's backward is a sum of *transposed* linear maps of the (rescaled) relevance. On XLA
CPU the transposed convolution that autodiff emits is slow inside loops (docs/design.md §6), so
:meth:`ConvOp.transpose` is written as an ordinary forward convolution (NHWC x HWIO, stride 1,
input dilation for strided layers) on a kernel that :meth:`ConvOp.transpose_kernel` flips and
transposes once, in the forward pass, outside the per-target work.

Grouped (and depthwise) convolutions, ``feature_group_count = G``: input and output channels
are split into G contiguous blocks and block g of the output reads block g of the input
only; the kernel is ``[kh, kw, Cin / G, Cout]``. Its adjoint is again a grouped convolution,
whose kernel :meth:`ConvOp.transpose_kernel` builds block by block. Rules that stack several
kernels (w+ and w-, or w and the z^B bound kernel) must stack them *within* each group, so
that the stacked kernel is still a valid grouped kernel: :meth:`ConvOp.concat_out`,
:meth:`ConvOp.split_out` (output channels) and :meth:`ConvOp.concat_in` /
:meth:`ConvOp.split_in` (input channels) do that, and are plain concatenations when G = 1.
Groups of one or two channels (depthwise convs and their stacked rule kernels) are computed
tap by tap (:mod:`crp_jax.grouped_conv`): XLA's CPU backend is slow on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from crp_jax.errors import ConfigError
from crp_jax.grouped_conv import conv_general_dilated  # lax's, tap by tap for depthwise-like groups

_DN = ("NHWC", "HWIO", "NHWC")


@dataclass(frozen=True)
class ConvOp:
    """2-D convolution without bias: ``[N, H, W, Cin] x [kh, kw, Cin, Cout] -> [N, H', W', Cout]``.

    ``padding`` is explicit ``((top, bottom), (left, right))``; ``groups`` is flax's
    ``feature_group_count`` (the kernel is then ``[kh, kw, Cin / groups, Cout]``).
    """

    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def apply(self, x: jax.Array, w: jax.Array) -> jax.Array:
        return conv_general_dilated(
            x,
            w,
            self.strides,
            self.padding,
            rhs_dilation=self.dilation,
            dimension_numbers=_DN,
            feature_group_count=self.groups,
        )

    def transpose_kernel(self, w: jax.Array) -> jax.Array:
        """``[kh, kw, Cin/G, Cout] -> [kh, kw, Cout/G, Cin]``, spatially flipped; for G = 1
        the plain swap of the channel axes."""
        g = self.groups
        kh, kw, ci, co = w.shape
        # Block g of the adjoint maps output block g back to input block g.
        wg = w.reshape(kh, kw, ci, g, co // g)
        wt = jnp.transpose(wg, (0, 1, 4, 3, 2)).reshape(kh, kw, co // g, g * ci)
        return wt[::-1, ::-1]

    def concat_out(self, arrays) -> jax.Array:
        """Concatenate along the last (output-channel) axis within each group:
        ``[..., C_k]`` each -> ``[..., sum C_k]`` ordered (group, array, channel)."""
        g = self.groups
        if g == 1:
            return jnp.concatenate(arrays, axis=-1)
        parts = [a.reshape(*a.shape[:-1], g, a.shape[-1] // g) for a in arrays]
        out = jnp.concatenate(parts, axis=-1)
        return out.reshape(*out.shape[:-2], -1)

    def split_out(self, z: jax.Array, n: int) -> tuple[jax.Array, ...]:
        """Inverse of :meth:`concat_out` for ``n`` arrays of equal width."""
        g = self.groups
        zg = z.reshape(*z.shape[:-1], g, n, z.shape[-1] // (g * n))
        return tuple(zg[..., k, :].reshape(*z.shape[:-1], -1) for k in range(n))

    def concat_in(self, kernels) -> jax.Array:
        """Stack kernels along their (group-local) input axis: ``[kh, kw, Cin/G, Cout]`` each
        -> ``[kh, kw, n Cin/G, Cout]``, a grouped kernel reading ``n`` inputs per group."""
        return jnp.concatenate(kernels, axis=-2)

    def split_in(self, t: jax.Array, n: int) -> tuple[jax.Array, ...]:
        """Split the adjoint's output of a :meth:`concat_in` kernel, ``[..., n Cin]``
        ordered (group, input, channel), into ``n`` arrays ``[..., Cin]``."""
        return self.split_out(t, n)

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
        return conv_general_dilated(
            s,
            wt,
            (1, 1),
            pads,
            lhs_dilation=self.strides,
            rhs_dilation=self.dilation,
            dimension_numbers=_DN,
            feature_group_count=self.groups,
        )


@dataclass(frozen=True)
class DenseOp:
    """Dense layer without bias: ``[..., Cin] x [Cin, Cout] -> [..., Cout]``."""

    groups = 1

    def apply(self, x: jax.Array, w: jax.Array) -> jax.Array:
        return x @ w

    @staticmethod
    def transpose_kernel(w: jax.Array) -> jax.Array:
        return w.T

    def transpose(self, s: jax.Array, wt: jax.Array, in_hw=None) -> jax.Array:
        return s @ wt

    concat_out = ConvOp.concat_out
    split_out = ConvOp.split_out
    concat_in = ConvOp.concat_in
    split_in = ConvOp.split_in


def conv_op_from_module(module) -> ConvOp:
    """The :class:`ConvOp` of a ``flax.linen.Conv`` (2-D, explicit or SAME/VALID padding)."""
    ks = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)
    if len(ks) != 2:
        raise ConfigError(f"only 2-D convolutions are supported, got kernel_size {ks} at {module.path}")
    if getattr(module, "input_dilation", 1) not in (1, None, (1, 1)):
        raise ConfigError(f"input-dilated convolutions are not supported ({module.path})")
    groups = int(getattr(module, "feature_group_count", 1))
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
    return ConvOp(strides=strides, padding=padding, dilation=dilation, groups=groups)


def _pair(v) -> tuple[int, int]:
    if v is None:
        return (1, 1)
    if isinstance(v, int):
        return (v, v)
    return tuple(int(a) for a in v)


def _same_pad(k: int, d: int) -> tuple[int, int]:
    total = d * (k - 1)
    return (total // 2, total - total // 2)
