"""crp_jax.grouped_conv: the tap-by-tap grouped convolution equals lax.conv_general_dilated
(values and gradients) for every geometry the models and the rules' adjoints use."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax import lax

from crp_jax.grouped_conv import conv_general_dilated

DN = ("NHWC", "HWIO", "NHWC")

CASES = {
    # name: (H, W, groups, m = Cin/G, n = Cout/G, kernel, strides, padding, lhs_dilation, rhs_dilation)
    "depthwise3x3": (9, 9, 6, 1, 1, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1)),
    "depthwise5x5_s2": (11, 10, 5, 1, 1, (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1), (1, 1)),
    "depthwise_asym_pad": (8, 7, 4, 1, 1, (3, 2), (2, 1), ((0, 2), (1, 0)), (1, 1), (1, 1)),
    "depthwise_dilated": (12, 12, 3, 1, 1, (3, 3), (1, 1), ((2, 2), (2, 2)), (1, 1), (2, 2)),
    "multiplier2": (7, 7, 4, 1, 2, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1)),
    "stacked2x2": (7, 8, 3, 2, 2, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1)),
    # the adjoint of a stride-2 conv: input dilation and a negative pad (ConvOp.transpose)
    "adjoint_s2": (5, 5, 4, 1, 1, (3, 3), (1, 1), ((1, -1), (1, 0)), (2, 2), (1, 1)),
}


def _problem(case, seed=0):
    H, W, G, m, n, k, s, p, ld, rd = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, H, W, G * m)).astype(np.float32)
    w = rng.normal(size=(*k, m, G * n)).astype(np.float32)
    kw = dict(lhs_dilation=ld, rhs_dilation=rd, dimension_numbers=DN, feature_group_count=G)
    return x, w, s, p, kw


@pytest.mark.parametrize("case", sorted(CASES))
def test_taps_equal_xla_values_and_gradients(case):
    x, w, s, p, kw = _problem(case)

    def ours(x, w):
        return conv_general_dilated(x, w, s, p, **kw)

    def ref(x, w):
        return lax.conv_general_dilated(x, w, s, p, **kw)

    a, b = ours(x, w), ref(x, w)
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    ct = np.random.default_rng(1).normal(size=b.shape).astype(np.float32)
    ga = jax.vjp(ours, x, w)[1](ct)
    gb = jax.vjp(ref, x, w)[1](ct)
    for u, v in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-4)


def test_other_calls_go_to_xla_unchanged():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 6, 8)).astype(np.float32)
    w = rng.normal(size=(3, 3, 8, 4)).astype(np.float32)  # not grouped
    a = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
    b = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # many channels per group: XLA's grouped conv
    w = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
    a = conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN, feature_group_count=2)
    b = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN, feature_group_count=2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
