"""Rules on grouped/depthwise convolutions, the positive-contribution forms, and the rules of
the new layer kinds (add, gate, activation), each against an independent reference.

The reference is an explicit float64 matrix ``W_eff [n_in, n_out]`` of one image, built by
looping over output positions, kernel taps and *groups* by hand (output channel ``o`` of a
convolution with G groups reads input channels ``g * Cin/G ... (g + 1) * Cin/G - 1``,
``g = o // (Cout / G)``), and the rules' formulas written out in NumPy
(``R_i = sum_j C_ij / stab(z_j) R_j`` with the rule's contributions ``C_ij``), as in
tests/test_rules.py. No JAX convolution or autodiff is involved in the reference.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax.errors import ConfigError
from crp_jax.relevance import rules
from crp_jax.relevance.composite import Composite, Kind
from crp_jax.relevance.core import relevance_vjp
from crp_jax.relevance.linear import ConvOp, DenseOp

ATOL, RTOL = 1e-5, 1e-4

# name -> (H, W, k, stride, padding, dilation, Cin, Cout, groups)
CASES = {
    "depthwise3x3_s1_p1": (6, 6, 3, 1, 1, 1, 4, 4, 4),
    "depthwise5x5_s2_p2": (7, 7, 5, 2, 2, 1, 4, 4, 4),
    "grouped2_3x3_s2_p1_dil": (8, 8, 3, 2, 2, 2, 4, 6, 2),
    "depthwise_multiplier2": (5, 5, 3, 1, 1, 1, 3, 6, 3),
    "plain3x3": (6, 6, 3, 1, 1, 1, 3, 4, 1),
    "dense": None,
}


def _op(case):
    spec = CASES[case]
    if spec is None:
        return DenseOp()
    _h, _w, _k, s, p, d, _ci, _co, g = spec
    return ConvOp(strides=(s, s), padding=((p, p), (p, p)), dilation=(d, d), groups=g)


def _shapes(case):
    spec = CASES[case]
    if spec is None:
        return (3, 7), (7, 5), (3, 5)
    H, W, k, s, p, d, ci, co, g = spec
    Ho = (H + 2 * p - (d * (k - 1) + 1)) // s + 1
    Wo = (W + 2 * p - (d * (k - 1) + 1)) // s + 1
    return (2, H, W, ci), (k, k, ci // g, co), (2, Ho, Wo, co)


def grouped_matrix(case, w):
    """``W_eff [n_in, n_out]`` of one image: ``y.ravel() = x.ravel() @ W_eff``."""
    w = np.asarray(w, np.float64)
    if CASES[case] is None:
        return w.copy()
    H, W, k, s, p, d, ci, co, g = CASES[case]
    _, _, (_, Ho, Wo, _) = _shapes(case)
    cig, cog = ci // g, co // g
    M = np.zeros((H * W * ci, Ho * Wo * co))
    for oy in range(Ho):
        for ox in range(Wo):
            for o in range(co):
                grp = o // cog
                for ky in range(k):
                    iy = oy * s - p + ky * d
                    if not 0 <= iy < H:
                        continue
                    for kx in range(k):
                        ix = ox * s - p + kx * d
                        if not 0 <= ix < W:
                            continue
                        for i in range(cig):
                            c = grp * cig + i
                            M[(iy * W + ix) * ci + c, (oy * Wo + ox) * co + o] += w[ky, kx, i, o]
    return M


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def share(C, z, eps, R):
    return (C / stab(z, eps)[None, :]) @ R


def reference(kind, M, mask, x, b, R, low=None, high=None, alpha=1.0, beta=0.0, eps=1e-9):
    x, b, R = (np.asarray(a, np.float64) for a in (x, b, R))
    xi = x[:, None]
    Mp, Mn = np.maximum(M, 0), np.minimum(M, 0)
    if kind == "epsilon":
        C = xi * M
        return share(C, C.sum(0) + b, eps, R)
    if kind == "wplus":
        C = xi * Mp
        return share(C, C.sum(0), eps, R)
    if kind == "wplus_contrib":
        C = np.maximum(xi * M, 0)
        return share(C, C.sum(0), eps, R)
    if kind == "alphabeta":
        Cp, Cn = xi * Mp, xi * Mn
        return alpha * share(Cp, Cp.sum(0), eps, R) - beta * share(Cn, Cn.sum(0), eps, R)
    if kind == "alphabeta_contrib":
        Cp, Cn = np.maximum(xi * M, 0), np.minimum(xi * M, 0)
        return alpha * share(Cp, Cp.sum(0), eps, R) - beta * share(Cn, Cn.sum(0), eps, R)
    if kind == "signed_wplus":  # contributions of the sign of the unit's output y = xM + b
        Cp, Cn = np.maximum(xi * M, 0), np.minimum(xi * M, 0)
        pos = (x @ M + b) >= 0
        return share(Cp * pos, Cp.sum(0), eps, R) + share(Cn * ~pos, Cn.sum(0), eps, R)
    if kind == "zbox":
        C = xi * M - low[:, None] * Mp - high[:, None] * Mn
        return share(C, C.sum(0), eps, R)
    if kind == "flat":
        return share(mask, mask.sum(0), eps, R)
    if kind == "wsquare":
        return share(M * M, (M * M).sum(0), eps, R)
    raise AssertionError(kind)


LOW, HIGH = -1.5, 2.0


def _channel_bounds(cin):
    """Per-channel bounds, all different (so a bound applied to the wrong channel shows)."""
    return tuple(-2.0 + 0.3 * np.arange(cin)), tuple(1.0 + 0.5 * np.arange(cin))


def _rule(name, cin):
    r = RULES[name][0]
    return r if isinstance(r, rules.Rule) else r(cin)


# name -> (rule, reference kind, reference kwargs, inputs: "relu" | "signed" | "box")
RULES = {
    "epsilon": (rules.Epsilon(0.25), "epsilon", dict(eps=0.25), "signed"),
    "wplus": (rules.WPlus(), "wplus", {}, "relu"),
    "wplus_contributions_signed": (rules.WPlus(contributions=True), "wplus_contrib", {}, "signed"),
    "wplus_contributions_relu": (rules.WPlus(contributions=True), "wplus_contrib", {}, "relu"),
    "ab_1_1": (rules.AlphaBeta(1.0, 1.0), "alphabeta", dict(alpha=1, beta=1), "relu"),
    "ab_2_1_contributions_signed": (
        rules.AlphaBeta(2.0, 1.0, contributions=True),
        "alphabeta_contrib",
        dict(alpha=2, beta=1),
        "signed",
    ),
    "ab_1_1_contributions_signed_stab0.5": (
        rules.AlphaBeta(1.0, 1.0, stabilizer=0.5, contributions=True),
        "alphabeta_contrib",
        dict(alpha=1, beta=1, eps=0.5),
        "signed",
    ),
    "signed_wplus": (rules.SignedWPlus(), "signed_wplus", {}, "signed"),
    "signed_wplus_stab0.5": (rules.SignedWPlus(0.5), "signed_wplus", dict(eps=0.5), "signed"),
    "zbox": (rules.ZBox(LOW, HIGH), "zbox", {}, "box"),
    "zbox_per_channel": (lambda cin: rules.ZBox(*_channel_bounds(cin)), "zbox", {}, "box_channel"),
    "flat": (rules.Flat(), "flat", {}, "relu"),
    "wsquare_stab0.5": (rules.WSquare(0.5), "wsquare", dict(eps=0.5), "relu"),
}


def _inputs(case, name, seed=0):
    xs, ws, ys = _shapes(case)
    rng = np.random.default_rng(seed)
    kind = RULES[name][3]
    if kind == "relu":
        x = np.maximum(rng.normal(size=xs), 0)
    elif kind == "signed":
        x = rng.normal(size=xs)
    elif kind == "box":
        x = rng.uniform(LOW, HIGH, size=xs)
    else:
        lo, hi = (np.asarray(v) for v in _channel_bounds(xs[-1]))
        x = lo + rng.uniform(size=xs) * (hi - lo)
    w = rng.normal(scale=0.5, size=ws)
    b = rng.normal(scale=0.5, size=ys[-1])
    R = rng.normal(size=ys)
    return tuple(np.asarray(a, np.float32) for a in (x, w, b, R))


@functools.cache
def _program(case, name):
    op, rule = _op(case), _rule(name, _shapes(case)[0][-1])

    def run(x, w, b, R):
        y, vjp = jax.vjp(lambda x: rule(op, x, w, b), x)
        return y, vjp(R)[0]

    return jax.jit(run)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(RULES))
def test_rule_on_grouped_convolution_matches_explicit_matrix(name, case):
    x, w, b, R = _inputs(case, name)
    y, R_in = (np.asarray(a) for a in _program(case, name)(x, w, b, R))
    M = grouped_matrix(case, w)
    mask = grouped_matrix(case, np.ones_like(w))
    _, kind, kw, _ = RULES[name]
    n_in, n_out = M.shape
    b_full = np.tile(b.astype(np.float64), n_out // b.shape[0])
    lo, hi = np.full(n_in, LOW), np.full(n_in, HIGH)
    if RULES[name][3] == "box_channel":
        lo, hi = (np.tile(v, n_in // x.shape[-1]) for v in _channel_bounds(x.shape[-1]))
    for img in range(x.shape[0]):
        xi, Ri = x[img].ravel(), R[img].ravel()
        np.testing.assert_allclose(y[img].ravel(), xi.astype(np.float64) @ M + b_full, atol=ATOL, rtol=RTOL)
        ref = reference(kind, M, mask, xi, b_full, Ri, lo, hi, **kw)
        np.testing.assert_allclose(R_in[img].ravel(), ref, atol=ATOL, rtol=RTOL, err_msg=f"{name} on {case}")


def test_grouped_reference_matrix_is_the_convolution():
    """Guards the reference: W_eff equals a direct loop over groups with numpy slicing."""
    case = "grouped2_3x3_s2_p1_dil"
    H, W, k, s, p, d, ci, co, g = CASES[case]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(H, W, ci))
    w = rng.normal(size=(k, k, ci // g, co))
    _, _, (_, Ho, Wo, _) = _shapes(case)
    xp = np.pad(x, ((p, p), (p, p), (0, 0)))
    y = np.zeros((Ho, Wo, co))
    for grp in range(g):
        xin = xp[..., grp * ci // g : (grp + 1) * ci // g]
        for oy in range(Ho):
            for ox in range(Wo):
                patch = xin[oy * s : oy * s + d * (k - 1) + 1 : d, ox * s : ox * s + d * (k - 1) + 1 : d]
                cols = slice(grp * co // g, (grp + 1) * co // g)
                y[oy, ox, cols] = np.einsum("abc,abcd->d", patch, w[..., cols])
    np.testing.assert_allclose(x.ravel() @ grouped_matrix(case, w), y.ravel(), atol=1e-12)


def test_flax_grouped_conv_maps_to_grouped_op():
    from crp_jax.relevance.linear import conv_op_from_module

    conv = nn.Conv(6, (3, 3), feature_group_count=3, padding=((1, 1), (1, 1)))
    captured = {}

    class Probe(nn.Module):
        @nn.compact
        def __call__(self, x):
            c = nn.Conv(6, (3, 3), feature_group_count=3, padding=((1, 1), (1, 1)), name="dw")
            out = c(x)
            captured["op"] = conv_op_from_module(c)
            return out

    Probe().init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 3)))
    assert captured["op"].groups == 3 and conv.feature_group_count == 3


# ------------------------------------------------------------------------------------------
# positive contributions: equal to the classic form for x >= 0, bounded for any x
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["depthwise3x3_s1_p1", "plain3x3", "dense"])
def test_contribution_form_equals_classic_form_for_nonnegative_inputs(case):
    op = _op(case)
    x, w, b, R = _inputs(case, "wplus")  # x >= 0 with exact zeros
    for classic, general in (
        (rules.WPlus(), rules.WPlus(contributions=True)),
        (rules.AlphaBeta(2.0, 1.0), rules.AlphaBeta(2.0, 1.0, contributions=True)),
    ):
        a = jax.vjp(lambda x: classic(op, x, w, b), x)[1](R)[0]
        c = jax.vjp(lambda x: general(op, x, w, b), x)[1](R)[0]
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-6, rtol=1e-5)


def _cancelling_inputs():
    """A dense layer whose classic z+ nearly cancels: x = (1, -1 + 1e-7), w+ = (1, 1)."""
    x = np.array([[1.0, -1.0 + 1e-7, 0.5]], np.float32)
    w = np.array([[1.0, -2.0], [1.0, 0.5], [-1.0, 1.0]], np.float32)
    R = np.array([[1.0, -0.5]], np.float32)
    return x, w, R


def test_classic_wplus_blows_up_on_mixed_sign_inputs_and_contributions_do_not():
    """Why the general form exists: with x of both signs the classic denominator
    sum_i x_i w+_ij cancels and relevance exceeds sum_j |R_j| by orders of magnitude;
    the contribution form stays within the bound."""
    x, w, R = _cancelling_inputs()
    op = DenseOp()
    b = np.zeros(2, np.float32)
    bound = float(np.abs(R).sum())
    classic = np.asarray(jax.vjp(lambda x: rules.WPlus()(op, x, w, b), x)[1](R)[0])
    general = np.asarray(jax.vjp(lambda x: rules.WPlus(contributions=True)(op, x, w, b), x)[1](R)[0])
    assert np.abs(classic).max() > 1e3 * bound
    assert np.abs(general).sum() <= bound * (1 + 1e-6)
    # hand formula: output 0: (x w)^+ = (1, 0, 0) -> all of R_0 = 1 to x_0;
    # output 1: (x w)^+ = (0, 0, 0.5)... and x_0 w_01 = -2 < 0 -> all of R_1 = -0.5 to x_2
    np.testing.assert_allclose(general[0], [1.0, 0.0, -0.5], atol=1e-6)


@pytest.mark.parametrize("case", ["depthwise5x5_s2_p2", "grouped2_3x3_s2_p1_dil", "dense"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contribution_forms_never_exceed_their_relevance_bound(case, seed):
    """Stated bound: z+ with contributions: sum_i |R_i| <= sum_j |R_j| (so every |R_i| is
    below it too); alpha-beta with contributions: <= (alpha + beta) sum_j |R_j|. Inputs of
    both signs, with some exactly zero (empty denominators must give 0, not NaN)."""
    op = _op(case)
    rng = np.random.default_rng(seed)
    xs, ws, ys = _shapes(case)
    x = rng.normal(size=xs) * (rng.uniform(size=xs) > 0.2)
    w = rng.normal(size=ws)
    x, w = x.astype(np.float32), w.astype(np.float32)
    b = np.zeros(ys[-1], np.float32)
    R = rng.normal(size=ys).astype(np.float32)
    for rule, factor in (
        (rules.WPlus(contributions=True), 1.0),
        (rules.AlphaBeta(2.0, 1.0, contributions=True), 3.0),
        (rules.AlphaBeta(1.0, 1.0, contributions=True), 2.0),
    ):
        R_in = np.asarray(jax.vjp(lambda x: rule(op, x, w, b), x)[1](R)[0])
        assert np.all(np.isfinite(R_in))
        for img in range(xs[0]):
            bound = factor * np.abs(R[img]).sum()
            assert np.abs(R_in[img]).sum() <= bound * (1 + 1e-5), (rule, img)
            assert np.abs(R_in[img]).max() <= bound * (1 + 1e-5)


@pytest.mark.parametrize("case", ["depthwise5x5_s2_p2", "grouped2_3x3_s2_p1_dil", "dense"])
def test_signed_wplus_conserves_exactly_without_bias_and_is_bounded_with_it(case):
    """With zero bias a unit's output of sign s always has a contribution of sign s, so
    sum_i R_i = sum_j R_j (where R_j reaches units of either sign); with a bias the
    bound sum_i |R_i| <= sum_j |R_j| holds."""
    op = _op(case)
    rng = np.random.default_rng(7)
    xs, ws, ys = _shapes(case)
    x = rng.normal(size=xs).astype(np.float32)
    w = rng.normal(size=ws).astype(np.float32)
    R = rng.normal(size=ys).astype(np.float32)
    rule = rules.SignedWPlus()
    for b, exact in ((np.zeros(ys[-1]), True), (rng.normal(size=ys[-1]), False)):
        b = b.astype(np.float32)
        R_in = np.asarray(jax.vjp(lambda x: rule(op, x, w, b), x)[1](R)[0])
        for img in range(xs[0]):
            total = np.abs(R[img]).sum()
            assert np.abs(R_in[img]).sum() <= total * (1 + 1e-5)
            if exact:
                np.testing.assert_allclose(R_in[img].sum(), R[img].sum(), atol=1e-5 * total)


def test_signed_wplus_equals_wplus_on_relu_inputs_and_positive_outputs():
    op = _op("plain3x3")
    rng = np.random.default_rng(3)
    xs, ws, ys = _shapes("plain3x3")
    x = np.maximum(rng.normal(size=xs), 0).astype(np.float32)
    w = rng.normal(size=ws).astype(np.float32)
    b = np.full(ys[-1], 50.0, np.float32)  # every output positive
    R = rng.normal(size=ys).astype(np.float32)
    a = jax.vjp(lambda x: rules.WPlus()(op, x, w, b), x)[1](R)[0]
    c = jax.vjp(lambda x: rules.SignedWPlus()(op, x, w, b), x)[1](R)[0]
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-6, rtol=1e-5)


def test_contributions_flag_must_be_a_bool():
    with pytest.raises(ConfigError, match="contributions"):
        rules.WPlus(contributions="yes")
    with pytest.raises(ConfigError, match="contributions"):
        rules.AlphaBeta(1.0, 1.0, contributions=1)


# ------------------------------------------------------------------------------------------
# new layer kinds: add (proportional), gate (held constant), activation (pass-through)
# ------------------------------------------------------------------------------------------


class _Add(nn.Module):
    relevance_kind: ClassVar[str] = "add"

    def __call__(self, *xs):
        return functools.reduce(lambda a, b: a + b, xs)


class _Gate(nn.Module):
    relevance_kind: ClassVar[str] = "gate"

    def __call__(self, x, g):
        return x * g


class _Hardswish(nn.Module):
    relevance_kind: ClassVar[str] = "activation"

    def __call__(self, x):
        return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


class _Net(nn.Module):
    """y = hardswish(a) + b + c; out = y * sigmoid(mean(y)) (a gate computed from y)."""

    @nn.compact
    def __call__(self, abc):
        a, b, c = abc[..., 0], abc[..., 1], abc[..., 2]
        y = _Add(name="add")(_Hardswish(name="act")(a), b, c)
        g = jax.nn.sigmoid(jnp.mean(y, axis=-1, keepdims=True) * jnp.arange(1.0, 1.0 + y.shape[-1]))
        return _Gate(name="gate")(y, g)


NEW_KINDS = Composite(
    rules=(
        (Kind("add"), rules.Proportional(0.01, by_sign=False)),
        (Kind("gate"), rules.PassThrough()),
        (Kind("activation"), rules.PassThrough()),
    )
)


def test_add_gate_and_activation_rules_match_hand_formulas():
    rng = np.random.default_rng(0)
    abc = rng.normal(size=(2, 5, 3)).astype(np.float32)
    R_out = rng.normal(size=(2, 5)).astype(np.float32)
    out, explain = relevance_vjp(_Net().apply, {}, jnp.asarray(abc), NEW_KINDS)
    R = np.asarray(explain(R_out))
    a, b, c = (abc[..., k].astype(np.float64) for k in range(3))
    h = a * np.clip(a + 3, 0, 6) / 6
    y = h + b + c
    g = 1 / (1 + np.exp(-(y.mean(-1, keepdims=True) * np.arange(1.0, 6.0))))
    np.testing.assert_allclose(np.asarray(out), y * g, rtol=1e-5, atol=1e-6)
    # gate: R_y = R_out (g constant: no relevance through g's dependence on y)
    # add (the value split): R_k = z_k / stab(y, 0.01) R_y;  activation: R_a = R_h
    inv = 1 / stab(y, 0.01)
    expected = np.stack([h * inv * R_out, b * inv * R_out, c * inv * R_out], axis=-1)
    np.testing.assert_allclose(R, expected, rtol=1e-4, atol=1e-6)
    # conservation through the add up to the stabiliser
    np.testing.assert_allclose(R.sum(-1), y / stab(y, 0.01) * R_out, rtol=1e-4, atol=1e-6)


def test_without_rules_the_same_modules_give_the_gradient():
    rng = np.random.default_rng(1)
    abc = jnp.asarray(rng.normal(size=(1, 4, 3)).astype(np.float32))
    R_out = jnp.asarray(rng.normal(size=(1, 4)).astype(np.float32))
    _, explain = relevance_vjp(_Net().apply, {}, abc, Composite())
    grad = jax.vjp(lambda v: _Net().apply({}, v), abc)[1](R_out)[0]
    np.testing.assert_allclose(np.asarray(explain(R_out)), np.asarray(grad), rtol=1e-5, atol=1e-6)


def test_proportional_rejects_addends_of_another_shape():
    class Broadcasting(nn.Module):
        relevance_kind: ClassVar[str] = "add"

        def __call__(self, a, b):
            return a + b

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Broadcasting(name="bad_add")(x, x[:, :1])

    comp = Composite(rules=((Kind("add"), rules.Proportional()),))
    with pytest.raises(ConfigError, match="bad_add"):
        relevance_vjp(Net().apply, {}, jnp.ones((2, 3)), comp)
    with pytest.raises(ConfigError, match="Proportional.stabilizer"):
        rules.Proportional(0.0)
