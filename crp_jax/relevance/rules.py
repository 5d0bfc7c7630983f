"""LRP/CRP rules as ``jax.custom_vjp`` functions of a layer's inputs and parameters.

Each rule's forward is the ordinary layer; its backward maps the cotangent - *the relevance*
``R`` at the layer output - to relevance at the input (docs/design.md §2). For a linear layer
``z_j = sum_i x_i w_ij + b_j``:

=============  =====================================================================  ======
rule           R_i =                                                                  bias
=============  =====================================================================  ======
Epsilon        sum_j x_i w_ij / stab(z_j, eps) R_j                                    kept
WPlus          sum_j x_i w+_ij / stab(z+_j, eps) R_j,  z+_j = sum_i x_i w+_ij         no
 contributions sum_j (x_i w_ij)^+ / stab(z+_j) R_j,  z+_j = sum_i (x_i w_ij)^+        no
AlphaBeta      sum_j (alpha x_i w+_ij / stab(z+_j) - beta x_i w-_ij / stab(z-_j)) R_j  no
 contributions same with (x_i w_ij)^+ and (x_i w_ij)^- for x_i w+_ij and x_i w-_ij     no
SignedWPlus    sum_j (x_i w_ij)^{s_j} / stab(z^{s_j}_j) R_j, s_j = sign(z_j + b_j):       no
               contributions of the sign of the unit's output
ZBox           sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / stab(z^B_j) R_j             no
Flat           sum_j 1 / stab(sum_i' 1) R_j  (all weights and inputs set to 1)        no
WSquare        sum_j w_ij^2 / stab(sum_i' w_i'j^2) R_j                                no
PassThrough    R_in = R_out for the first argument (L2Norm, hardswish, SE's x * g)     -
Proportional   y = sum_k z_k (a residual add): R_k = z_k^s / stab(sum_l z_l^s) R_y,     -
               s = sign(y): the addends of y's sign (``by_sign=False``: z_k / stab(y))
=============  =====================================================================  ======

``w+ = max(w, 0)``, ``w- = min(w, 0)``, ``stab(z, eps) = z + eps * sign(z)`` with
``sign(0) = +1``, so ``|stab(z, eps)| >= eps > 0`` and no rule ever divides by zero: every
rule's stabiliser is an explicit, documented field (a float >= ``MIN_STABILIZER`` = 1e-20,
so that its reciprocal stays finite in float32). WPlus and AlphaBeta as written take
``x`` as it is (DESIGN's formula), the classic rule for the non-negative inputs that follow
a ReLU. Where inputs can be negative (after hardswish, or a linear bottleneck),
``x_i w+_ij`` is no longer >= 0, ``z+_j`` can cancel to ~0 and relevance blows up by
1/stabiliser; ``contributions=True`` splits by the sign of each product ``x_i w_ij``
instead (``(a)^+ = max(a, 0)``, ``(a)^- = min(a, 0)``), which keeps every share in [0, 1]:
``sum_i |R_i| <= sum_j |R_j|`` for WPlus, ``<= (alpha + beta) sum_j |R_j|`` for AlphaBeta.
Where relevance reaches negative outputs, :class:`SignedWPlus` splits each unit over the
contributions of its own sign.

Which form a layer needs is a fact of the graph: under a composite (``Composite.sign_aware``,
on by default) every linear rule is replaced by ``rule.specialize(signs)`` with the layer's
sign facts read from the model's jaxpr (``crp_jax/relevance/signs.py``): WPlus becomes its
contribution form where the input can be negative and SignedWPlus where relevance reaches
negative outputs; AlphaBeta takes its contribution form for signed inputs. For x >= 0 the
forms are equal, and the cheaper one is kept.

Grouped and depthwise convolutions (``feature_group_count``) work with every linear rule
(``ConvOp.groups``, ``linear.py``).

Everything per image (modified kernels, their flipped transposes, the reciprocal
denominators) is computed in the forward pass and kept as residuals, so the per-target
backward is one forward-style convolution plus elementwise work (see ``linear.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crp_jax.errors import ConfigError


def stabilize(z: jax.Array, eps: float) -> jax.Array:
    """``z + eps * sign(z)`` with ``sign(0) = +1``: same sign as ``z``, magnitude >= eps."""
    return z + jnp.where(z >= 0, eps, -eps).astype(z.dtype)


# Smallest stabiliser accepted: 1 / MIN_STABILIZER must stay far from float32 overflow.
MIN_STABILIZER = 1e-20


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def _check_stabilizer(name: str, value: float) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not (ok and MIN_STABILIZER <= float(value) < float("inf")):
        raise ConfigError(f"{name} must be a finite float >= {MIN_STABILIZER:g}, got {value!r}")


class Rule:
    """Base class. ``apply(module, next_fun, args, kwargs)`` runs the layer under the rule.

    Rules are frozen dataclasses; their fields are validated here, once for all rules: a
    field named ``stabilizer`` or ``epsilon`` must be a finite float >= ``MIN_STABILIZER``,
    a field annotated ``bool`` must be True or False. A rule with more to check extends
    ``__post_init__`` and calls this one first.
    """

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("stabilizer", "epsilon"):
                _check_stabilizer(f"{type(self).__name__}.{f.name}", value)
            elif f.type in ("bool", bool):
                _check_flag(f"{type(self).__name__}.{f.name}", value)

    def apply(self, module, next_fun: Callable, args: tuple, kwargs: dict):  # pragma: no cover
        raise NotImplementedError


class LinearRule(Rule):
    """A rule for a linear layer, defined by what it keeps from the forward pass
    (:meth:`residuals`) and how it maps relevance back (:meth:`backward`)."""

    def __call__(self, op, x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
        """Apply the layer ``op`` (a ConvOp/DenseOp) with this rule's backward."""
        if b is None:
            b = jnp.zeros((w.shape[-1],), x.dtype)
        return _rule_vjp(self, op, x.shape)(x, w, b)

    def apply(self, module, next_fun, args, kwargs):
        import flax.linen as nn

        from crp_jax.relevance.linear import DenseOp, conv_op_from_module

        if isinstance(module, nn.Conv):
            op = conv_op_from_module(module)
        elif isinstance(module, nn.Dense):
            op = DenseOp()
        else:
            raise ConfigError(
                f"rule {type(self).__name__} is for Conv/Dense layers, but {'/'.join(module.path)} "
                f"is a {type(module).__name__}"
            )
        params = module.variables["params"]
        return self(op, args[0], params["kernel"], params.get("bias"))

    def specialize(self, signs) -> LinearRule:
        """This rule in the form for a layer with the sign facts ``signs`` (a
        ``crp_jax.relevance.signs.LayerSigns`` read from the model's graph): the w+ family
        takes its sign-aware form where the layer's input or output can be negative, and
        keeps its cheaper form, which is equal there, where the graph proves it cannot be."""
        return self

    # -- to implement -----------------------------------------------------------------
    def forward_kernels(self, w: jax.Array) -> tuple[jax.Array, ...]:
        """Extra kernels (shaped like ``w``) whose outputs ``residuals`` needs; they run in
        the same convolution as the layer itself (one pass over ``x``)."""
        return ()

    def residuals(self, op, x, w, b, z, zs) -> Any:  # pragma: no cover
        """What the backward keeps: ``z = op.apply(x, w)`` (no bias), ``zs`` the outputs of
        :meth:`forward_kernels` in order."""
        raise NotImplementedError

    def backward(self, op, res, R, in_shape) -> jax.Array:  # pragma: no cover
        raise NotImplementedError


def _rule_vjp(rule: LinearRule, op, in_shape: tuple[int, ...]):
    in_hw = tuple(in_shape[1:3])

    @jax.custom_vjp
    def layer(x, w, b):
        return op.apply(x, w) + b

    def fwd(x, w, b):
        extra = rule.forward_kernels(w)
        if extra:
            # stacked within each group, so that grouped kernels stay grouped (linear.py)
            z, *zs = op.split_out(op.apply(x, op.concat_out((w,) + tuple(extra))), 1 + len(extra))
            zs = tuple(zs)
        else:
            z, zs = op.apply(x, w), ()
        return z + b, rule.residuals(op, x, w, b, z, zs)

    def bwd(res, R):
        # Parameters get a symbolic zero: relevance flows to the input only.
        return rule.backward(op, res, R, in_hw), None, None

    layer.defvjp(fwd, bwd)
    return layer


# ---- the rules ------------------------------------------------------------------------


@dataclass(frozen=True)
class Epsilon(LinearRule):
    """LRP-epsilon: ``R_i = x_i sum_j w_ij R_j / stab(z_j, epsilon)``; z includes the bias."""

    epsilon: float = 1e-6

    def residuals(self, op, x, w, b, z, zs):
        return x, op.transpose_kernel(w), 1.0 / stabilize(z + b, self.epsilon)

    def backward(self, op, res, R, in_hw):
        x, wt, inv = res
        return x * op.transpose(R * inv, wt, in_hw)


@dataclass(frozen=True)
class WPlus(LinearRule):
    """w+ / z+ (= alpha1beta0 for x >= 0): ``R_i = x_i sum_j w+_ij R_j / stab(z+_j)``.

    ``contributions=True``: the general form for inputs of either sign,
    ``R_i = sum_j (x_i w_ij)^+ R_j / stab(sum_i' (x_i' w_i'j)^+)``; equal to the default
    form where ``x >= 0``, at about twice its cost. Every share is then in [0, 1], so
    ``sum_i |R_i| <= sum_j |R_j|`` (no relevance is created).
    """

    stabilizer: float = 1e-9
    contributions: bool = False

    def specialize(self, signs):
        if signs.output_signed:
            return SignedWPlus(self.stabilizer, signed_input=signs.input_signed or self.contributions)
        if signs.input_signed and not self.contributions:
            return dataclasses.replace(self, contributions=True)
        return self

    def forward_kernels(self, w):
        return () if self.contributions else (jnp.maximum(w, 0),)

    def residuals(self, op, x, w, b, z, zs):
        if self.contributions:
            wp, wn = jnp.maximum(w, 0), jnp.minimum(w, 0)
            zp, _ = _signed_parts(op, x, wp, wn)
            # (x w)^+ = x+ w+ + x- w-: x+ reads w+^T s, x- reads w-^T s (one adjoint conv)
            wt = op.transpose_kernel(op.concat_in((wp, wn)))
            return x, wt, 1.0 / stabilize(zp, self.stabilizer)
        (zp,) = zs
        return x, op.transpose_kernel(jnp.maximum(w, 0)), 1.0 / stabilize(zp, self.stabilizer)

    def backward(self, op, res, R, in_hw):
        x, wt, inv = res
        t = op.transpose(R * inv, wt, in_hw)
        if self.contributions:
            tp, tn = op.split_in(t, 2)
            return jnp.maximum(x, 0) * tp + jnp.minimum(x, 0) * tn
        return x * t


@dataclass(frozen=True)
class AlphaBeta(LinearRule):
    """``R_i = sum_j (alpha x_i w+_ij / stab(z+_j) - beta x_i w-_ij / stab(z-_j)) R_j``.

    alpha=1, beta=0 is WPlus; alpha=1, beta=1 is CRP's localization-layer rule: what pushes
    in the asked direction gets positive relevance, what pushes against it negative.

    ``contributions=True``: the general form for inputs of either sign, with the positive
    and negative *contributions* ``(x_i w_ij)^+`` and ``(x_i w_ij)^-`` in place of
    ``x_i w+_ij`` and ``x_i w-_ij`` (and their sums as z+ and z-); equal to the default form
    where ``x >= 0``. Then ``sum_i |R_i| <= (alpha + beta) sum_j |R_j|``.
    """

    alpha: float = 1.0
    beta: float = 0.0
    stabilizer: float = 1e-9
    contributions: bool = False

    def __post_init__(self):
        super().__post_init__()
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and v < float("inf")):
                raise ConfigError(f"AlphaBeta.{name} must be a finite float >= 0, got {v!r}")

    def specialize(self, signs):
        if signs.input_signed and not self.contributions:
            return dataclasses.replace(self, contributions=True)
        return self

    def forward_kernels(self, w):
        return () if self.contributions else (jnp.maximum(w, 0), jnp.minimum(w, 0))

    def residuals(self, op, x, w, b, z, zs):
        zp, zn, wt = _positive_negative_parts(op, x, w, zs, self.contributions)
        inv_p = 1.0 / stabilize(zp, self.stabilizer)
        inv_n = 1.0 / stabilize(zn, self.stabilizer)
        return x, wt, self.alpha * inv_p, -self.beta * inv_n

    def backward(self, op, res, R, in_hw):
        return _positive_negative_backward(op, res, R, in_hw, self.contributions)


@dataclass(frozen=True)
class SignedWPlus(LinearRule):
    """w+ for units of either sign: a unit whose output ``y_j = z_j + b_j`` is >= 0 splits
    its relevance over its positive contributions, one whose output is negative over its
    negative contributions:

        R_i = sum_j [y_j >= 0] (x_i w_ij)^+ / stab(z+_j) R_j + [y_j < 0] (x_i w_ij)^- / stab(z-_j) R_j

    For layers where relevance reaches negative outputs: before hardswish (which keeps the
    sign) and in linear bottlenecks feeding residual adds. There plain positive
    contributions lose the relevance of every negative unit (no positive contribution, so
    z+_j = 0); here a unit's output of sign s always has a contribution of sign s when the
    bias is zero, so relevance is conserved exactly. Where relevance only reaches positive
    outputs and inputs are >= 0 (ReLU networks) it equals :class:`WPlus`. Every share is in
    [0, 1]: ``sum_i |R_i| <= sum_j |R_j|``.

    ``signed_input=False``: the form for inputs ``>= 0``, where ``(x_i w_ij)^+ = x_i w+_ij``
    (one convolution less, half the adjoint kernel); equal to the general form there.
    """

    stabilizer: float = 1e-9
    signed_input: bool = True

    def specialize(self, signs):
        # signed_input=False is the cheaper form for inputs >= 0 (x+ = x, x- = 0): only where
        # the graph proves them so
        return dataclasses.replace(self, signed_input=signs.input_signed)

    def forward_kernels(self, w):
        # inputs >= 0: z+ = x w+ and z- = x w- come out of the layer's own convolution
        return () if self.signed_input else (jnp.maximum(w, 0), jnp.minimum(w, 0))

    def residuals(self, op, x, w, b, z, zs):
        zp, zn, wt = _positive_negative_parts(op, x, w, zs, self.signed_input)
        pos = z + b >= 0
        cp = jnp.where(pos, 1.0 / stabilize(zp, self.stabilizer), 0.0)
        cn = jnp.where(pos, 0.0, 1.0 / stabilize(zn, self.stabilizer))
        return x, wt, cp, cn

    def backward(self, op, res, R, in_hw):
        return _positive_negative_backward(op, res, R, in_hw, self.signed_input)


def _positive_negative_parts(op, x, w, zs, contributions: bool):
    """``(z+, z-, adjoint kernel)`` of the rules that split into a positive and a negative
    part (AlphaBeta, SignedWPlus). ``contributions``: sums of the signed contributions
    ``(x_i w_ij)^+`` / ``(x_i w_ij)^-``, and the kernel stacked along both channel axes (x+
    gets ``w+^T a + w-^T c``, x- gets ``w-^T a + w+^T c``: one adjoint conv). Otherwise (x >= 0)
    ``x w+`` and ``x w-``, the layer's own extra outputs ``zs``, and (w+, w-) stacked along the
    output channels."""
    wp, wn = jnp.maximum(w, 0), jnp.minimum(w, 0)
    if contributions:
        zp, zn = _signed_parts(op, x, wp, wn)
        return zp, zn, op.transpose_kernel(op.concat_in((op.concat_out((wp, wn)), op.concat_out((wn, wp)))))
    zp, zn = zs
    return zp, zn, op.transpose_kernel(op.concat_out((wp, wn)))


def _positive_negative_backward(op, res, R, in_hw, contributions: bool):
    """The backward of :func:`_positive_negative_parts`' residuals ``(x, wt, cp, cn)``:
    ``a = cp R`` and ``c = cn R`` through the one adjoint conv."""
    if contributions:
        return _contributions_backward(op, res, R, in_hw)
    x, wt, cp, cn = res
    return x * op.transpose(op.concat_out((R * cp, R * cn)), wt, in_hw)


def _contributions_backward(op, res, R, in_hw):
    """``R_i = x+_i (w+^T a + w-^T c)_i + x-_i (w-^T a + w+^T c)_i`` with ``a = cp R`` (shares
    of the positive contributions) and ``c = cn R`` (of the negative ones), from one adjoint
    conv of the kernel stacked as in AlphaBeta's contribution form.

    Four kernel blocks, not two: the identity ``R = (x w^T(a + c) + |x| |w|^T(a - c)) / 2``
    needs only two adjoint convs, but it is numerically unsafe. A unit with a tiny ``z+``
    (or ``z-``) has a huge ``a`` (``c``); here it only meets the contributions that made the
    tiny sum, whereas the identity adds it to every input and relies on cancellation, which
    in float32 left errors of order 10 where the relevance is of order 1 (tried and measured,
    tests/test_rules_grouped.py)."""
    x, wt, cp, cn = res
    tp, tn = op.split_in(op.transpose(op.concat_out((R * cp, R * cn)), wt, in_hw), 2)
    return jnp.maximum(x, 0) * tp + jnp.minimum(x, 0) * tn


def _signed_parts(op, x, wp, wn) -> tuple[jax.Array, jax.Array]:
    """``(z+, z-)`` of the contributions: ``z+_j = sum_i (x_i w_ij)^+ = x+ w+ + x- w-`` and
    ``z-_j = sum_i (x_i w_ij)^- = x+ w- + x- w+``, in one convolution of ``[x+, x-]``."""
    xp, xn = jnp.maximum(x, 0), jnp.minimum(x, 0)
    xx = op.concat_out((xp, xn))  # (group, sign, channel): a grouped input of 2 Cin/G per group
    k = op.concat_out((op.concat_in((wp, wn)), op.concat_in((wn, wp))))
    return op.split_out(op.apply(xx, k), 2)


@dataclass(frozen=True)
class ZBox(LinearRule):
    """z^B for the input layer, whose inputs lie in ``[low, high]`` (per channel or scalar):
    ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / stab(z^B_j) R_j``. Every term is
    >= 0 for inputs within the bounds, so relevance keeps the sign of ``R_j``."""

    low: float | tuple[float, ...] = 0.0
    high: float | tuple[float, ...] = 1.0
    stabilizer: float = 1e-9

    def __post_init__(self):
        super().__post_init__()
        for name in ("low", "high"):
            v = getattr(self, name)
            if isinstance(v, (list, tuple)):
                object.__setattr__(self, name, tuple(float(a) for a in v))
        lo, hi = np.asarray(self.low, float), np.asarray(self.high, float)
        if lo.shape != hi.shape or not np.all(lo <= hi) or not np.all(np.isfinite(lo + hi)):
            raise ConfigError(f"ZBox needs low <= high of one shape, got low={self.low}, high={self.high}")

    def residuals(self, op, x, w, b, z, zs):
        for name in ("low", "high"):
            v = getattr(self, name)
            if isinstance(v, tuple) and len(v) not in (1, x.shape[-1]):
                raise ConfigError(f"ZBox.{name} has {len(v)} entries but the layer input has {x.shape[-1]} channels")
        l = jnp.broadcast_to(jnp.asarray(self.low, x.dtype), x.shape[-1:])
        h = jnp.broadcast_to(jnp.asarray(self.high, x.dtype), x.shape[-1:])
        # The bounds are per input channel, so they fold into one kernel:
        # wb_ij = -l_i w+_ij - h_i w-_ij, and z^B = x*w + 1*wb (the 1s respect the padding).
        wb = -_per_tap(l, op, w) * jnp.maximum(w, 0) - _per_tap(h, op, w) * jnp.minimum(w, 0)
        zb = z + op.apply(jnp.ones_like(x), wb)
        # One transposed conv gives both W^T s and wb^T s (2 * Cin output channels).
        wt = op.transpose_kernel(op.concat_in((w, wb)))
        return x, wt, 1.0 / stabilize(zb, self.stabilizer)

    def backward(self, op, res, R, in_hw):
        x, wt, inv = res
        tx, tb = op.split_in(op.transpose(R * inv, wt, in_hw), 2)  # [..., 2 * Cin] -> 2 x [..., Cin]
        return x * tx + tb


def _per_tap(v: jax.Array, op, w: jax.Array) -> jax.Array:
    """A per-input-channel vector ``[Cin]`` as ``[Cin/G, Cout]``, aligned with the kernel
    ``w [..., Cin/G, Cout]``: entry (i, o) is input channel ``group(o) * Cin/G + i``."""
    g = op.groups
    cig, co = w.shape[-2], w.shape[-1]
    return v.reshape(g, cig).T[:, jnp.repeat(jnp.arange(g), co // g)]


@dataclass(frozen=True)
class _WeightShares(LinearRule):
    """Rules that ignore the input: each output's relevance is spread over its receptive
    field in proportion to ``shares(w)`` (one expression per rule, as RelevancePropagation.jl's
    ``modify_weight``): ``R_i = sum_j s_ij / stab(sum_i' s_i'j) R_j``, the sums over the
    receptive field as the layer sees it (padding included, through a conv of ones)."""

    stabilizer: float = 1e-9

    def shares(self, w: jax.Array) -> jax.Array:  # pragma: no cover
        raise NotImplementedError

    def residuals(self, op, x, w, b, z, zs):
        s = self.shares(w)
        return op.transpose_kernel(s), 1.0 / stabilize(op.apply(jnp.ones_like(x), s), self.stabilizer)

    def backward(self, op, res, R, in_hw):
        wt, inv = res
        return op.transpose(R * inv, wt, in_hw)


@dataclass(frozen=True)
class Flat(_WeightShares):
    """Flat: relevance spread uniformly over each output's receptive field."""

    def shares(self, w):
        return jnp.ones_like(w)


@dataclass(frozen=True)
class WSquare(_WeightShares):
    """w^2: relevance spread in proportion to squared weights (inputs ignored)."""

    def shares(self, w):
        return w * w


@dataclass(frozen=True)
class PassThrough(Rule):
    """Relevance passes unchanged (``R_in = R_out``) through a shape-preserving layer, e.g.
    L2Norm, which only rescales each position (docs/design.md §2), or an elementwise activation
    such as hardswish (not multiplied by its derivative, which is not 0/1).

    Only the first argument receives relevance: for a gate module ``y = x * g`` (squeeze-
    excitation) that is ``x``, and the gate ``g`` is held constant (relevance 0).
    """

    def apply(self, module, next_fun, args, kwargs):
        x = args[0]
        y = next_fun(*args, **kwargs)
        if y.shape != x.shape:
            raise ConfigError(
                f"PassThrough needs a shape-preserving layer; {'/'.join(module.path)} maps {x.shape} -> {y.shape}"
            )
        return _pass_through(x, y)


@jax.custom_vjp
def _pass_through(x, y):
    return y


def _pass_through_fwd(x, y):
    return y, None


def _pass_through_bwd(_, R):
    # All relevance to x; y's own (real) dependence on x gets a symbolic zero.
    return R, None


_pass_through.defvjp(_pass_through_fwd, _pass_through_bwd)


@dataclass(frozen=True)
class Proportional(Rule):
    """Residual addition ``y = z_1 + z_2 + ...`` (all of one shape).

    ``by_sign=True`` (default): a sign-aware split. Where ``y >= 0`` relevance goes to the
    positive addends, where ``y < 0`` to the negative ones, each in proportion to its value:

        R_k = [y >= 0] z_k^+ / stab(sum_l z_l^+) R_y + [y < 0] z_k^- / stab(sum_l z_l^-) R_y

    Every share is in [0, 1] (``sum_k |R_k| <= |R_y|``), and ``sum_k R_k = R_y`` up to the
    stabiliser (the sum of the addends of ``y``'s sign is nonzero when ``y`` is), so signed
    addends that cancel cannot inflate relevance (docs/design.md §2).

    ``by_sign=False``: the value split ``R_k = z_k / stab(y) R_y``, conserving too, but
    unbounded where signed addends cancel (``y ~ 0`` with large ``z_k``).
    """

    stabilizer: float = 1e-9
    by_sign: bool = True

    def apply(self, module, next_fun, args, kwargs):
        y = next_fun(*args, **kwargs)
        shapes = [tuple(a.shape) for a in args]
        if kwargs or any(s != tuple(y.shape) for s in shapes):
            raise ConfigError(
                f"Proportional needs a sum of same-shaped arrays; {'/'.join(module.path)} maps {shapes} -> {y.shape}"
            )
        return _proportional(self.stabilizer, self.by_sign, tuple(args), y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _proportional(eps, by_sign, zs, y):
    return y


def _proportional_fwd(eps, by_sign, zs, y):
    if not by_sign:
        return y, (zs, 1.0 / stabilize(y, eps))
    pos = y >= 0
    # each addend's part of y's sign, and the reciprocal of their sum
    parts = tuple(jnp.where(pos, jnp.maximum(z, 0), jnp.minimum(z, 0)) for z in zs)
    return y, (parts, 1.0 / stabilize(functools.reduce(jnp.add, parts), eps))


def _proportional_bwd(eps, by_sign, res, R):
    zs, inv = res
    s = R * inv
    # y's own dependence on the addends gets a symbolic zero: the split above is the rule.
    return tuple(z * s for z in zs), None


_proportional.defvjp(_proportional_fwd, _proportional_bwd)


@dataclass(frozen=True)
class Gradient(Rule):
    """The layer's own gradient (no modification)."""

    def apply(self, module, next_fun, args, kwargs):
        return next_fun(*args, **kwargs)
