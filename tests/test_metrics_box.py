"""Pointing game with tolerance, heatmap similarities (Spearman, SSIM) and the box-aware
deletion curve, on hand-built inputs whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crp_jax import metrics as M
from crp_jax.errors import InputError

# ------------------------------------------------------------------------------------------
# pointing game
# ------------------------------------------------------------------------------------------


def test_the_tolerance_is_15_px_at_224_px_scaled_to_the_input():
    assert M.pointing_tolerance(224) == 15.0
    assert M.pointing_tolerance(128) == pytest.approx(15 * 128 / 224)  # 8.571
    assert M.pointing_tolerance(300) == pytest.approx(20.089, abs=1e-3)


@pytest.mark.parametrize(
    ("col", "row", "hit"),
    [
        (50, 50, True),  # inside the box
        (68, 50, True),  # centre x 68.5: 8.5 px right of x1 = 60, tolerance 8.571
        (69, 50, False),  # centre x 69.5: 9.5 px, just outside
        (50, 31, True),  # centre y 31.5: 8.5 px above y0 = 40
        (50, 30, False),  # 9.5 px above
        (65, 65, True),  # diagonal: hypot(5.5, 5.5) = 7.78 px from the corner (60, 60)
        (66, 66, False),  # hypot(6.5, 6.5) = 9.19 px: inside the square band, outside the disc
    ],
)
def test_pointing_game_tolerance_band_at_128_px(col, row, hit):
    r = np.zeros((128, 128))
    r[row, col] = 1.0
    box = (40, 40, 60, 60)
    assert M.pointing_game(r, box) is hit


def test_pointing_game_explicit_tolerance_ties_and_constant_maps():
    r = np.zeros((20, 20))
    r[10, 15] = 2.0  # centre (15.5, 10.5): 3.5 px right of x1 = 12
    box = (2, 2, 12, 12)
    assert not M.pointing_game(r, box, tolerance=3.0)
    assert M.pointing_game(r, box, tolerance=3.5)
    assert not M.pointing_game(r, box, tolerance=0)
    r[5, 5] = 2.0  # a tied maximum inside the box counts
    assert M.pointing_game(r, box, tolerance=0)
    assert not M.pointing_game(np.ones((20, 20)), box)  # points nowhere
    with pytest.raises(InputError, match="tolerance"):
        M.pointing_game(r, box, tolerance=-1)
    with pytest.raises(InputError, match="size"):
        M.pointing_tolerance(0)


# ------------------------------------------------------------------------------------------
# Spearman and SSIM
# ------------------------------------------------------------------------------------------


def test_spearman_hand_values_with_and_without_ties():
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert M.spearman([[1, 2], [3, 4]], [[1, 3], [2, 4]]) == pytest.approx(0.8)
    # ties: ranks (1.5, 1.5, 3, 4) vs (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5)
    assert M.spearman([[1, 1], [2, 3]], [[1, 2], [3, 4]]) == pytest.approx(4.5 / math.sqrt(22.5))
    a = np.random.default_rng(0).normal(size=(6, 7))
    assert M.spearman(a, np.exp(3 * a)) == pytest.approx(1.0)  # any increasing map
    assert M.spearman(a, -a) == pytest.approx(-1.0)
    assert M.spearman(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert M.spearman(np.zeros((3, 3)), a[:3, :3]) == 0.0
    with pytest.raises(InputError, match="shape"):
        M.spearman(np.zeros((3, 3)), np.zeros((3, 4)))


def test_ssim_of_identical_maps_is_one_and_of_two_constants_is_the_luminance_term():
    a = np.random.default_rng(1).normal(size=(12, 10))
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(a, 5 * a) == pytest.approx(1.0, abs=1e-12)  # each map scaled to max |R| = 1
    # one 7x7 window, constants 1 and 0.5, raw values: L = 0.5, variances 0, so
    # SSIM = (2 * 1 * 0.5 + C1) / (1 + 0.25 + C1) with C1 = (0.01 * 0.5)^2
    c1 = (0.01 * 0.5) ** 2
    assert M.ssim(np.ones((7, 7)), np.full((7, 7), 0.5), normalize=False) == pytest.approx(
        (1 + c1) / (1.25 + c1), rel=1e-12
    )


def test_ssim_of_a_checkerboard_and_its_negation_by_hand():
    # 7x7 checkerboard of +-1 (25 of +1), mapped to [0, 1]: 25 ones and 24 zeros; its negation
    # the other way round. mu = 25/49 and 24/49, var = 25 * 24 / 49^2 each, cov = -var; L = 1
    a = np.where(np.add.outer(np.arange(7), np.arange(7)) % 2 == 0, 1.0, -1.0)
    mu_a, mu_b, var = 25 / 49, 24 / 49, 25 * 24 / 49**2
    c1, c2 = 0.01**2, 0.03**2
    want = ((2 * mu_a * mu_b + c1) * (-2 * var + c2)) / ((mu_a**2 + mu_b**2 + c1) * (2 * var + c2))
    assert M.ssim(a, -a) == pytest.approx(want, rel=1e-12)
    assert want < -0.99  # a sign flip is anti-correlation


def test_ssim_matches_a_window_by_window_loop():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(11, 9)), rng.normal(size=(11, 9))
    a_n, b_n = (a / np.abs(a).max() + 1) / 2, (b / np.abs(b).max() + 1) / 2
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(11 - 6):
        for j in range(9 - 6):
            x, y = a_n[i : i + 7, j : j + 7].ravel(), b_n[i : i + 7, j : j + 7].ravel()
            mx, my = x.mean(), y.mean()
            cov = ((x - mx) * (y - my)).mean()
            vals.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (x.var() + y.var() + c2)))
    assert M.ssim(a, b) == pytest.approx(np.mean(vals), rel=1e-10)
    with pytest.raises(InputError, match="window"):
        M.ssim(np.ones((5, 9)), np.ones((5, 9)))


# ------------------------------------------------------------------------------------------
# box-aware deletion
# ------------------------------------------------------------------------------------------

# A hand-built "detector": box centre x = 20 + sum_p x_p * w_p, width 10, rows 0..10, so
# gradient x input R_p = x_p * w_p is an exact attribution of cx (linear model, zero baseline).
R_HAND = np.array([[0.5, -0.2, 1.0, 0.1], [0.0, 0.8, -0.4, 0.3]])


def _linear_box_fn(images):
    cx = 20.0 + images[..., 0].reshape(len(images), -1) @ R_HAND.ravel()
    return np.stack([cx - 5, np.zeros_like(cx), cx + 5, np.full_like(cx, 10.0)], axis=-1)


def test_box_deletion_curve_of_a_linear_decoding_by_hand():
    image = np.ones((2, 4, 1))
    out = M.box_deletion(_linear_box_fn, image, R_HAND, "cx", +1, steps=4, max_fraction=1.0, baseline=0.0)
    # two pixels per step, most relevant first: 1.0 + 0.8, then 0.5 + 0.3, 0.1 + 0.0, -0.2 - 0.4
    np.testing.assert_allclose(out["shift"], [0, 1.8, 2.6, 2.7, 2.1], atol=1e-12)
    np.testing.assert_allclose(out["fractions"], [0, 0.25, 0.5, 0.75, 1.0])
    # boxes of width 10 shifted by d: IoU = (10 - d) / (10 + d)
    d = np.array([0, 1.8, 2.6, 2.7, 2.1])
    np.testing.assert_allclose(out["iou"], (10 - d) / (10 + d), atol=1e-12)
    assert out["aopc_shift"] == pytest.approx((1.8 + 2.6 + 2.7 + 2.1) / 5)
    assert out["aopc_iou"] == pytest.approx(np.mean(1 - (10 - d) / (10 + d)))


def test_box_deletion_sign_minus_one_counts_moving_right_as_correct():
    image = np.ones((2, 4, 1))
    out = M.box_deletion(_linear_box_fn, image, -R_HAND, "cx", -1, steps=4, max_fraction=1.0, baseline=0.0)
    # the -cx map's top pixels are R = -0.4, -0.2 (removing them moves cx right by 0.6), then
    # 0.0, 0.1 (left 0.1), then 0.3, 0.5, then 0.8, 1.0
    np.testing.assert_allclose(out["shift"], [0, 0.6, 0.5, -0.3, -2.1], atol=1e-12)


def test_box_deletion_width_and_random_order_and_errors():
    def width_box_fn(images):  # width = 10 + 2 * sum x: the box grows symmetrically
        wdt = 10.0 + 2 * images[..., 0].reshape(len(images), -1).sum(1)
        return np.stack([20 - wdt / 2, np.zeros_like(wdt), 20 + wdt / 2, np.full_like(wdt, 10.0)], axis=-1)

    image = np.ones((2, 4, 1))
    out = M.box_deletion(width_box_fn, image, np.ones((2, 4)), "w", +1, steps=2, max_fraction=0.5, baseline=0.0)
    np.testing.assert_allclose(out["shift"], [0, 4.0, 8.0])  # 2 px per deleted pixel, 2 pixels per step
    rnd = M.box_deletion(
        width_box_fn, image, np.ones((2, 4)), "w", +1, steps=2, max_fraction=0.5, baseline=0.0, order="random", rng=1
    )
    np.testing.assert_allclose(rnd["shift"], [0, 4.0, 8.0])  # every pixel counts the same here
    with pytest.raises(InputError, match="coord"):
        M.box_deletion(width_box_fn, image, np.ones((2, 4)), "z", 1)
    with pytest.raises(InputError, match="sign"):
        M.box_deletion(width_box_fn, image, np.ones((2, 4)), "w", 0)
    with pytest.raises(InputError, match="max_fraction"):
        M.box_deletion(width_box_fn, image, np.ones((2, 4)), "w", 1, max_fraction=1.5)
    with pytest.raises(InputError, match=r"\[N, 4\]"):
        M.box_deletion(lambda b: np.zeros((len(b), 3)), image, np.ones((2, 4)), "w", 1)
