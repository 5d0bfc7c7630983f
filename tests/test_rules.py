"""Each relevance rule against an explicit, independent reference (docs/design.md §2).

The reference is written in NumPy float64 from the formulas in docs/design.md §2 on an explicit
dense matrix ``W_eff [n_in, n_out]`` of the layer, built by looping over output positions and
kernel taps with stride / padding / dilation by hand: no JAX convolution and no autodiff is
involved, so the reference shares nothing with the code under test. With the contributions
``C_ij`` of a rule (e.g. ``x_i max(W_ij, 0)`` for w+) and its denominator
``z_j = sum_i C_ij`` (plus ``b_j`` for epsilon only), the reference relevance is
``R_i = sum_j C_ij / stab(z_j) R_j``, ``stab(z, eps) = z + eps * sign(z)``, ``sign(0) = +1``.

The rules run as ``jax.vjp(lambda x: rule(op, x, w, b), x)[1](R)``. To keep the file fast
on a shared CPU, every rule of one layer shape runs in one compiled program (the rules'
inputs are arguments, so the same program serves the reference, bias, linearity,
conservation and degenerate-input tests), compiled at XLA's lowest optimisation level.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from crp_jax.errors import ConfigError, CRPError
from crp_jax.relevance import rules
from crp_jax.relevance.composite import Composite, composite_names
from crp_jax.relevance.core import relevance_vjp
from crp_jax.relevance.linear import ConvOp, DenseOp
from crp_jax.ssd import SSD, Meta, SSDConfig
from crp_jax.ssd.meta import TORCHVISION_MEAN, TORCHVISION_STD, default_class_names
from crp_jax.ssd.model import L2Norm

ATOL, RTOL = 1e-5, 1e-4
N_IMG, CIN, COUT = 2, 3, 4
DENSE_N, DENSE_CIN, DENSE_COUT = 3, 8, 5

# XLA's optimisation passes dominate compile time here and change nothing that is tested.
_FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def _compile(fn, *args):
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile(compiler_options=_FAST_COMPILE)
    except Exception:  # an XLA without these options: compile as usual
        return lowered.compile()


def _fast_jit(fn):
    return lambda *args: _compile(fn, *args)(*args)


# ------------------------------------------------------------------------------------------
# Layers under test
# ------------------------------------------------------------------------------------------

# name -> (H, W, kernel, strides, padding ((t, b), (l, r)), dilation); "dense" is a Dense layer
CASES = {
    "conv3x3_s1_p1": (7, 7, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),
    "conv3x3_s2_p1_conv8_2": (9, 9, 3, (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "conv3x3_d6_p6_conv6": (9, 9, 3, (1, 1), ((6, 6), (6, 6)), (6, 6)),
    "conv3x3_valid_conv10_2": (7, 7, 3, (1, 1), ((0, 0), (0, 0)), (1, 1)),
    "conv1x1": (7, 7, 1, (1, 1), ((0, 0), (0, 0)), (1, 1)),
    "conv3x3_s2_p0_last_row_unread": (10, 10, 3, (2, 2), ((0, 0), (0, 0)), (1, 1)),
    "dense": None,
}


def _op(case):
    if CASES[case] is None:
        return DenseOp()
    _h, _w, _k, strides, padding, dilation = CASES[case]
    return ConvOp(strides=strides, padding=padding, dilation=dilation)


def _spec(case):
    return CASES[case] if isinstance(case, str) else case


def _shapes(case):
    """(x shape, w shape, y shape); ``case`` is a name in CASES or a spec tuple."""
    if _spec(case) is None:
        return (DENSE_N, DENSE_CIN), (DENSE_CIN, DENSE_COUT), (DENSE_N, DENSE_COUT)
    H, W, k, (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = _spec(case)
    Ho = (H + pt + pb - (dh * (k - 1) + 1)) // sh + 1
    Wo = (W + pl + pr - (dw * (k - 1) + 1)) // sw + 1
    return (N_IMG, H, W, CIN), (k, k, CIN, COUT), (N_IMG, Ho, Wo, COUT)


def _cin(case):
    return _shapes(case)[0][-1]


# ------------------------------------------------------------------------------------------
# The reference: explicit dense matrix + DESIGN's formulas in float64
# ------------------------------------------------------------------------------------------


def dense_matrix(case, w):
    """``W_eff [n_in, n_out]`` of one image: ``y.ravel() = x.ravel() @ W_eff`` (no bias)."""
    w = np.asarray(w, np.float64)
    if _spec(case) is None:
        return w.copy()
    H, W, k, (sh, sw), ((pt, _pb), (pl, _pr)), (dh, dw) = _spec(case)
    _, _, (_, Ho, Wo, _) = _shapes(case)
    cin, cout = w.shape[2], w.shape[3]
    M = np.zeros((H * W * cin, Ho * Wo * cout))
    for oy in range(Ho):
        for ox in range(Wo):
            cols = (oy * Wo + ox) * cout + np.arange(cout)
            for ky in range(k):
                iy = oy * sh - pt + ky * dh
                if not 0 <= iy < H:
                    continue  # a padding row: contributes nothing
                for kx in range(k):
                    ix = ox * sw - pl + kx * dw
                    if not 0 <= ix < W:
                        continue
                    rows = (iy * W + ix) * cin + np.arange(cin)
                    M[np.ix_(rows, cols)] += w[ky, kx]
    return M


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def reference_rule(spec, M, mask, x, b, R, low=None, high=None):
    """R_in [n_in] of one image for rule ``spec`` (the (kind, params) of ``RULES``)."""
    kind, p = spec
    x, b, R = (np.asarray(a, np.float64) for a in (x, b, R))
    Mp, Mn = np.maximum(M, 0.0), np.minimum(M, 0.0)
    xi = x[:, None]

    def share(C, z, eps):  # R_i = sum_j C_ij / stab(z_j) R_j
        return (C / stab(z, eps)[None, :]) @ R

    if kind == "epsilon":
        C = xi * M
        return share(C, C.sum(0) + b, p["epsilon"])  # the only rule that keeps the bias
    if kind == "wplus":
        C = xi * Mp
        return share(C, C.sum(0), p["stabilizer"])
    if kind == "alphabeta":
        Cp, Cn = xi * Mp, xi * Mn
        eps = p["stabilizer"]
        return p["alpha"] * share(Cp, Cp.sum(0), eps) - p["beta"] * share(Cn, Cn.sum(0), eps)
    if kind == "zbox":
        C = xi * M - low[:, None] * Mp - high[:, None] * Mn
        return share(C, C.sum(0), p["stabilizer"])
    if kind == "flat":
        return share(mask, mask.sum(0), p["stabilizer"])
    if kind == "wsquare":
        C = M * M
        return share(C, C.sum(0), p["stabilizer"])
    raise AssertionError(kind)


def _box_bounds(cin):
    # per-channel bounds around 0 (like normalised pixels), all different
    low = -2.0 + 0.15 * np.arange(cin)
    high = 1.5 + 0.3 * np.arange(cin)
    return low, high


def _zbox_channel(cin, stabilizer=1e-9):
    lo, hi = _box_bounds(cin)
    return rules.ZBox(tuple(lo), tuple(hi), stabilizer=stabilizer)


# name -> (factory(cin) -> rule, reference (kind, params), input kind, bias offset)
# input kinds: "relu" (>= 0 with exact zeros, as after a ReLU), "signed", "box_scalar" /
# "box_channel" (uniform within the rule's [low, high])
RULES = {
    "eps_0.25_signed": (lambda c: rules.Epsilon(0.25), ("epsilon", dict(epsilon=0.25)), "signed", 0.0),
    "eps_0.25_relu": (lambda c: rules.Epsilon(0.25), ("epsilon", dict(epsilon=0.25)), "relu", 0.0),
    # default epsilon; a large bias keeps every z_j far from 0 so float32 is well conditioned
    "eps_default_bias20": (lambda c: rules.Epsilon(), ("epsilon", dict(epsilon=1e-6)), "signed", 20.0),
    "wplus": (lambda c: rules.WPlus(), ("wplus", dict(stabilizer=1e-9)), "relu", 0.0),
    "wplus_stab0.5": (lambda c: rules.WPlus(0.5), ("wplus", dict(stabilizer=0.5)), "relu", 0.0),
    "ab_1_0": (lambda c: rules.AlphaBeta(1.0, 0.0), ("alphabeta", dict(alpha=1, beta=0, stabilizer=1e-9)), "relu", 0.0),
    "ab_1_1": (lambda c: rules.AlphaBeta(1.0, 1.0), ("alphabeta", dict(alpha=1, beta=1, stabilizer=1e-9)), "relu", 0.0),
    "ab_2_1": (lambda c: rules.AlphaBeta(2.0, 1.0), ("alphabeta", dict(alpha=2, beta=1, stabilizer=1e-9)), "relu", 0.0),
    "ab_3_1": (lambda c: rules.AlphaBeta(3.0, 1.0), ("alphabeta", dict(alpha=3, beta=1, stabilizer=1e-9)), "relu", 0.0),
    "ab_2_1_stab0.5": (
        lambda c: rules.AlphaBeta(2.0, 1.0, stabilizer=0.5),
        ("alphabeta", dict(alpha=2, beta=1, stabilizer=0.5)),
        "relu",
        0.0,
    ),
    "zbox_scalar": (lambda c: rules.ZBox(-1.0, 2.0), ("zbox", dict(stabilizer=1e-9)), "box_scalar", 0.0),
    "zbox_channel": (_zbox_channel, ("zbox", dict(stabilizer=1e-9)), "box_channel", 0.0),
    "zbox_channel_stab0.5": (lambda c: _zbox_channel(c, 0.5), ("zbox", dict(stabilizer=0.5)), "box_channel", 0.0),
    "flat": (lambda c: rules.Flat(), ("flat", dict(stabilizer=1e-9)), "relu", 0.0),
    "flat_stab0.5": (lambda c: rules.Flat(0.5), ("flat", dict(stabilizer=0.5)), "relu", 0.0),
    "wsquare": (lambda c: rules.WSquare(), ("wsquare", dict(stabilizer=1e-9)), "relu", 0.0),
    "wsquare_stab0.5": (lambda c: rules.WSquare(0.5), ("wsquare", dict(stabilizer=0.5)), "relu", 0.0),
}
EPSILON_RULES = {n for n, r in RULES.items() if r[1][0] == "epsilon"}


def _bounds(name, cin):
    kind = RULES[name][2]
    if kind == "box_scalar":
        return np.full(cin, -1.0), np.full(cin, 2.0)
    if kind == "box_channel":
        return _box_bounds(cin)
    return None, None


@functools.cache
def _program(case):
    """One compiled program running every rule of RULES on layer ``case``:
    ``{name: (x, w, b, R)} -> {name: (y, R_in)}``."""
    op = _op(case)
    cin = _cin(case)
    rule_objs = {n: RULES[n][0](cin) for n in RULES}

    def run(inputs):
        out = {}
        for n, (x, w, b, R) in inputs.items():
            y, vjp = jax.vjp(lambda x: rule_objs[n](op, x, w, b), x)
            out[n] = (y, vjp(R)[0])
        return out

    return _compile(run, _random_inputs(case, 0))


def _random_x(rng, name, shape):
    kind = RULES[name][2]
    if kind == "relu":
        return np.maximum(rng.normal(size=shape), 0.0)
    if kind == "signed":
        return rng.normal(size=shape)
    lo, hi = _bounds(name, shape[-1])
    return lo + rng.uniform(size=shape) * (hi - lo)


def _random_inputs(case, seed):
    xs, ws, ys = _shapes(case)
    rng = np.random.default_rng(seed)
    inputs = {}
    for n in RULES:
        x = _random_x(rng, n, xs)
        w = rng.normal(scale=0.5, size=ws)
        b = rng.normal(scale=0.5, size=ys[-1]) + RULES[n][3]
        R = rng.normal(size=ys)
        inputs[n] = tuple(np.asarray(a, np.float32) for a in (x, w, b, R))
    return inputs


def _run(case, inputs):
    out = _program(case)(inputs)
    return {n: (np.asarray(y), np.asarray(r)) for n, (y, r) in out.items()}


@functools.cache
def _random_run(case):
    inputs = _random_inputs(case, 0)
    return inputs, _run(case, inputs)


def _per_image(case, a):
    return a.reshape(a.shape[0], -1)


# ------------------------------------------------------------------------------------------
# 1. every rule == the float64 dense-matrix reference
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(RULES))
def test_rule_matches_dense_matrix_reference(name, case):
    inputs, outputs = _random_run(case)
    x, w, b, R = inputs[name]
    y, R_in = outputs[name]
    assert R_in.shape == x.shape and R_in.dtype == np.float32
    M = dense_matrix(case, w)
    mask = dense_matrix(case, np.ones_like(w))  # which (input, output) pairs are connected
    low, high = _bounds(name, x.shape[-1])
    xs, Rs, ys, R_ins = (_per_image(case, a) for a in (x, R, y, R_in))
    n_in = M.shape[0]
    for img in range(xs.shape[0]):
        # forward: the ordinary layer, bias included
        b_full = np.tile(np.asarray(b, np.float64), M.shape[1] // b.shape[0])
        np.testing.assert_allclose(ys[img], xs[img].astype(np.float64) @ M + b_full, atol=ATOL, rtol=RTOL)
        lo = None if low is None else np.tile(low, n_in // len(low))
        hi = None if high is None else np.tile(high, n_in // len(high))
        ref = reference_rule(RULES[name][1], M, mask, xs[img], b_full, Rs[img], lo, hi)
        np.testing.assert_allclose(R_ins[img], ref, atol=ATOL, rtol=RTOL, err_msg=f"{name} on {case}, image {img}")


def test_reference_matrix_is_the_convolution():
    """Guards the reference itself: W_eff applied to x equals a direct tap-by-tap sum."""
    case = (8, 9, 3, (2, 2), ((2, 0), (0, 1)), (1, 1))  # asymmetric padding, stride 2
    H, W, k, (sh, sw), ((pt, _), (pl, _)), _d = case
    rng = np.random.default_rng(5)
    x = rng.normal(size=(H, W, CIN))
    w = rng.normal(size=(k, k, CIN, COUT))
    _, _, (_, Ho, Wo, _) = _shapes(case)
    y = np.zeros((Ho, Wo, COUT))
    xp = np.zeros((H + 2 * k, W + 2 * k, CIN))
    xp[k : k + H, k : k + W] = x  # generous zero frame
    for oy in range(Ho):
        for ox in range(Wo):
            patch = xp[k + oy * sh - pt : k + oy * sh - pt + k, k + ox * sw - pl : k + ox * sw - pl + k]
            y[oy, ox] = np.einsum("abc,abcd->d", patch, w)
    np.testing.assert_allclose(x.ravel() @ dense_matrix(case, w), y.ravel(), atol=1e-12)


# ------------------------------------------------------------------------------------------
# 2. bias: kept by epsilon only
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["conv3x3_s2_p1_conv8_2", "dense"])
def test_bias_is_left_out_by_all_rules_but_epsilon(case):
    inputs, outputs = _random_run(case)
    no_bias = {n: (x, w, np.zeros_like(b), R) for n, (x, w, b, R) in inputs.items()}
    outputs0 = _run(case, no_bias)
    for n in RULES:
        assert np.any(inputs[n][2] != 0)
        if n in EPSILON_RULES:
            assert not np.allclose(outputs[n][1], outputs0[n][1], atol=1e-3), n
        else:
            np.testing.assert_array_equal(outputs[n][1], outputs0[n][1], err_msg=n)


# ------------------------------------------------------------------------------------------
# 3. linearity in R
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["conv3x3_s2_p1_conv8_2", "conv3x3_d6_p6_conv6", "dense"])
def test_rules_are_linear_in_relevance(case):
    inputs, out1 = _random_run(case)
    rng = np.random.default_rng(11)
    a, c = 2.5, -1.5
    R2 = {n: rng.normal(size=inp[3].shape).astype(np.float32) for n, inp in inputs.items()}
    out2 = _run(case, {n: (x, w, b, R2[n]) for n, (x, w, b, R) in inputs.items()})
    mixed = _run(case, {n: (x, w, b, a * R + c * R2[n]) for n, (x, w, b, R) in inputs.items()})
    for n in RULES:
        r1, r2, rm = out1[n][1], out2[n][1], mixed[n][1]
        expected = a * r1.astype(np.float64) + c * r2
        scale = np.max(np.abs(a * r1) + np.abs(c * r2))
        np.testing.assert_allclose(rm, expected, rtol=RTOL, atol=1e-5 * max(scale, 1.0), err_msg=n)


# ------------------------------------------------------------------------------------------
# 4. conservation (bias excluded, every denominator non-zero)
# ------------------------------------------------------------------------------------------

# name -> factor: sum_i R_i = factor * sum_j R_j
CONSERVATION = {
    "wplus": 1.0,
    "ab_1_0": 1.0,
    "zbox_scalar": 1.0,
    "zbox_channel": 1.0,
    "flat": 1.0,
    "wsquare": 1.0,
    "ab_2_1": 2.0 - 1.0,
    "ab_3_1": 3.0 - 1.0,
    "ab_1_1": 0.0,
}


def _conservation_inputs(case, seed=3):
    """Strictly positive x (strictly inside the box for z^B) and weights whose input channels
    alternate +, -, random: every output sees a positive and a negative contribution, so
    every z+_j > 0, z-_j < 0 and z^B_j > 0. Non-zero bias, which must not matter."""
    xs, ws, ys = _shapes(case)
    cin = xs[-1]
    rng = np.random.default_rng(seed)
    sign = np.array([1.0, -1.0, 0.0] * cin)[:cin]
    inputs = _random_inputs(case, seed)
    for n in RULES:
        mag = np.abs(rng.normal(size=ws)) + 0.05
        signs = np.where(sign == 0, np.sign(rng.normal(size=cin)), sign)
        w = mag * (signs[:, None] if CASES[case] is None else signs[None, None, :, None])
        lo, hi = _bounds(n, cin)
        if lo is None:
            x = rng.uniform(0.1, 1.0, size=xs)
        else:
            x = lo + rng.uniform(0.05, 0.95, size=xs) * (hi - lo)
        b = rng.normal(size=ys[-1]) + 1.0
        R = rng.normal(size=ys)
        inputs[n] = tuple(np.asarray(a, np.float32) for a in (x, w, b, R))
    return inputs


@pytest.mark.parametrize("case", ["conv3x3_s1_p1", "conv3x3_d6_p6_conv6", "conv3x3_s2_p0_last_row_unread", "dense"])
def test_conservation(case):
    inputs = _conservation_inputs(case)
    outputs = _run(case, inputs)
    for n, factor in CONSERVATION.items():
        x, w, b, R = inputs[n]
        R_in = outputs[n][1]
        for img in range(x.shape[0]):
            got = float(np.sum(R_in[img], dtype=np.float64))
            want = factor * float(np.sum(R[img], dtype=np.float64))
            tol = 2e-5 * float(np.sum(np.abs(R[img]))) * (1 + factor)
            assert abs(got - want) <= tol, f"{n} on {case}, image {img}: sum R_in={got}, expected {want}"


def test_zbox_and_wplus_keep_the_sign_of_positive_relevance():
    case = "conv3x3_s1_p1"
    inputs = _conservation_inputs(case, seed=4)
    inputs = {n: (x, w, b, np.abs(R)) for n, (x, w, b, R) in inputs.items()}
    outputs = _run(case, inputs)
    for n in ("wplus", "ab_1_0", "zbox_scalar", "zbox_channel", "flat", "wsquare"):
        assert np.all(outputs[n][1] >= 0), n


# contributions that cancel exactly: only here is sign(0) = +1 observable
# name -> (rule, reference spec, x, one column of w, bias)
ZERO_DENOMINATORS = {
    # z_j = 1 + 2 - 3 = 0 exactly (float32-exact), bias 0: sign(0) = +1 -> stab = +0.25
    "epsilon": (rules.Epsilon(0.25), ("epsilon", dict(epsilon=0.25)), [1, 2, 3], [1, 1, -1], 0.0),
    # z_j = 1 + 2 - 3 = 0 with the bias
    "epsilon_bias": (rules.Epsilon(0.25), ("epsilon", dict(epsilon=0.25)), [1, 2, 0], [1, 1, 1], -3.0),
    # signed x, taken as is: z+_j = 1 - 1 = 0
    "wplus": (rules.WPlus(0.5), ("wplus", dict(stabilizer=0.5)), [1, -1, 2], [1, 1, -1], 0.0),
    # z+_j = 1 - 1 = 0 and z-_j = -2 + 2 = 0: both stabilised by +0.5
    "alphabeta": (
        rules.AlphaBeta(1.0, 1.0, 0.5),
        ("alphabeta", dict(alpha=1, beta=1, stabilizer=0.5)),
        [1, -1, 2, -2],
        [1, 1, -1, -1],
        0.0,
    ),
    # the mirror image: z_j = -1 exactly is stabilised to -1.25 (sign(z) = -1)
    "epsilon_negative": (rules.Epsilon(0.25), ("epsilon", dict(epsilon=0.25)), [1, 2, 4], [1, 1, -1], 0.0),
}


@pytest.mark.parametrize("name", list(ZERO_DENOMINATORS))
def test_stabilizer_sign_at_exactly_zero_denominator(name):
    rule, spec, x, w, b = ZERO_DENOMINATORS[name]
    x = np.array([x], np.float32)
    W = np.array(w, np.float32)[:, None] * np.array([[1.0, 0.5]], np.float32)  # 2 outputs
    bias = np.array([b, 2 * b], np.float32)
    R = np.array([[1.5, -0.7]], np.float32)
    R_in = jax.vjp(lambda x: rule(DenseOp(), x, W, bias), x)[1](R)[0]
    ref = reference_rule(spec, W.astype(np.float64), np.ones_like(W), x[0], bias, R[0])
    np.testing.assert_allclose(np.asarray(R_in)[0], ref, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------
# 5. numerics: degenerate and extreme inputs never give NaN or Inf
# ------------------------------------------------------------------------------------------

DEGENERATE = ("x_zero", "w_zero_b_zero", "w_zero_b_nonzero", "all_zero", "x_plus_1e4", "x_minus_1e4", "x_pm_1e4")


def _degenerate(case, what):
    inputs = _random_inputs(case, 7)
    rng = np.random.default_rng(8)
    out = {}
    for n, (x, w, b, R) in inputs.items():
        if what in ("x_zero", "all_zero"):
            x = np.zeros_like(x)
        if what in ("w_zero_b_zero", "w_zero_b_nonzero", "all_zero"):
            w = np.zeros_like(w)
        if what in ("w_zero_b_zero", "all_zero"):
            b = np.zeros_like(b)
        if what == "x_plus_1e4":
            x = np.full_like(x, 1e4)
        if what == "x_minus_1e4":
            x = np.full_like(x, -1e4)
        if what == "x_pm_1e4":
            x = (np.sign(rng.normal(size=x.shape)) * 1e4).astype(np.float32)
        out[n] = (x, w, b, R)
    return out


@pytest.mark.parametrize("case", ["conv3x3_s2_p1_conv8_2", "conv3x3_d6_p6_conv6", "dense"])
@pytest.mark.parametrize("what", DEGENERATE)
def test_no_nan_or_inf_on_degenerate_inputs(case, what):
    inputs = _degenerate(case, what)
    outputs = _run(case, inputs)
    for n, (y, R_in) in outputs.items():
        assert np.all(np.isfinite(y)), f"{n}: forward not finite"
        assert np.all(np.isfinite(R_in)), f"{n}: relevance not finite for {what}"
        kind = RULES[n][1][0]
        # what the formulas say exactly: every contribution is 0
        if what in ("x_zero", "all_zero") and kind in ("epsilon", "wplus", "alphabeta"):
            assert np.all(R_in == 0), n
        if what in ("w_zero_b_zero", "w_zero_b_nonzero", "all_zero") and kind != "flat":
            assert np.all(R_in == 0), n


_FLOOR = rules.MIN_STABILIZER


@pytest.mark.parametrize(
    "make",
    [
        lambda e: rules.WPlus(e),
        lambda e: rules.Epsilon(e),
        lambda e: rules.AlphaBeta(1.0, 1.0, e),
        lambda e: rules.WSquare(e),
        lambda e: rules.ZBox(0.0, 0.0, e),
    ],
    ids=["WPlus", "Epsilon", "AlphaBeta", "WSquare", "ZBox"],
)
def test_tiny_but_valid_stabilizer_stays_finite(make):
    # DESIGN: no rule ever returns NaN or Inf. The smallest accepted stabiliser keeps its
    # reciprocal finite in float32; anything below it (where 1/eps would overflow) is refused.
    with pytest.raises(ConfigError, match="stabilizer|epsilon"):
        make(1e-40)
    rule = make(_FLOOR)
    # z_j == 0 everywhere (x = 0, w = 0), so every denominator is the stabiliser itself.
    op = ConvOp(padding=((1, 1), (1, 1)))
    x = np.zeros((1, 5, 5, 3), np.float32)
    w = np.zeros((3, 3, 3, 2), np.float32)
    R = np.ones((1, 5, 5, 2), np.float32)

    def run(x, w, R):
        return jax.vjp(lambda x: rule(op, x, w), x)[1](R)[0]

    R_in = np.asarray(jax.jit(run)(x, w, R))
    assert np.all(np.isfinite(R_in))


# ------------------------------------------------------------------------------------------
# 6. numerics on a tiny SSD with every preset
# ------------------------------------------------------------------------------------------


def _ssd_variables(model, x, cfg):
    """The model's default initialisation, drawn with NumPy: xavier-uniform kernels, zero
    biases, L2Norm scale ``l2norm_init`` (shapes from ``eval_shape``; jax.random would
    compile one program per kernel shape, which costs tens of seconds on a small CPU)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)

    def init(path, s):
        name = path[-1].key
        if name == "kernel":
            kh, kw, cin, cout = s.shape
            a = math.sqrt(6.0 / (kh * kw * (cin + cout)))
            return rng.uniform(-a, a, size=s.shape).astype(np.float32)
        if name == "bias":
            return np.zeros(s.shape, np.float32)
        if name == "scale":
            return np.full(s.shape, cfg.l2norm_init, np.float32)
        raise AssertionError(path)

    return jax.tree_util.tree_map_with_path(init, shapes)


def test_every_preset_is_finite_on_a_tiny_ssd_at_extreme_images():
    cfg = SSDConfig.small(num_classes=4, image_size=64, width=0.125)
    model = SSD(cfg)
    meta = Meta(cfg, default_class_names(4), mean=TORCHVISION_MEAN, std=TORCHVISION_STD)
    low, high = (np.asarray(v, np.float32) for v in meta.pixel_bounds)
    S = cfg.image_size
    images = {
        "zero": np.zeros((S, S, 3)),  # every activation 0: every stabiliser path
        "black": np.broadcast_to(low, (S, S, 3)),
        "white": np.broadcast_to(high, (S, S, 3)),
        "plus_1e4": np.full((S, S, 3), 1e4),
        "minus_1e4": np.full((S, S, 3), -1e4),
    }
    x = np.stack(list(images.values())).astype(np.float32)
    variables = _ssd_variables(model, x[:1], cfg)
    names = composite_names()
    assert {"crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input"} <= set(names)

    out_shapes = jax.eval_shape(model.apply, variables, x)
    rng = np.random.default_rng(9)
    R0 = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), out_shapes)

    def all_presets(variables, x, R0):
        plain = model.apply(variables, x)
        res = {}
        for name in names:
            outputs, explain_fn = relevance_vjp(model.apply, variables, x, name, meta=meta)
            res[name] = (outputs, explain_fn(R0))
        return plain, res

    plain, res = _compile(all_presets, variables, x, R0)(variables, x, R0)
    assert all(np.all(np.isfinite(np.asarray(p))) for p in plain)
    for name, (outputs, R_in) in res.items():
        R_in = np.asarray(R_in)
        assert R_in.shape == x.shape
        for i, img in enumerate(images):
            assert np.all(np.isfinite(R_in[i])), f"{name}: relevance not finite on the {img} image"
        for o, p in zip(outputs, plain):
            o, p = np.asarray(o), np.asarray(p)
            np.testing.assert_allclose(o, p, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(p).max())), err_msg=name)


# ------------------------------------------------------------------------------------------
# 7. PassThrough on L2Norm
# ------------------------------------------------------------------------------------------


class _ConvL2(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="conv")(x))
        return L2Norm(4, name="l2norm")(x)


def test_pass_through_on_l2norm_returns_relevance_unchanged():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
    x[0, 1, 2] = 0.0  # an all-zero position (the norm is clamped there)
    R = rng.normal(size=x.shape).astype(np.float32)
    l2 = L2Norm(4)
    variables = {"params": {"scale": np.array([20.0, 3.0, 0.5, 7.0], np.float32)}}
    comp = Composite(rules=((L2Norm, rules.PassThrough()),))

    def run(variables, x, R):
        outputs, explain_fn = relevance_vjp(l2.apply, variables, x, comp)
        _, vjp = jax.vjp(lambda x: l2.apply(variables, x), x)
        _, explain_layers = relevance_vjp(l2.apply, variables, x, comp, layers=True)
        return outputs, explain_fn(R), vjp(R)[0], explain_layers(R)

    outputs, R_in, grad, (R_in2, per_layer) = _fast_jit(run)(variables, x, R)
    np.testing.assert_allclose(outputs, l2.apply(variables, x), atol=ATOL, rtol=RTOL)
    np.testing.assert_array_equal(R_in, R)  # exactly
    np.testing.assert_array_equal(R_in2, R)
    assert set(per_layer) == {""} or len(per_layer) == 1
    np.testing.assert_array_equal(next(iter(per_layer.values())), R)
    assert not np.allclose(grad, R, atol=1e-3)  # the gradient itself is not the identity


def test_pass_through_on_l2norm_inside_a_model():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(1, 6, 6, 3)).astype(np.float32)
    net = _ConvL2()
    shapes = jax.eval_shape(net.init, jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    R = rng.normal(size=(1, 6, 6, 4)).astype(np.float32)
    comp = Composite(rules=((L2Norm, rules.PassThrough()),))

    def run(variables, x, R):
        _, explain_fn = relevance_vjp(net.apply, variables, x, comp, layers=True)
        return explain_fn(R)

    _, per_layer = _fast_jit(run)(variables, x, R)
    # the relevance at the conv's output (= L2Norm's input, ReLU passes it as its gradient)
    # is the relevance at the L2Norm output, unchanged where the conv is active
    np.testing.assert_array_equal(per_layer["l2norm"], R)
    conv_out = (
        np.einsum(  # the conv's pre-activation, by hand: 3x3, padding 1
            "nhwabc,abcd->nhwd",
            np.lib.stride_tricks.sliding_window_view(
                np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2)
            ).transpose(0, 1, 2, 4, 5, 3),
            variables["params"]["conv"]["kernel"],
        )
        + variables["params"]["conv"]["bias"]
    )
    active = conv_out > 0
    assert active.any() and (~active).any()
    np.testing.assert_array_equal(np.asarray(per_layer["conv"])[active], R[active])
    np.testing.assert_array_equal(np.asarray(per_layer["conv"])[~active], 0.0)


def test_pass_through_refuses_a_shape_changing_layer():
    x = np.ones((2, 3), np.float32)
    dense = nn.Dense(5)
    variables = {"params": {"kernel": np.ones((3, 5), np.float32), "bias": np.zeros(5, np.float32)}}
    comp = Composite(rules=((nn.Dense, rules.PassThrough()),))
    with pytest.raises(ConfigError):
        relevance_vjp(dense.apply, variables, x, comp)


# ------------------------------------------------------------------------------------------
# 8. validation
# ------------------------------------------------------------------------------------------

STABILIZED = [
    (rules.Epsilon, "epsilon"),
    (rules.WPlus, "stabilizer"),
    (rules.AlphaBeta, "stabilizer"),
    (rules.ZBox, "stabilizer"),
    (rules.Flat, "stabilizer"),
    (rules.WSquare, "stabilizer"),
]
BAD_STABILIZERS = [0, 0.0, -0.0, -1e-9, -1.0, math.inf, -math.inf, math.nan, None, "0.1"]


@pytest.mark.parametrize("cls,field", STABILIZED, ids=[c.__name__ for c, _ in STABILIZED])
@pytest.mark.parametrize("bad", BAD_STABILIZERS, ids=repr)
def test_bad_stabilizer_raises_config_error(cls, field, bad):
    with pytest.raises(ConfigError):
        cls(**{field: bad})


@pytest.mark.parametrize("cls,field", STABILIZED, ids=[c.__name__ for c, _ in STABILIZED])
def test_good_stabilizer_is_kept(cls, field):
    assert getattr(cls(**{field: 0.125}), field) == 0.125


@pytest.mark.parametrize(
    "low,high",
    [
        (1.0, 0.0),
        (0.5, 0.4999),
        ((0.0, 0.0, 1.0), (1.0, 1.0, 0.0)),  # one channel inverted
        ((0.0, 0.0), (1.0, 1.0, 1.0)),  # shapes differ
        (math.nan, 1.0),
        (0.0, math.inf),
        (-math.inf, 0.0),
    ],
)
def test_zbox_bad_bounds_raise(low, high):
    with pytest.raises(ConfigError):
        rules.ZBox(low, high)


def test_zbox_equal_bounds_are_allowed():
    z = rules.ZBox((0.0, 1.0), (0.0, 2.0))
    assert z.low == (0.0, 1.0) and z.high == (0.0, 2.0)


@pytest.mark.parametrize("field", ["alpha", "beta"])
@pytest.mark.parametrize("bad", [-1.0, -1e-6, math.inf, math.nan])
def test_alphabeta_bad_alpha_beta_raise(field, bad):
    with pytest.raises(ConfigError):
        rules.AlphaBeta(**{field: bad})


def test_zbox_bounds_not_matching_the_channels_raise_crp_error():
    # 3 per-channel bounds on a 4-channel input: a user error, to be reported as a CRPError
    op = ConvOp(padding=((1, 1), (1, 1)))
    z = rules.ZBox((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x = np.full((1, 5, 5, 4), 0.5, np.float32)
    w = np.ones((3, 3, 4, 2), np.float32)
    with pytest.raises(CRPError):
        jax.vjp(lambda x: z(op, x, w), x)
