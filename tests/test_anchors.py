"""Default boxes: hand-computed values for both conventions and torchvision parity."""

import math

import numpy as np
import pytest

from crp_jax.errors import ConfigError
from crp_jax.ssd.anchors import default_boxes, default_boxes_xyxy
from crp_jax.ssd.config import SSDConfig

SSD300 = SSDConfig.ssd300_vgg16()
SSD300_PT = SSDConfig.ssd300_vgg16_ssdpytorch()
# Boxes per source at 300x300: 38^2*4, 19^2*6, 10^2*6, 5^2*6, 3^2*4, 1*4.
SOURCE_COUNTS = (5776, 2166, 600, 150, 36, 4)
SOURCE_START = tuple(int(s) for s in np.cumsum((0,) + SOURCE_COUNTS[:-1]))


def test_ssd300_counts():
    assert sum(SOURCE_COUNTS) == 8732
    for cfg in (SSD300, SSD300_PT):
        boxes = default_boxes(cfg)
        assert boxes.shape == (8732, 4) and boxes.dtype == np.float32
        assert default_boxes_xyxy(cfg).shape == (8732, 4)
        assert cfg.num_anchors() == 8732


def test_ssd300_torchvision_by_hand():
    b = default_boxes(SSD300).astype(np.float64)
    f0 = 300 / 8  # 37.5 steps across the image on conv4_3
    c = 0.5 / f0
    s2 = math.sqrt(2)
    np.testing.assert_allclose(b[0], [c, c, 0.07, 0.07], atol=1e-7)
    sp = math.sqrt(0.07 * 0.15)  # s'_0 = sqrt(s_0 s_1)
    np.testing.assert_allclose(b[1], [c, c, sp, sp], atol=1e-7)
    np.testing.assert_allclose(b[2], [c, c, 0.07 * s2, 0.07 / s2], atol=1e-7)
    np.testing.assert_allclose(b[3], [c, c, 0.07 / s2, 0.07 * s2], atol=1e-7)
    # next column of row 0, then first column of row 1 (row-major cells, 4 boxes per cell)
    np.testing.assert_allclose(b[4], [1.5 / f0, c, 0.07, 0.07], atol=1e-7)
    np.testing.assert_allclose(b[38 * 4], [c, 1.5 / f0, 0.07, 0.07], atol=1e-7)
    # conv7: 19x19 cells, step 16 -> 18.75 steps; ratios 2 and 3
    k = SOURCE_START[1]
    c1 = 0.5 / (300 / 16)
    np.testing.assert_allclose(b[k], [c1, c1, 0.15, 0.15], atol=1e-7)
    np.testing.assert_allclose(b[k + 1, 2], math.sqrt(0.15 * 0.33), atol=1e-7)
    np.testing.assert_allclose(b[k + 4], [c1, c1, 0.15 * math.sqrt(3), 0.15 / math.sqrt(3)], atol=1e-7)
    np.testing.assert_allclose(b[k + 5], [c1, c1, 0.15 / math.sqrt(3), 0.15 * math.sqrt(3)], atol=1e-7)
    # last source: one cell centred, s=0.87, s'=sqrt(0.87*1.05); ratio-2 boxes clipped to 1
    k = SOURCE_START[5]
    assert k == 8728
    np.testing.assert_allclose(b[k], [0.5, 0.5, 0.87, 0.87], atol=1e-7)
    np.testing.assert_allclose(b[k + 1, 2:], [math.sqrt(0.87 * 1.05)] * 2, atol=1e-7)
    np.testing.assert_allclose(b[k + 2], [0.5, 0.5, 1.0, 0.87 / s2], atol=1e-7)
    np.testing.assert_allclose(b[k + 3], [0.5, 0.5, 0.87 / s2, 1.0], atol=1e-7)


def test_ssd300_torchvision_xyxy_by_hand():
    x = default_boxes_xyxy(SSD300)
    # anchor 0: centre 300/75 = 4 px, side 0.07 * 300 = 21 px
    np.testing.assert_allclose(x[0], [4 - 10.5, 4 - 10.5, 4 + 10.5, 4 + 10.5], atol=1e-4)
    # last anchor: centre 150, w = 0.87/sqrt2 * 300, h = 300 (clipped to 1)
    w = 0.87 / math.sqrt(2) * 300
    np.testing.assert_allclose(x[-1], [150 - w / 2, 0, 150 + w / 2, 300], atol=1e-3)


def test_ssd300_ssdpytorch_by_hand():
    b = default_boxes(SSD300_PT).astype(np.float64)
    c = 0.5 / 37.5
    s2 = math.sqrt(2)
    np.testing.assert_allclose(b[0], [c, c, 30 / 300, 30 / 300], atol=1e-7)
    np.testing.assert_allclose(b[1, 2:], [math.sqrt(30 * 60) / 300] * 2, atol=1e-7)
    np.testing.assert_allclose(b[2], [c, c, 0.1 * s2, 0.1 / s2], atol=1e-7)
    np.testing.assert_allclose(b[3], [c, c, 0.1 / s2, 0.1 * s2], atol=1e-7)
    np.testing.assert_allclose(b[4, :2], [1.5 / 37.5, c], atol=1e-7)
    k = SOURCE_START[1]
    np.testing.assert_allclose(b[k], [0.5 / 18.75, 0.5 / 18.75, 0.2, 0.2], atol=1e-7)
    np.testing.assert_allclose(b[k + 1, 2], math.sqrt(60 * 111) / 300, atol=1e-7)
    k = SOURCE_START[5]
    np.testing.assert_allclose(b[k], [0.5, 0.5, 264 / 300, 264 / 300], atol=1e-7)
    np.testing.assert_allclose(b[k + 1, 2], math.sqrt(264 * 315) / 300, atol=1e-7)
    np.testing.assert_allclose(b[k + 2], [0.5, 0.5, 1.0, 0.88 / s2], atol=1e-7)  # 0.88*sqrt2 > 1


def test_small_config_derives_steps_from_feature_sizes():
    cfg = SSDConfig.small(3, image_size=64)
    b = default_boxes(cfg)
    assert b.shape == (cfg.num_anchors(), 4)
    f = cfg.feature_sizes()[0]
    a = cfg.anchors_per_cell[0]
    # steps=None: f cells, centre of cell j is (j + 0.5) / f
    np.testing.assert_allclose(b[a * 1, 0], 1.5 / f, atol=1e-7)
    np.testing.assert_allclose(b[a * f, 1], 1.5 / f, atol=1e-7)
    np.testing.assert_allclose(b[0, 2], cfg.scales[0], atol=1e-7)


def test_clip_flag_and_cache():
    import dataclasses

    unclipped = dataclasses.replace(SSD300, clip_anchors=False)
    assert default_boxes(unclipped)[:, 2:].max() > 1.0
    assert default_boxes(SSD300)[:, 2:].max() <= 1.0
    assert default_boxes(SSD300) is default_boxes(SSDConfig.ssd300_vgg16())  # cached per config
    with pytest.raises(ValueError):
        default_boxes(SSD300)[0, 0] = 1.0  # shared cache is read-only
    with pytest.raises(ConfigError):
        default_boxes("ssd300")


def test_torchvision_parity():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    for cfg in (SSD300, SSDConfig.small(5)):
        steps = list(cfg.steps) if cfg.steps is not None else None
        gen = DefaultBoxGenerator(
            [list(a) for a in cfg.aspect_ratios], scales=list(cfg.scales), steps=steps, clip=cfg.clip_anchors
        )
        s = cfg.image_size
        feats = [torch.zeros(1, 1, f, f) for f in cfg.feature_sizes()]
        images = ImageList(torch.zeros(1, 3, s, s), [(s, s)])
        rel = gen._grid_default_boxes([list(f.shape[-2:]) for f in feats], [s, s]).numpy()
        xyxy = gen(images, feats)[0].numpy()
        np.testing.assert_allclose(default_boxes(cfg), rel, rtol=0, atol=1e-6)
        np.testing.assert_allclose(default_boxes_xyxy(cfg), xyxy, rtol=0, atol=1e-6 * s)
