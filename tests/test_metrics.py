"""Tests of crp_jax.metrics on hand-built heatmaps whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from crp_jax import metrics as M
from crp_jax.errors import InputError

# ------------------------------------------------------------------------------------------
# box_mask
# ------------------------------------------------------------------------------------------


def test_box_mask_pixel_centres():
    m = M.box_mask((2, 3, 5, 7), (10, 10))
    expected = np.zeros((10, 10), bool)
    expected[3:7, 2:5] = True  # rows 3..6 (centres 3.5..6.5 < 7), columns 2..4
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 12


def test_box_mask_fractional_edges_and_shared_edges():
    # centre 1.5 lies in [1.4, 1.6) -> column 1 only
    assert np.argwhere(M.box_mask((1.4, 0, 1.6, 1), (2, 4))).tolist() == [[0, 1]]
    # [1.5, 2.5): centre 1.5 is in, centre 2.5 is out (half-open)
    assert np.argwhere(M.box_mask((1.5, 0, 2.5, 1), (1, 4))).tolist() == [[0, 1]]
    left = M.box_mask((0, 0, 4.5, 6), (6, 8))
    right = M.box_mask((4.5, 0, 8, 6), (6, 8))
    assert not np.any(left & right)
    assert np.all(left | right)
    # shape with a channel axis, box partly/entirely outside the image
    assert M.box_mask((-5, -5, 1, 1), (3, 3, 3)).sum() == 1
    assert M.box_mask((10, 10, 20, 20), (3, 3)).sum() == 0


def test_box_mask_errors():
    with pytest.raises(InputError, match="x1 < x0"):
        M.box_mask((5, 0, 2, 4), (8, 8))
    with pytest.raises(InputError, match="shape"):
        M.box_mask((0, 0, 2), (8, 8))
    with pytest.raises(InputError, match="non-finite"):
        M.box_mask((0, 0, np.nan, 2), (8, 8))
    with pytest.raises(InputError, match="shape"):
        M.box_mask((0, 0, 2, 2), (8,))


# ------------------------------------------------------------------------------------------
# energy pointing game
# ------------------------------------------------------------------------------------------


def _epg_heatmap():
    r = np.zeros((10, 10))
    r[2, 2] = 1.0  # inside box (0, 0, 5, 5)
    r[3, 3] = 2.0  # inside
    r[1, 1] = -4.0  # inside but negative: ignored
    r[8, 8] = 1.0  # outside
    r[9, 0] = -3.0  # outside, negative: ignored
    return r


def test_energy_pointing_game_hand_value():
    assert M.energy_pointing_game(_epg_heatmap(), (0, 0, 5, 5)) == pytest.approx(3.0 / 4.0)
    # box covering only the outside unit
    assert M.energy_pointing_game(_epg_heatmap(), (8, 8, 9, 9)) == pytest.approx(1.0 / 4.0)


def test_energy_pointing_game_sums_channels_before_clipping():
    r3 = np.zeros((10, 10, 3))
    r3[2, 2] = (0.5, 0.25, 0.25)  # inside, channel sum 1
    r3[3, 3] = (1.0, 1.0, 0.0)  # inside, channel sum 2
    r3[8, 8] = (2.0, -2.0, 0.0)  # outside, channel sum 0 -> no positive relevance
    # 3 / 3 if channels are summed first; 3 / 5 if clipped per channel
    assert M.energy_pointing_game(r3, (0, 0, 5, 5)) == pytest.approx(1.0)


def test_energy_pointing_game_no_positive_relevance_is_zero():
    assert M.energy_pointing_game(-np.ones((4, 4)), (0, 0, 2, 2)) == 0.0
    assert M.energy_pointing_game(np.zeros((4, 4)), (0, 0, 4, 4)) == 0.0


def test_energy_pointing_game_accepts_jax_arrays():
    import jax.numpy as jnp

    assert M.energy_pointing_game(jnp.asarray(_epg_heatmap()), jnp.array([0.0, 0, 5, 5])) == (pytest.approx(0.75))


def test_energy_pointing_game_errors():
    with pytest.raises(InputError, match="shape"):
        M.energy_pointing_game(np.ones(10), (0, 0, 2, 2))
    with pytest.raises(InputError, match="shape"):
        M.energy_pointing_game(np.ones((4, 4, 5)), (0, 0, 2, 2))
    with pytest.raises(InputError, match="empty"):
        M.energy_pointing_game(np.ones((0, 4)), (0, 0, 2, 2))
    bad = np.ones((4, 4))
    bad[1, 1] = np.inf
    with pytest.raises(InputError, match="non-finite"):
        M.energy_pointing_game(bad, (0, 0, 2, 2))
    with pytest.raises(InputError, match="dtype"):
        M.energy_pointing_game(np.array([["a", "b"], ["c", "d"]]), (0, 0, 2, 2))


# ------------------------------------------------------------------------------------------
# class discriminativeness
# ------------------------------------------------------------------------------------------


def test_class_discriminativeness_identical_and_negated():
    a = np.random.default_rng(1).normal(size=(6, 7))
    assert M.class_discriminativeness(a, a) == pytest.approx(1.0)
    assert M.class_discriminativeness(a, -a) == pytest.approx(-1.0)
    assert M.class_discriminativeness(a, 2.0 * a + 3.0) == pytest.approx(1.0)


def test_class_discriminativeness_hand_value():
    # a - 2.5 = (-1.5, -0.5, 0.5, 1.5), b - 2.5 = (-1.5, 0.5, -0.5, 1.5)
    # dot = 2.25 - 0.25 - 0.25 + 2.25 = 4, both squared norms 5 -> r = 4 / 5
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.0, 3.0], [2.0, 4.0]])
    assert M.class_discriminativeness(a, b) == pytest.approx(0.8)
    # the same pairs at a tiny scale (no underflow to NaN)
    assert M.class_discriminativeness(a * 1e-200, b * 1e-200) == pytest.approx(0.8)


def test_class_discriminativeness_mask_restricts():
    a = np.array([[1.0, 2.0, 9.0], [3.0, 4.0, 0.0]])
    b = np.array([[1.0, 3.0, -5.0], [2.0, 4.0, 7.0]])
    mask = np.array([[1, 1, 0], [1, 1, 0]], dtype=bool)
    assert M.class_discriminativeness(a, b, mask=mask) == pytest.approx(0.8)
    assert M.class_discriminativeness(a, b) < 0.0  # column 2 anti-correlates strongly
    box = M.box_mask((0, 0, 2, 2), a.shape)
    assert M.class_discriminativeness(a, b, mask=box) == pytest.approx(0.8)


def test_class_discriminativeness_zero_variance():
    c = np.full((3, 3), 2.0)
    assert M.class_discriminativeness(c, c.copy()) == 1.0
    assert M.class_discriminativeness(c, c + 1.0) == 0.0
    assert M.class_discriminativeness(c, np.arange(9.0).reshape(3, 3)) == 0.0
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    a = np.arange(9.0).reshape(3, 3)
    assert M.class_discriminativeness(a, a, mask=one) == 1.0
    assert M.class_discriminativeness(a, a + 1, mask=one) == 0.0


def test_class_discriminativeness_errors():
    a = np.ones((3, 3))
    with pytest.raises(InputError, match="shape"):
        M.class_discriminativeness(a, np.ones((3, 4)))
    with pytest.raises(InputError, match="no pixel"):
        M.class_discriminativeness(a, a, mask=np.zeros((3, 3), bool))
    with pytest.raises(InputError, match="mask has shape"):
        M.class_discriminativeness(a, a, mask=np.ones((2, 2), bool))
    with pytest.raises(InputError, match="0 and 1"):
        M.class_discriminativeness(a, a, mask=np.full((3, 3), 2))


# ------------------------------------------------------------------------------------------
# part enrichment
# ------------------------------------------------------------------------------------------


def _masks():
    obj = np.zeros((10, 10), bool)
    obj[0:4, 0:5] = True  # 20 pixels
    part = np.zeros((10, 10), bool)
    part[0:2, 0:2] = True  # 4 pixels, inside the object: area share 4 / 20 = 0.2
    return obj, part


def test_part_enrichment_uniform_is_one():
    obj, part = _masks()
    r = np.where(obj, 1.0, 7.0)  # relevance off the object is ignored
    assert M.part_enrichment(r, part, obj) == pytest.approx(1.0)


def test_part_enrichment_all_in_part_is_inverse_area_share():
    obj, part = _masks()
    r = np.where(part, 1.0, 0.0)
    r[~obj] = 3.0
    assert M.part_enrichment(r, part, obj) == pytest.approx(1.0 / 0.2)


def test_part_enrichment_half_in_part():
    obj, part = _masks()
    r = np.zeros((10, 10))
    r[part] = 1.0  # 4 units in the part
    r[obj & ~part] = 0.25  # 16 pixels * 0.25 = 4 units elsewhere on the object
    r[0, 0] = 1.0
    r[5, 5] = -100.0  # negative, off-object
    r[3, 4] = -100.0  # negative on the object: ignored, it was 0.25 -> now clipped to 0
    # part: 4, rest of object: 4 - 0.25 = 3.75 -> share 4 / 7.75; area share 0.2
    assert M.part_enrichment(r, part, obj) == pytest.approx((4 / 7.75) / 0.2)


def test_part_enrichment_smaller_glyph_part_outside_object():
    obj = np.zeros((10, 10), bool)
    obj[2:4, 0:5] = True  # the smaller glyph's ink, 10 pixels
    part = np.zeros((10, 10), bool)
    part[0:2, 0:2] = True  # the larger glyph's extra stroke, outside: U has 14 pixels
    assert M.part_enrichment(np.where(obj, 1.0, 0.0), part, obj) == 0.0
    assert M.part_enrichment(np.where(obj | part, 1.0, 0.0), part, obj) == pytest.approx(1.0)
    assert M.part_enrichment(np.where(part, 2.0, 0.0), part, obj) == pytest.approx(14 / 4)


def test_part_enrichment_no_positive_relevance_and_errors():
    obj, part = _masks()
    assert M.part_enrichment(-np.ones((10, 10)), part, obj) == 0.0
    with pytest.raises(InputError, match="part_mask is empty"):
        M.part_enrichment(np.ones((10, 10)), np.zeros((10, 10), bool), obj)
    with pytest.raises(InputError, match="object_mask has shape"):
        M.part_enrichment(np.ones((10, 10)), part, obj[:5])


# ------------------------------------------------------------------------------------------
# region perturbation / AOPC
# ------------------------------------------------------------------------------------------


def _linear_setup():
    """8x8x3 image of ones, linear score f(x) = sum(w * x); 4x4 regions with relevance
    (w * x summed) 4, 1 / 3, 2 in the 2x2 region grid, so f(x0) = 10."""
    region_values = np.array([[4.0, 1.0], [3.0, 2.0]])
    w = np.kron(region_values, np.ones((4, 4)))[..., None] / (16.0 * 3.0) * np.ones((1, 1, 3))
    image = np.ones((8, 8, 3))
    heatmap = (w * image).sum(-1)

    def score_fn(batch):
        assert batch.ndim == 4 and batch.shape[1:] == (8, 8, 3)
        return (batch * w).sum(axis=(1, 2, 3))

    return score_fn, image, heatmap


def test_aopc_hand_value():
    assert M.aopc([5.0, 3.0, 1.0]) == pytest.approx((0 + 2 + 4) / 3)
    assert M.aopc([2.0]) == 0.0
    with pytest.raises(InputError, match="1-D"):
        M.aopc([])
    with pytest.raises(InputError, match="1-D"):
        M.aopc(np.ones((2, 2)))
    with pytest.raises(InputError, match="non-finite"):
        M.aopc([1.0, np.nan])


def test_region_perturbation_morf_lerf_hand_values():
    score_fn, image, heatmap = _linear_setup()
    res = M.region_perturbation(score_fn, image, heatmap, patch=4, steps=4, baseline=0.0)
    # remove 4, 3, 2, 1 -> scores 10, 6, 3, 1, 0; drops 0, 4, 7, 9, 10 -> AOPC 30 / 5
    np.testing.assert_allclose(res["curve"], [10, 6, 3, 1, 0], atol=1e-9)
    assert res["aopc"] == pytest.approx(6.0)
    assert res["order"].tolist() == [0, 2, 3, 1]
    np.testing.assert_allclose(res["region_relevance"], [[4, 1], [3, 2]])
    assert res["steps"] == 4 and res["patch"] == 4

    lerf = M.region_perturbation(score_fn, image, heatmap, patch=4, steps=4, baseline=0.0, order="least_relevant_first")
    # remove 1, 2, 3, 4 -> scores 10, 9, 7, 4, 0; drops 0, 1, 3, 6, 10 -> AOPC 4
    np.testing.assert_allclose(lerf["curve"], [10, 9, 7, 4, 0], atol=1e-9)
    assert lerf["aopc"] == pytest.approx(4.0)


def test_region_perturbation_morf_beats_random():
    score_fn, image, heatmap = _linear_setup()
    morf = M.region_perturbation(score_fn, image, heatmap, patch=4, steps=3, baseline=0.0)
    randoms = [
        M.region_perturbation(score_fn, image, heatmap, patch=4, steps=3, baseline=0.0, order="random", rng=seed)[
            "aopc"
        ]
        for seed in range(12)
    ]
    # MoRF's partial sums dominate every other order, so no random order can beat it
    assert all(a <= morf["aopc"] + 1e-12 for a in randoms)
    assert np.mean(randoms) < morf["aopc"] - 0.5
    assert len(set(np.round(randoms, 9))) > 1  # the order really is random


def test_region_perturbation_batching_and_cumulative_images():
    _, image, heatmap = _linear_setup()
    seen = []

    def score_fn(batch):
        seen.append(batch.copy())
        return batch.sum(axis=(1, 2, 3))

    res = M.region_perturbation(
        score_fn, image.astype(np.float32), heatmap, patch=4, steps=4, baseline=-1.0, batch_size=2
    )
    assert [b.shape[0] for b in seen] == [2, 2, 1]
    assert all(b.dtype == np.float32 for b in seen)
    imgs = np.concatenate(seen)
    np.testing.assert_array_equal(imgs[0], image)
    # step 1 replaced region 0 (top-left) only; step 2 also region 2 (bottom-left)
    assert np.all(imgs[1][:4, :4] == -1)
    assert np.all(imgs[1][:, 4:] == 1) and np.all(imgs[1][4:] == 1)
    assert np.all(imgs[2][:, :4] == -1) and np.all(imgs[2][:, 4:] == 1)
    assert np.all(imgs[4] == -1)
    # each 4x4x3 region changes the sum by 48 * (-1 - 1) = -96
    np.testing.assert_allclose(res["curve"], 192 - 96 * np.arange(5))


def test_region_perturbation_uniform_noise_bounds_and_seed():
    rng = np.random.default_rng(3)
    image = rng.uniform(0.2, 0.3, size=(12, 12, 3))
    heatmap = rng.normal(size=(12, 12))
    seen = []

    def score_fn(batch):
        seen.append(batch.copy())
        return batch.mean(axis=(1, 2, 3))

    low, high = (-1.0, 0.0, 2.0), (1.0, 0.5, 3.0)
    res = M.region_perturbation(score_fn, image, heatmap, patch=6, steps=4, low=low, high=high, rng=5)
    last = np.concatenate(seen)[-1]  # every region replaced
    for c in range(3):
        assert low[c] <= last[..., c].min() and last[..., c].max() <= high[c]
        assert last[..., c].std() > 0.05  # noise, not a constant
    again = M.region_perturbation(score_fn, image, heatmap, patch=6, steps=4, low=low, high=high, rng=5)
    other = M.region_perturbation(score_fn, image, heatmap, patch=6, steps=4, low=low, high=high, rng=6)
    np.testing.assert_array_equal(res["curve"], again["curve"])
    assert not np.allclose(res["curve"][1:], other["curve"][1:])


def test_region_perturbation_edge_regions_and_default_steps():
    image = np.full((10, 10, 3), 2.0)
    heatmap = np.ones((10, 10))
    # blur and mean of a constant image change nothing
    for baseline in ("blur", "mean"):
        res = M.region_perturbation(lambda b: b.sum(axis=(1, 2, 3)), image, heatmap, patch=4, baseline=baseline)
        assert res["steps"] == 9  # 3 x 3 regions (edge regions smaller), min(100, 9)
        np.testing.assert_allclose(res["curve"], np.full(10, 600.0))
        assert res["aopc"] == pytest.approx(0.0)
    np.testing.assert_allclose(res["region_relevance"], [[16, 16, 8], [16, 16, 8], [8, 8, 4]])
    # full-size regions first (ties keep raster order), then the edge ones
    assert res["order"].tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 8]


def test_region_perturbation_errors():
    score_fn, image, heatmap = _linear_setup()
    with pytest.raises(InputError, match="patch=0"):
        M.region_perturbation(score_fn, image, heatmap, patch=0)
    with pytest.raises(InputError, match="patch=9"):
        M.region_perturbation(score_fn, image, heatmap, patch=9)
    with pytest.raises(InputError, match="patch must be an int"):
        M.region_perturbation(score_fn, image, heatmap, patch=2.5)
    with pytest.raises(InputError, match="steps=0"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, steps=0)
    with pytest.raises(InputError, match="steps=5"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, steps=5)
    with pytest.raises(InputError, match="order"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, order="worst_first")
    with pytest.raises(InputError, match="baseline"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, baseline="zeros")
    with pytest.raises(InputError, match="baseline has shape"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, baseline=np.zeros(2))
    with pytest.raises(InputError, match="heatmap has shape"):
        M.region_perturbation(score_fn, image, heatmap[:4], patch=4)
    with pytest.raises(InputError, match=r"\[H, W, C\]"):
        M.region_perturbation(score_fn, image[..., 0], heatmap, patch=4)
    with pytest.raises(InputError, match="below low"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, low=1.0, high=0.0)
    with pytest.raises(InputError, match="low must be"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, low=(0, 0), high=1.0)
    with pytest.raises(InputError, match="score_fn returned shape"):
        M.region_perturbation(lambda b: np.zeros(3), image, heatmap, patch=4)
    with pytest.raises(InputError, match="score_fn output"):
        M.region_perturbation(lambda b: np.full(len(b), np.nan), image, heatmap, patch=4)
    with pytest.raises(InputError, match="callable"):
        M.region_perturbation(None, image, heatmap, patch=4)
    with pytest.raises(InputError, match="batch_size"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, batch_size=0)
    with pytest.raises(InputError, match="rng"):
        M.region_perturbation(score_fn, image, heatmap, patch=4, rng="seed")


# ------------------------------------------------------------------------------------------
# localization direction
# ------------------------------------------------------------------------------------------


def test_localization_direction_single():
    assert M.localization_direction(10.0, 8.0, +1) is True  # evidence for +cx removed: left
    assert M.localization_direction(10.0, 12.0, +1) is False
    assert M.localization_direction(10.0, 10.0, +1) is False  # no move is a failure
    assert M.localization_direction(10.0, 12.0, -1) is True
    assert M.localization_direction(10.0, 8.0, -1) is False
    with pytest.raises(InputError, match="sign"):
        M.localization_direction(1.0, 2.0, 0)
    with pytest.raises(InputError, match="scalars"):
        M.localization_direction([1.0, 2.0], [1.0, 2.0], 1)


def test_localization_direction_share():
    before = [10.0, 10.0, 10.0, 10.0, 5.0]
    after = [9.0, 11.0, 11.0, 10.0, 4.0]
    signs = [1, 1, -1, -1, -1]
    # ok, wrong, ok, no move, wrong -> 2 / 5
    assert M.localization_direction_share(before, after, signs) == pytest.approx(0.4)
    # one sign for all: ok, wrong, wrong, no move, ok -> 2 / 5 again, different boxes
    assert M.localization_direction_share(before, after, 1) == pytest.approx(0.4)
    assert M.localization_direction_share(before, after, -1) == pytest.approx(0.4)
    assert M.localization_direction_share([3.0], [1.0], [1]) == 1.0


def test_localization_direction_share_errors():
    with pytest.raises(InputError, match="empty"):
        M.localization_direction_share([], [], 1)
    with pytest.raises(InputError, match="shape"):
        M.localization_direction_share([1.0, 2.0], [1.0], 1)
    with pytest.raises(InputError, match="signs has shape"):
        M.localization_direction_share([1.0, 2.0], [1.0, 2.0], [1, 1, 1])
    with pytest.raises(InputError, match="signs must be"):
        M.localization_direction_share([1.0, 2.0], [1.0, 2.0], [1, 2])
    with pytest.raises(InputError, match="non-finite"):
        M.localization_direction_share([1.0, np.nan], [1.0, 2.0], 1)


def test_top_positive_mask_and_remove_positive_evidence():
    r = np.array(
        [
            [5.0, -1.0, 0.0, 0.0],
            [0.0, 3.0, 0.0, -2.0],
            [0.0, 0.0, 4.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    # fraction 0.1 of 16 pixels -> ceil(1.6) = 2 pixels: 5 and 4
    expected = np.zeros((4, 4), bool)
    expected[0, 0] = expected[2, 2] = True
    np.testing.assert_array_equal(M.top_positive_mask(r, 0.1), expected)
    # fraction 0.5 -> 8 pixels wanted, but only 3 are positive
    expected[1, 1] = True
    np.testing.assert_array_equal(M.top_positive_mask(r, 0.5), expected)

    image = np.ones((4, 4, 3))
    out = M.remove_positive_evidence(image, r, fraction=0.5, baseline=0.0)
    np.testing.assert_array_equal(out, np.where(expected[..., None], 0.0, np.ones((4, 4, 3))))
    # default baseline: the per-channel image mean
    img = np.zeros((4, 4, 3))
    img[..., 1] = np.arange(16.0).reshape(4, 4)  # channel-1 mean 7.5
    out = M.remove_positive_evidence(img, r, fraction=0.1)
    assert out[0, 0].tolist() == [0.0, 7.5, 0.0] and out[2, 2].tolist() == [0.0, 7.5, 0.0]
    assert out[1, 1].tolist() == [0.0, 5.0, 0.0]  # third-ranked pixel untouched at 0.1
    # jax input, float32 out
    import jax.numpy as jnp

    out32 = M.remove_positive_evidence(jnp.asarray(image, dtype=jnp.float32), r, 0.5, 0.0)
    assert out32.dtype == np.float32


def test_remove_positive_evidence_errors():
    r = np.ones((4, 4))
    with pytest.raises(InputError, match="fraction"):
        M.remove_positive_evidence(np.ones((4, 4, 3)), r, fraction=0.0)
    with pytest.raises(InputError, match="fraction"):
        M.remove_positive_evidence(np.ones((4, 4, 3)), r, fraction=1.5)
    with pytest.raises(InputError, match="heatmap has shape"):
        M.remove_positive_evidence(np.ones((5, 4, 3)), r)


# ------------------------------------------------------------------------------------------
# conservation
# ------------------------------------------------------------------------------------------


def test_conservation_nonzero_initial():
    r = np.zeros((4, 4, 3))
    r[0, 0, 0] = 0.5
    r[1, 2, 1] = 0.48  # total 0.98
    res = M.conservation(r, 1.0)
    assert res["total"] == pytest.approx(0.98)
    assert res["error"] == pytest.approx(-0.02)
    assert res["relative_error"] == pytest.approx(0.02)
    # negative initial total (a "-1" localization target): scale |R0| = 1
    res = M.conservation(np.array([-1.0, -0.5]), -1.0)
    assert res["error"] == pytest.approx(-0.5) and res["relative_error"] == pytest.approx(0.5)


def test_conservation_contrast_uses_total_mass():
    r = np.array([[0.5, -0.5], [0.1, 0.0]])
    res = M.conservation(r, 0.0)
    assert res["total"] == pytest.approx(0.1)
    assert res["scale"] == pytest.approx(1.1)
    assert res["relative_error"] == pytest.approx(0.1 / 1.1)
    # a contrast total that is zero only up to rounding is treated the same way
    assert M.conservation(r, 1e-17)["relative_error"] == pytest.approx(0.1 / 1.1)
    # perfectly conserved zero
    res = M.conservation(np.zeros((3, 3)), 0.0)
    assert res["relative_error"] == 0.0 and res["error"] == 0.0


def test_conservation_errors():
    with pytest.raises(InputError, match="empty"):
        M.conservation(np.zeros((0, 3)), 1.0)
    with pytest.raises(InputError, match="non-finite"):
        M.conservation(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(InputError, match="scalar"):
        M.conservation(np.ones(3), [1.0, 2.0])


# ------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_respects_range():
    est, lo, hi = M.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert est == pytest.approx(3.0)
    assert 1.0 <= lo < 3.0 < hi <= 5.0


def test_bootstrap_ci_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small = rng.normal(size=20)
    large = rng.normal(size=2000)
    _, lo_s, hi_s = M.bootstrap_ci(small)
    est_l, lo_l, hi_l = M.bootstrap_ci(large)
    assert lo_l <= est_l <= hi_l
    # width shrinks like 1 / sqrt(n): 10x here; allow a wide margin
    assert (hi_l - lo_l) < 0.3 * (hi_s - lo_s)


def test_bootstrap_ci_alpha_nan_and_stat():
    v = np.random.default_rng(1).normal(size=50)
    _, lo90, hi90 = M.bootstrap_ci(v, alpha=0.1)
    _, lo99, hi99 = M.bootstrap_ci(v, alpha=0.01)
    assert lo99 < lo90 and hi90 < hi99
    # NaNs are dropped: same numbers as without them
    assert M.bootstrap_ci(np.append(v, [np.nan, np.nan])) == M.bootstrap_ci(v)
    # constant data: a zero-width interval
    assert M.bootstrap_ci([2.5] * 7) == (2.5, 2.5, 2.5)
    # a stat without an axis argument: the max of resamples never exceeds the data's max
    est, lo, hi = M.bootstrap_ci([1.0, 2.0, 9.0], stat=lambda x: float(np.max(x)), n_boot=200)
    assert est == 9.0 and hi == 9.0 and lo >= 1.0
    est, _, _ = M.bootstrap_ci([1.0, 2.0, 9.0], stat=np.median)
    assert est == 2.0


def test_bootstrap_ci_errors():
    with pytest.raises(InputError, match="no non-NaN"):
        M.bootstrap_ci([np.nan, np.nan])
    with pytest.raises(InputError, match="no non-NaN"):
        M.bootstrap_ci([])
    with pytest.raises(InputError, match="non-finite"):
        M.bootstrap_ci([1.0, np.inf])
    with pytest.raises(InputError, match="n_boot"):
        M.bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(InputError, match="alpha"):
        M.bootstrap_ci([1.0, 2.0], alpha=1.0)
    with pytest.raises(InputError, match="alpha"):
        M.bootstrap_ci([1.0, 2.0], alpha=0.0)
