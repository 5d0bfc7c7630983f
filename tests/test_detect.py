"""Preprocessing and detection: hand-set model outputs, torchvision parity, bad inputs."""

import dataclasses
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax.errors import ConfigError, InputError
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.detect import Detections, detect, preprocess, preprocess_with_sizes
from crp_jax.ssd.meta import TORCHVISION_MEAN, TORCHVISION_STD, Meta, default_class_names

# 64 px, 4 sources of 8, 4, 2, 1 cells; 4, 6, 6, 6 boxes per cell; scales[0] = 0.1
CFG = SSDConfig.small(3, image_size=64)
S = CFG.image_size
A = CFG.num_anchors()
META = Meta(CFG, default_class_names(3), mean=TORCHVISION_MEAN, std=TORCHVISION_STD)


@dataclasses.dataclass(frozen=True)
class FakeSSD:
    """Stands in for SSD: returns the raw outputs stored in ``variables``."""

    config: SSDConfig

    def apply(self, variables, x):
        return variables["cls"], variables["loc"]


FAKE = FakeSSD(CFG)


def _quiet_outputs(batch):
    """Background wins everywhere: foreground scores 1/(e^5 + 2) < 0.01, so no candidates."""
    cls = np.zeros((batch, A, 3), np.float32)
    cls[..., 0] = 5.0
    return cls, np.zeros((batch, A, 4), np.float32)


def _x(batch):
    return jnp.zeros((batch, S, S, 3), jnp.float32)


def _run(cls, loc, **kw):
    return detect(FAKE, {"cls": jnp.asarray(cls), "loc": jnp.asarray(loc)}, _x(cls.shape[0]), **kw)


# ---- detect -----------------------------------------------------------------------------------


def test_clear_detection_comes_back_with_box_label_anchor():
    cls, loc = _quiet_outputs(2)
    # image 0: source 0, cell row 3 column 5, box 2 (ratio 2: w = 0.1 sqrt2, h = 0.1 / sqrt2)
    a0 = (3 * 8 + 5) * 4 + 2
    cls[0, a0, 2] = 10.0
    loc[0, a0] = (1.0, -0.5, 0.5, 0.0)
    # image 1: anchor 0 (centre 4 px, side 6.4 px) pushed left out of the image
    cls[1, 0, 1] = 8.0
    loc[1, 0] = (-10.0, 0.0, 0.0, 0.0)
    dets = _run(cls, loc, meta=META)
    assert [d.image for d in dets] == [0, 1] and all(isinstance(d, Detections) for d in dets)

    d = dets[0]
    assert len(d) == 1 and d.labels.tolist() == [2] and d.anchors.tolist() == [a0]
    np.testing.assert_allclose(d.scores, [math.exp(10) / (math.exp(10) + math.exp(5) + 1)], rtol=1e-5)
    cx, cy = 5.5 / 8 * S, 3.5 / 8 * S
    w, h = 0.1 * math.sqrt(2) * S, 0.1 / math.sqrt(2) * S
    cx, cy, w = cx + 0.1 * 1.0 * w, cy + 0.1 * -0.5 * h, w * math.exp(0.2 * 0.5)
    np.testing.assert_allclose(d.boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], rtol=1e-5)

    d = dets[1]
    assert d.labels.tolist() == [1] and d.anchors.tolist() == [0]
    cx = 4.0 - 0.1 * 10 * 6.4  # -2.4: the left edge is clipped to 0
    np.testing.assert_allclose(d.boxes, [[0.0, 4 - 3.2, cx + 3.2, 4 + 3.2]], atol=1e-4)
    assert d.boxes.dtype == np.float32 and d.labels.dtype == np.int64 and d.anchors.dtype == np.int64


def test_image_sizes_rescale_boxes():
    cls, loc = _quiet_outputs(1)
    a0 = (3 * 8 + 5) * 4
    cls[0, a0, 1] = 10.0
    plain = _run(cls, loc)[0].boxes
    scaled = _run(cls, loc, image_sizes=[(32, 256)])[0].boxes  # H halves, W x4
    np.testing.assert_allclose(scaled, plain * np.array([4, 0.5, 4, 0.5]), rtol=1e-6)


def test_topk_max_detections_and_no_background():
    cls, loc = _quiet_outputs(1)
    cells = [(0, 0), (0, 4), (4, 0), (4, 4), (7, 7)]  # non-overlapping boxes
    anchors = [(r * 8 + c) * 4 for r, c in cells]
    for i, a in enumerate(anchors):
        cls[0, a, 1] = 10.0 + i  # last one scores highest
    cls[0, 300, 0] = 50.0  # background is never reported
    d = _run(cls, loc)[0]
    assert d.anchors.tolist() == anchors[::-1] and np.all(np.diff(d.scores) < 0)
    assert _run(cls, loc, topk_candidates=2)[0].anchors.tolist() == anchors[:2:-1]
    assert _run(cls, loc, max_detections=1)[0].anchors.tolist() == [anchors[-1]]
    assert len(_run(cls, loc, max_detections=0)[0]) == 0
    assert 0 not in _run(cls, loc, score_threshold=0.0)[0].labels


# 4 classes, so that equal logits give the score 1/4 exactly in float32
CFG4 = SSDConfig.small(4, image_size=64)
FAKE4 = FakeSSD(CFG4)


def _run4(cls, **kw):
    loc = np.zeros(cls.shape[:2] + (4,), np.float32)
    return detect(FAKE4, {"cls": jnp.asarray(cls), "loc": jnp.asarray(loc)}, _x(cls.shape[0]), **kw)[0]


def test_score_equal_to_the_threshold_is_not_kept():
    # torchvision keeps scores strictly above score_thresh
    cls = np.zeros((1, CFG4.num_anchors(), 4), np.float32)
    cls[..., 0] = 5.0  # background wins everywhere else: foreground scores ~ 0.0066
    tied, above = 0, 50  # distant anchors (source 0, cells (0, 0) and (1, 4)): no NMS between them
    cls[0, tied] = 0.0  # softmax = (1/4, 1/4, 1/4, 1/4) exactly
    cls[0, above] = (0.0, 0.01, 0.0, 0.0)  # class 1 just above 1/4, classes 2 and 3 just below
    d = _run4(cls, score_threshold=0.25)
    assert d.anchors.tolist() == [above] and d.labels.tolist() == [1]
    e = math.exp(0.01)
    np.testing.assert_allclose(d.scores, [e / (e + 3)], rtol=1e-6)
    assert d.scores[0] > 0.25
    # just below 1/4 the tied anchor's three classes are in (tied scores: label order)
    d = _run4(cls, score_threshold=0.2499)
    assert d.anchors.tolist() == [above, tied, tied, tied] and d.labels.tolist() == [1, 1, 2, 3]


def test_underflowed_zero_score_never_appears_at_threshold_zero():
    cls = np.zeros((1, CFG4.num_anchors(), 4), np.float32)
    cls[..., 0] = 200.0  # exp(-200) underflows: every foreground score is exactly 0 in float32
    cls[0, 7, 2] = 200.0  # class 2 ties background: score 1/2
    cls[0, 90, 3] = 150.0  # exp(-50) ~ 2e-22: tiny but positive, so kept
    d = _run4(cls, score_threshold=0.0)
    assert sorted(zip(d.anchors.tolist(), d.labels.tolist())) == [(7, 2), (90, 3)]
    np.testing.assert_allclose(d.scores, [0.5, math.exp(-50)], rtol=1e-4)
    assert np.all(d.scores > 0)


def test_matches_torchvision_postprocess_detections():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection import ssd as tv_ssd
    from torchvision.models.detection._utils import BoxCoder

    from crp_jax.ssd.anchors import default_boxes_xyxy

    rng = np.random.default_rng(0)
    cls = rng.normal(0, 3, (2, A, 3)).astype(np.float32)
    loc = rng.normal(0, 1, (2, A, 4)).astype(np.float32)
    settings = dict(score_threshold=0.2, nms_threshold=0.45, max_detections=50, topk_candidates=60)
    # postprocess_detections reads only these attributes of the SSD module
    fake_self = SimpleNamespace(
        box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
        score_thresh=0.2,
        nms_thresh=0.45,
        detections_per_img=50,
        topk_candidates=60,
    )
    anchors = torch.from_numpy(np.array(default_boxes_xyxy(CFG)))
    want = tv_ssd.SSD.postprocess_detections(
        fake_self,
        {"cls_logits": torch.from_numpy(cls), "bbox_regression": torch.from_numpy(loc)},
        [anchors, anchors],
        [(S, S), (S, S)],
    )
    got = _run(cls, loc, **settings)
    for g, w in zip(got, want):
        assert len(g) > 10  # the comparison is not vacuous
        np.testing.assert_array_equal(g.labels, w["labels"].numpy())
        np.testing.assert_allclose(g.scores, w["scores"].numpy(), rtol=1e-6)
        np.testing.assert_allclose(g.boxes, w["boxes"].numpy(), atol=1e-4)
    # the anchor index explains each box: its class score and decoded offsets
    from crp_jax.ssd.boxes import clip_boxes, decode, xyxy_to_cxcywh

    g = got[0]
    dec = clip_boxes(decode(loc[0, g.anchors], xyxy_to_cxcywh(anchors.numpy()[g.anchors])), S, S)
    np.testing.assert_allclose(g.boxes, dec, atol=1e-4)
    p = np.exp(cls[0, g.anchors]) / np.exp(cls[0, g.anchors]).sum(-1, keepdims=True)
    np.testing.assert_allclose(g.scores, p[np.arange(len(g)), g.labels], rtol=1e-5)


def test_real_small_model_end_to_end():
    from crp_jax.ssd.model import SSD

    model = SSD(CFG)
    # Random weights from numpy on the init's shapes: an XLA-compiled init costs far more
    # than the model's forward pass on a shared 2-core machine.
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, S, S, 3), jnp.float32))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), rng.integers(0, 256, (90, 40), dtype=np.uint8)]
    x, sizes = preprocess_with_sizes(images, META)
    assert sizes == [(50, 70), (90, 40)]
    dets = detect(model, variables, x, meta=META, score_threshold=0.0, image_sizes=sizes)
    assert len(dets) == 2
    for d, (h, w) in zip(dets, sizes):
        assert 0 < len(d) <= 200
        assert np.all((d.labels >= 1) & (d.labels < 3)) and np.all((d.anchors >= 0) & (d.anchors < A))
        assert (
            np.all(d.boxes >= 0) and np.all(d.boxes[:, [0, 2]] <= w + 1e-3) and np.all(d.boxes[:, [1, 3]] <= h + 1e-3)
        )


def test_detect_rejects_bad_input():
    cls, loc = _quiet_outputs(2)
    v = {"cls": jnp.asarray(cls), "loc": jnp.asarray(loc)}
    with pytest.raises(InputError, match="floating"):
        detect(FAKE, v, np.zeros((2, S, S, 3), np.uint8))
    with pytest.raises(InputError, match="64x64"):
        detect(FAKE, v, jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(InputError, match="rank 4"):
        detect(FAKE, v, jnp.zeros((S, S, 3)))
    bad = np.zeros((2, S, S, 3), np.float32)
    bad[1, 3, 4, 0] = np.nan
    with pytest.raises(InputError, match="image 1"):
        detect(FAKE, v, bad)
    other = Meta(SSDConfig.small(3, image_size=96), default_class_names(3))
    with pytest.raises(ConfigError):
        detect(FAKE, v, _x(2), meta=other)
    with pytest.raises(InputError, match="image_sizes"):
        detect(FAKE, v, _x(2), image_sizes=[(10, 10)])
    with pytest.raises(ConfigError, match="topk_candidates"):
        detect(FAKE, v, _x(2), topk_candidates=0)
    with pytest.raises(ConfigError, match="score_threshold"):
        detect(FAKE, v, _x(2), score_threshold=float("nan"))


# ---- preprocess ---------------------------------------------------------------------------


def _expected_constant(rgb):
    return (np.asarray(rgb, np.float32) / 255 - np.asarray(TORCHVISION_MEAN, np.float32)) / np.asarray(
        TORCHVISION_STD, np.float32
    )


def test_preprocess_normalises_and_resizes():
    img = np.empty((37, 53, 3), np.uint8)
    img[:] = (10, 100, 200)
    x = preprocess(img, META)
    assert isinstance(x, jax.Array) and x.shape == (1, S, S, 3) and x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(x), np.broadcast_to(_expected_constant((10, 100, 200)), x.shape), atol=1e-3)
    # float images are taken as [0, 1]
    np.testing.assert_allclose(preprocess(img.astype(np.float32) / 255, META), x, atol=1e-3)


def test_preprocess_channel_forms_and_batches():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (30, 20), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    want = np.asarray(preprocess(rgb, META))
    np.testing.assert_array_equal(preprocess(grey, META), want)
    np.testing.assert_array_equal(preprocess(grey[..., None], META), want)
    rgba = np.concatenate([rgb, np.full((30, 20, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(preprocess(rgba, META), want)  # alpha dropped

    from PIL import Image

    np.testing.assert_array_equal(preprocess(Image.fromarray(grey), META), want)
    x, sizes = preprocess_with_sizes([rgb, rng.integers(0, 256, (S, S, 3), dtype=np.uint8)], META)
    assert x.shape == (2, S, S, 3) and sizes == [(30, 20), (S, S)]
    np.testing.assert_array_equal(x[0], want[0])
    batch = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    assert preprocess(batch, META).shape == (3, S, S, 3)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((5,), np.uint8), r"\(5,\)"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), r"\(1, 2, 8, 8, 3\)"),
        (np.zeros((8, 8, 2), np.uint8), r"\(8, 8, 2\)"),
        (np.zeros((8, 8, 5), np.uint8), r"\(8, 8, 5\)"),
        ([], "empty"),
        ("cat.png", "str"),
        ([np.zeros((8, 8, 3), np.uint8), None], "image 1"),
        (np.full((8, 8, 3), 200.0, np.float32), r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan, np.float32), "image 0"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
    ],
)
def test_preprocess_rejects_bad_input(bad, match):
    with pytest.raises(InputError, match=match):
        preprocess(bad, META)


def test_preprocess_needs_meta():
    with pytest.raises(ConfigError):
        preprocess(np.zeros((8, 8, 3), np.uint8), None)


def test_resize_matches_torch_interpolate_and_torchvision_transform():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from crp_jax.ssd.detect import resize_bilinear

    rng = np.random.default_rng(0)
    for h, w in ((100, 80), (20, 30), (64, 17)):
        img = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
        want = (
            torch.nn.functional.interpolate(
                torch.from_numpy(img).permute(2, 0, 1)[None], size=(S, S), mode="bilinear", align_corners=False
            )[0]
            .permute(1, 2, 0)
            .numpy()
        )
        np.testing.assert_allclose(resize_bilinear(img, S), want, atol=1e-6)

    # the whole input pipeline of torchvision's SSD (normalise, then resize to the fixed size)
    tf = GeneralizedRCNNTransform(
        S, S, list(TORCHVISION_MEAN), list(TORCHVISION_STD), size_divisible=1, fixed_size=(S, S)
    )
    tf.eval()
    img = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    want = tf([torch.from_numpy(img).permute(2, 0, 1).float() / 255])[0].tensors[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(np.asarray(preprocess(img, META)[0]), want, atol=1e-3)
