"""crp_jax.viz: diverging colour map centred at zero, overlays, grids, detections, image loading.

Pure numpy + Pillow: no XLA compilation here.
"""

import numpy as np
import pytest
from PIL import Image

from crp_jax import viz
from crp_jax.errors import InputError

WHITE = np.array(viz.NEUTRAL_COLOR)


# ---- colour map ------------------------------------------------------------------------------


def test_colorize_zero_is_white_and_sign_picks_the_hue():
    h = np.array([[0.0, 1.0, -1.0, 0.25, -0.25]], np.float32)
    c8 = viz.colorize(h, vmax=1.0)
    assert c8.shape == (1, 5, 3) and c8.dtype == np.uint8
    c = c8.astype(int)
    np.testing.assert_array_equal(c[0, 0], WHITE)
    np.testing.assert_array_equal(c[0, 1], viz.POSITIVE_COLOR)
    np.testing.assert_array_equal(c[0, 2], viz.NEGATIVE_COLOR)
    r, g, b = c[0, 3]
    assert r > b > g and r > 200  # light red
    r, g, b = c[0, 4]
    assert b > g > r  # light blue
    # symmetric: +v and -v are a quarter of the way from white to their end colours
    np.testing.assert_allclose(c[0, 3], WHITE + 0.25 * (np.array(viz.POSITIVE_COLOR) - WHITE), atol=1)
    np.testing.assert_allclose(c[0, 4], WHITE + 0.25 * (np.array(viz.NEGATIVE_COLOR) - WHITE), atol=1)


def test_colorize_zero_stays_white_whatever_the_range():
    for h in (np.array([[0.0, 5.0, 10.0]]), np.array([[0.0, -3.0, -1e-3]]), np.zeros((2, 2)), np.array([[0.0, 1e-30]])):
        c = viz.colorize(h)
        np.testing.assert_array_equal(c[0, 0], WHITE)


def test_robust_max_ignores_outliers_and_is_symmetric():
    rng = np.random.default_rng(0)
    h = rng.uniform(-1, 1, (100, 100)).astype(np.float32)
    h[0, 0] = 1000.0  # one outlier does not set the scale
    m = viz.robust_max(h)
    assert 0.9 < m < 1.0
    assert viz.robust_max(-h) == pytest.approx(m)
    assert viz.robust_max(np.zeros((3, 3))) == 1.0
    sparse = np.zeros((100, 100))
    sparse[5, 5] = -2.0
    assert viz.robust_max(sparse) == 2.0  # percentile 0 -> falls back to max |R|
    c = viz.colorize(h)
    np.testing.assert_array_equal(c[0, 0], viz.POSITIVE_COLOR)  # saturates


def test_resize_heatmap_keeps_sign_layout():
    h = np.zeros((8, 8), np.float32)
    h[:4] = 1.0
    h[4:] = -1.0
    r = viz.resize_heatmap(h, (30, 50))
    assert r.shape == (30, 50)
    assert (r[:10] > 0).all() and (r[-10:] < 0).all()


# ---- overlay ---------------------------------------------------------------------------------


def _reddish_image(h=30, w=50):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200
    img[..., 1] = 60
    img[..., 2] = 20
    return img


def test_overlay_zero_is_neutral_and_sign_has_its_hue():
    img = _reddish_image()  # a red image: hue must come from relevance, not from the picture
    h = np.zeros((30, 50), np.float32)
    h[:, 20:30] = 1.0
    h[:, 30:40] = -1.0
    out = np.asarray(viz.overlay(img, h, alpha=0.6)).astype(int)
    assert out.shape == (30, 50, 3)
    r, g, b = out[15, 5]  # zero relevance: grey (neutral), whatever the image's colour
    assert r == g == b
    r, g, b = out[15, 25]
    assert r > g + 40 and r > b + 40  # positive: red
    r, g, b = out[15, 35]
    assert b > r + 40 and b > g + 20  # negative: blue


def test_overlay_maps_a_model_size_heatmap_back_to_the_image_size():
    img = _reddish_image(31, 47)
    h = np.zeros((16, 16, 3), np.float32)  # relevance at the model input size, channels summed
    h[:8, :, 0] = 1.0
    h[8:, :, 0] = -1.0
    o = viz.overlay(img, h)
    assert o.size == (47, 31)
    a = np.asarray(o).astype(int)
    assert a[2, 20, 0] > a[2, 20, 2]  # top: red
    assert a[-3, 20, 2] > a[-3, 20, 0]  # bottom: blue
    assert viz.overlay(img, h, scale=3).size == (141, 93)


def test_overlay_draws_box_and_label():
    img = np.full((60, 80, 3), 128, np.uint8)
    h = np.zeros((60, 80))
    plain = np.asarray(viz.overlay(img, h))
    o = np.asarray(viz.overlay(img, h, box=(20, 25, 60, 55), label="E 0.93"))
    np.testing.assert_array_equal(o[40, 20], viz.BOX_COLOR)  # left edge of the box
    np.testing.assert_array_equal(o[54, 40], viz.BOX_COLOR)  # bottom edge (last pixel row inside)
    assert (o[5:25, 20:60] != plain[5:25, 20:60]).any()  # the label tag above the box
    np.testing.assert_array_equal(o[40, 40], plain[40, 40])  # inside the box untouched


def test_overlay_rejects_bad_input():
    with pytest.raises(InputError):
        viz.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4,)))
    with pytest.raises(InputError):
        viz.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), alpha=2.0)


# ---- grid and detections ---------------------------------------------------------------------


def test_grid_size_follows_the_documented_layout():
    imgs = [np.zeros((10, 20, 3), np.uint8)] * 3
    g = viz.grid(imgs, ncols=2, pad=4)
    assert g.size == (2 * 20 + 3 * 4, 2 * 10 + 3 * 4)
    titled = viz.grid(imgs, ["a", "b\nc", "a much longer title than the image"], ncols=3, pad=4)
    assert titled.width > 3 * 20 + 4 * 4  # cells widened to the longest title
    assert titled.height > 10 + 2 * 4  # a title band on top
    one_row = viz.grid([np.zeros((10, 20, 3), np.uint8), np.zeros((30, 5, 3), np.uint8)], pad=0)
    assert one_row.size == (2 * 20, 30)  # cells take the largest image
    assert viz.grid(imgs, ncols=1, pad=0, scale=2).size == (40, 60)
    with pytest.raises(InputError):
        viz.grid(imgs, ["only one title"])


def test_draw_detections_keeps_size_and_draws_boxes():
    img = np.full((40, 64, 3), 255, np.uint8)
    out = viz.draw_detections(img, [[10, 12, 30, 35], [40, 5, 60, 20]], [1, 2], [0.9, 0.6], ("bg", "E", "F"))
    a = np.asarray(out)
    assert out.size == (64, 40)
    assert (a[25, 10] != 255).any() and (a[15, 40] != 255).any()  # left edges of both boxes
    assert viz.draw_detections(img, np.zeros((0, 4)), [], [], ("bg",)).size == (64, 40)


# ---- loading ---------------------------------------------------------------------------------


def test_load_image_handles_modes_and_exif(tmp_path):
    grey = tmp_path / "g.png"
    Image.fromarray(np.full((7, 9), 77, np.uint8), "L").save(grey)
    a = viz.load_image(grey)
    assert a.shape == (7, 9, 3) and a.dtype == np.uint8 and (a == 77).all()

    rgba = tmp_path / "a.png"
    px = np.zeros((5, 6, 4), np.uint8)
    px[..., 0] = 255
    px[:, :3, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(px, "RGBA").save(rgba)
    a = viz.load_image(rgba)
    assert a.shape == (5, 6, 3)
    np.testing.assert_array_equal(a[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(a[0, 5], (255, 255, 255))  # transparent -> white

    pal = tmp_path / "p.png"
    Image.fromarray(np.zeros((4, 3, 3), np.uint8) + 30).convert("P").save(pal)
    assert viz.load_image(pal).shape == (4, 3, 3)

    deep = tmp_path / "d.png"
    Image.fromarray(np.full((3, 4), 65535, np.uint16)).save(deep)
    assert (viz.load_image(deep) == 255).all()

    jpg = tmp_path / "r.jpg"
    im = Image.fromarray(np.zeros((11, 23, 3), np.uint8) + 90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise for display
    im.save(jpg, exif=exif.tobytes())
    assert viz.load_image(jpg).shape == (23, 11, 3)

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(OSError):
        viz.load_image(bad)
    with pytest.raises(FileNotFoundError):
        viz.load_image(tmp_path / "missing.png")
