"""Tests of crp_jax.relevance.linear: the (apply, transpose) pairs every rule is written on.

``ConvOp.transpose`` is a forward convolution on a flipped, transposed kernel; here it is
checked against the true adjoint of the convolution, taken by ``jax.vjp`` of
``lax.conv_general_dilated`` (an implementation that shares nothing with the code under
test), over strides, dilations, paddings (incl. asymmetric and larger than the kernel) and
input sizes where a strided conv never reads the last rows.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from crp_jax.errors import CRPError
from crp_jax.relevance import rules
from crp_jax.relevance.composite import Composite
from crp_jax.relevance.core import relevance_vjp
from crp_jax.relevance.linear import ConvOp, DenseOp, conv_op_from_module

_DN = ("NHWC", "HWIO", "NHWC")
ATOL, RTOL = 1e-5, 1e-4

# Each check runs as one compiled program (cheaper than op-by-op dispatch) at XLA's lowest
# optimisation level: the optimisation passes dominate compile time here and change
# nothing that is tested.
_FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def _fast_jit(fn):
    def call(*args):
        lowered = jax.jit(fn).lower(*args)
        try:
            compiled = lowered.compile(compiler_options=_FAST_COMPILE)
        except Exception:  # an XLA without these options: compile as usual
            compiled = lowered.compile()
        return compiled(*args)

    return call


def _rand(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# ------------------------------------------------------------------------------------------
# ConvOp.transpose is the adjoint of ConvOp.apply
# ------------------------------------------------------------------------------------------

# (H, W, kernel (kh, kw), strides, padding ((t, b), (l, r)), dilation)
CONV_CASES = {
    "3x3_s1_p1": (7, 7, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    "3x3_s1_p0": (7, 7, (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    "3x3_s2_p1_odd": (9, 9, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "3x3_s2_p1_even": (10, 10, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    # 10x10, 3x3, stride 2, no padding: output 4x4 reads rows 0..8, row/col 9 is never read
    "3x3_s2_p0_last_row_unread": (10, 10, (3, 3), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    "3x3_s2_p0_odd": (9, 9, (3, 3), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    "3x3_s3_p0_two_rows_unread": (11, 11, (3, 3), (3, 3), ((0, 0), (0, 0)), (1, 1)),
    "3x3_d2_p2": (8, 8, (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    "3x3_d6_p6_conv6": (9, 9, (3, 3), (1, 1), ((6, 6), (6, 6)), (6, 6)),
    "3x3_d6_p6_small_input": (5, 5, (3, 3), (1, 1), ((6, 6), (6, 6)), (6, 6)),
    "3x3_d2_s2_p1": (9, 10, (3, 3), (2, 2), ((1, 1), (1, 1)), (2, 2)),
    "3x3_p6_larger_than_kernel": (5, 6, (3, 3), (1, 1), ((6, 6), (6, 6)), (1, 1)),
    "3x3_asym_pad_s1": (7, 8, (3, 3), (1, 1), ((0, 1), (1, 0)), (1, 1)),
    "3x3_asym_pad_s2": (8, 9, (3, 3), (2, 2), ((2, 0), (0, 1)), (1, 1)),
    "3x3_asym_pad_s2_d2": (11, 10, (3, 3), (2, 2), ((0, 3), (2, 1)), (2, 2)),
    "1x1": (7, 7, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    "1x1_s2_odd": (7, 7, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    "1x1_s2_even_last_row_unread": (8, 8, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    "1x1_p1": (5, 5, (1, 1), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    "2x3_s21_mixed": (8, 7, (2, 3), (2, 1), ((1, 0), (1, 1)), (1, 2)),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_transpose_is_adjoint_of_apply(case):
    H, W, (kh, kw), strides, padding, dilation = CONV_CASES[case]
    N, cin, cout = 2, 3, 4
    op = ConvOp(strides=strides, padding=padding, dilation=dilation)
    x = _rand(0, (N, H, W, cin))
    w = _rand(1, (kh, kw, cin, cout))

    def ref_conv(x):
        return lax.conv_general_dilated(
            x,
            w,
            strides,
            padding,
            rhs_dilation=dilation,
            dimension_numbers=_DN,
            precision=lax.Precision.HIGHEST,
        )

    out_shape = jax.eval_shape(ref_conv, x).shape
    s = _rand(2, out_shape)

    @_fast_jit
    def both(x, w, s):
        y_ref, vjp = jax.vjp(ref_conv, x)
        return y_ref, vjp(s)[0], op.apply(x, w), op.transpose(s, ConvOp().transpose_kernel(w), (H, W))

    y_ref, adj, y, got = both(x, w, s)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, atol=ATOL, rtol=RTOL)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, adj, atol=ATOL, rtol=RTOL)

    # the adjoint identity <apply(x), s> == <x, transpose(s)> in float64
    lhs = np.sum(np.asarray(y, np.float64) * s)
    rhs = np.sum(x.astype(np.float64) * np.asarray(got, np.float64))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-3)


def test_conv_transpose_zeroes_rows_the_forward_never_reads():
    # 10x10, 3x3 stride 2 valid: rows/cols 9 are outside every window
    op = ConvOp(strides=(2, 2))
    w = _rand(3, (3, 3, 2, 3))
    s = _rand(4, (1, 4, 4, 3))
    got = np.asarray(op.transpose(s, ConvOp().transpose_kernel(w), (10, 10)))
    assert got.shape == (1, 10, 10, 2)
    assert np.all(got[:, 9, :, :] == 0) and np.all(got[:, :, 9, :] == 0)
    assert np.any(got[:, 8, :, :] != 0)


def test_transpose_kernel_flips_and_swaps():
    w = _rand(5, (3, 2, 4, 5))
    wt = np.asarray(ConvOp().transpose_kernel(w))
    assert wt.shape == (3, 2, 5, 4)
    for a in range(3):
        for b in range(2):
            np.testing.assert_array_equal(wt[a, b], w[2 - a, 1 - b].T)


@pytest.mark.parametrize("xshape", [(3, 5), (2, 3, 5)])
def test_dense_transpose_is_adjoint(xshape):
    op = DenseOp()
    x = _rand(6, xshape)
    w = _rand(7, (5, 4))
    y_ref, vjp = jax.vjp(lambda x: jnp.matmul(x, w, precision=lax.Precision.HIGHEST), x)
    np.testing.assert_allclose(op.apply(x, w), y_ref, atol=ATOL, rtol=RTOL)
    s = _rand(8, y_ref.shape)
    (adj,) = vjp(s)
    got = op.transpose(s, DenseOp.transpose_kernel(w))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, adj, atol=ATOL, rtol=RTOL)
    # against the explicit float64 formula s @ w.T
    np.testing.assert_allclose(got, s.astype(np.float64) @ w.T.astype(np.float64), atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------
# conv_op_from_module
# ------------------------------------------------------------------------------------------


def _random_variables(module, x, seed=0):
    """Variables shaped as ``module.init`` would make them (traced only, never compiled:
    flax's initialisers are slow to compile on CPU), filled with random numbers; biases are
    non-zero so that a module output is never just the convolution."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        tree, [rng.normal(scale=0.5, size=leaf.shape).astype(np.float32) for leaf in leaves]
    )


def _bound_conv(x, **kw):
    m = nn.Conv(**kw)
    v = _random_variables(m, x)
    return m, v, m.bind(v)


MODULE_CASES = {
    "same_3x3": dict(features=4, kernel_size=(3, 3), padding="SAME"),
    "same_lower_case": dict(features=4, kernel_size=(3, 3), padding="same"),
    "same_4x4_even_kernel": dict(features=4, kernel_size=(4, 4), padding="SAME"),
    "same_2x3": dict(features=4, kernel_size=(2, 3), padding="SAME"),
    "same_3x3_dilated": dict(features=4, kernel_size=(3, 3), padding="SAME", kernel_dilation=(2, 3)),
    "valid_3x3": dict(features=4, kernel_size=(3, 3), padding="VALID"),
    "valid_3x3_s2": dict(features=4, kernel_size=(3, 3), padding="VALID", strides=(2, 2)),
    "valid_3x3_s2_int_stride": dict(features=4, kernel_size=(3, 3), padding="VALID", strides=2),
    "int_1": dict(features=4, kernel_size=(3, 3), padding=1),
    "int_6_dil_6": dict(features=4, kernel_size=(3, 3), padding=6, kernel_dilation=6),
    "int_1_s2": dict(features=4, kernel_size=(3, 3), padding=1, strides=(2, 2)),
    "pairs_asym": dict(features=4, kernel_size=(3, 3), padding=((0, 1), (2, 0))),
    "pairs_asym_s2": dict(features=4, kernel_size=(3, 3), padding=((1, 0), (0, 1)), strides=(2, 2)),
    "per_dim_ints": dict(features=4, kernel_size=(3, 3), padding=(1, 2)),
    "mixed_int_pair": dict(features=4, kernel_size=(3, 3), padding=(0, (1, 2)), strides=(1, 2)),
    "1x1_no_bias": dict(features=4, kernel_size=(1, 1), use_bias=False),
}


@pytest.mark.parametrize("case", sorted(MODULE_CASES))
def test_conv_op_from_module_matches_flax(case):
    x = _rand(9, (2, 9, 10, 3))  # one odd and one even side
    m, v, bound = _bound_conv(x, **MODULE_CASES[case])
    op = conv_op_from_module(bound)
    assert isinstance(op, ConvOp)

    @_fast_jit
    def both(v, x):
        p = v["params"]
        return m.apply(v, x), op.apply(x, p["kernel"]) + (p["bias"] if "bias" in p else 0.0)

    y, mine = both(v, x)
    assert mine.shape == y.shape
    np.testing.assert_allclose(mine, y, atol=ATOL, rtol=RTOL)


def test_conv_op_from_module_explicit_fields():
    x = _rand(9, (1, 9, 9, 3))
    op = conv_op_from_module(_bound_conv(x, features=2, kernel_size=(3, 3), padding="SAME", kernel_dilation=2)[2])
    assert op == ConvOp(strides=(1, 1), padding=((2, 2), (2, 2)), dilation=(2, 2))
    op = conv_op_from_module(_bound_conv(x, features=2, kernel_size=(4, 4), padding="SAME")[2])
    assert op.padding == ((1, 2), (1, 2))  # lax/flax SAME puts the extra pad at the end
    op = conv_op_from_module(_bound_conv(x, features=2, kernel_size=(3, 3), padding=((0, 1), (2, 3)), strides=2)[2])
    assert op == ConvOp(strides=(2, 2), padding=((0, 1), (2, 3)), dilation=(1, 1))


UNSUPPORTED = {
    "same_strided": ((1, 9, 9, 3), dict(features=2, kernel_size=(3, 3), padding="SAME", strides=(2, 2))),
    "circular": ((1, 9, 9, 3), dict(features=2, kernel_size=(3, 3), padding="CIRCULAR")),
    "input_dilated": ((1, 9, 9, 3), dict(features=2, kernel_size=(3, 3), padding=1, input_dilation=2)),
    "3d": ((1, 5, 5, 5, 3), dict(features=2, kernel_size=(3, 3, 3), padding=1)),
    "1d_tuple": ((1, 9, 3), dict(features=2, kernel_size=(3,), padding=1)),
    # flax reads an int kernel_size as a 1-D kernel (kernel_size,)
    "1d_int": ((1, 9, 3), dict(features=2, kernel_size=3, padding=1)),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_conv_op_from_module_unsupported_raise_crp_error(case):
    xshape, kw = UNSUPPORTED[case]
    _m, _v, bound = _bound_conv(np.ones(xshape, np.float32), **kw)
    with pytest.raises(CRPError):
        conv_op_from_module(bound)


def test_unsupported_conv_under_a_rule_raises_crp_error():
    x = np.ones((1, 9, 9, 3), np.float32)
    m = nn.Conv(2, (3, 3), padding="SAME", strides=2)
    v = _random_variables(m, x)
    comp = Composite(rules=((nn.Conv, rules.WPlus()),))
    with pytest.raises(CRPError):
        relevance_vjp(m.apply, v, x, comp)


# ------------------------------------------------------------------------------------------
# The interceptor path: a flax Conv under a composite
# ------------------------------------------------------------------------------------------


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="conv_a")(x))
        x = nn.Conv(3, (3, 3), padding="SAME", kernel_dilation=2, name="conv_b")(x)
        return nn.Dense(2, name="fc")(x.reshape(x.shape[0], -1))


def _net_and_vars():
    x = jnp.asarray(np.abs(_rand(10, (2, 9, 9, 3))))
    net = _Net()
    return net, _random_variables(net, x, seed=1), x


@pytest.mark.parametrize(
    "rule",
    [rules.Gradient(), rules.WPlus(), rules.AlphaBeta(2.0, 1.0), rules.ZBox(-1.0, 2.0)],
    ids=lambda r: type(r).__name__,
)
def test_intercepted_conv_forward_equals_plain(rule):
    # a single nn.Conv applied directly, and a small Conv/Conv/Dense net
    x = _rand(11, (2, 10, 10, 3))
    m, v, _ = _bound_conv(x, features=4, kernel_size=(3, 3), strides=(2, 2), padding="VALID")
    net, nv, nx = _net_and_vars()
    comp = Composite(rules=((nn.Conv, rule), (nn.Dense, rules.Epsilon(0.1))))

    @_fast_jit
    def run(v, x, nv, nx):
        plain = m.apply(v, x)
        with comp.intercept():
            under = m.apply(v, x)
        out, _ = relevance_vjp(m.apply, v, x, comp)
        nout, _ = relevance_vjp(net.apply, nv, nx, comp)
        return plain, under, out, net.apply(nv, nx), nout

    plain, under, out, nplain, nout = run(v, x, nv, nx)
    np.testing.assert_allclose(under, plain, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(out, plain, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(nout, nplain, atol=ATOL, rtol=RTOL)


def test_gradient_rule_backward_is_the_gradient():
    net, v, x = _net_and_vars()
    R = _rand(12, (2, 2))
    comp = Composite(rules=((nn.Conv, rules.Gradient()),))

    @_fast_jit
    def run(v, x, R):
        _, explain = relevance_vjp(net.apply, v, x, comp)
        _, vjp = jax.vjp(lambda x: net.apply(v, x), x)
        return explain(R), vjp(R)[0]

    got, grad = run(v, x, R)
    np.testing.assert_allclose(got, grad, atol=ATOL, rtol=RTOL)


def test_intercepted_conv_backward_equals_direct_rule():
    # one conv: relevance_vjp under the composite == the rule called on (op, x, kernel, bias)
    x = np.abs(_rand(13, (1, 9, 9, 3)))
    kw = dict(strides=(2, 2), padding=((1, 0), (0, 1)))
    m, v, _ = _bound_conv(x, features=4, kernel_size=(3, 3), **kw)
    rule = rules.WPlus()
    comp = Composite(rules=((nn.Conv, rule),))
    op = ConvOp(**kw)
    R = _rand(14, (1, 4, 4, 4))

    @_fast_jit
    def run(v, x, R):
        _, explain = relevance_vjp(m.apply, v, x, comp)
        p = v["params"]
        _, vjp = jax.vjp(lambda x: rule(op, x, p["kernel"], p["bias"]), x)
        _, gvjp = jax.vjp(lambda x: m.apply(v, x), x)
        return explain(R), vjp(R)[0], gvjp(R)[0]

    got, direct, grad = run(v, x, R)
    np.testing.assert_allclose(got, direct, atol=ATOL, rtol=RTOL)
    # and differs from the plain gradient (the rule really ran)
    assert not np.allclose(got, grad, atol=1e-3)
