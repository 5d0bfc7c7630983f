"""Box formats, SSD box coding, IoU and NMS (hand-made cases and torchvision parity)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax.errors import InputError
from crp_jax.ssd.boxes import (
    BBOX_XFORM_CLIP,
    batched_nms,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    decode,
    encode,
    nms,
    xyxy_to_cxcywh,
)


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_format_round_trip():
    b = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)
    np.testing.assert_allclose(xyxy_to_cxcywh(b), [[20, 40, 20, 40]])
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)
    assert isinstance(cxcywh_to_xyxy(jnp.asarray(b)), jax.Array)
    with pytest.raises(InputError):
        xyxy_to_cxcywh(np.zeros((3, 5)))


def test_encode_by_hand():
    anchor = np.array([[50.0, 50.0, 20.0, 40.0]])  # cx, cy, w, h
    # box centred at (55, 60), same size: offsets (5/20)/0.1, (10/40)/0.1, 0, 0
    np.testing.assert_allclose(encode([[45.0, 40.0, 65.0, 80.0]], anchor), [[2.5, 2.5, 0, 0]], atol=1e-6)
    # same centre, twice as wide, half as tall: log(2)/0.2, log(1/2)/0.2
    got = encode([[30.0, 40.0, 70.0, 60.0]], anchor)
    np.testing.assert_allclose(got, [[0, 0, math.log(2) / 0.2, -math.log(2) / 0.2]], atol=1e-6)


def test_encode_decode_round_trip_numpy_and_jax():
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 50)
    anchors = xyxy_to_cxcywh(_random_boxes(rng, 50))
    loc = encode(boxes, anchors)
    np.testing.assert_allclose(decode(loc, anchors), boxes, rtol=1e-5, atol=1e-3)
    # the same code under jit, with a leading batch axis
    got = jax.jit(decode)(jnp.asarray(loc)[None], jnp.asarray(anchors))
    assert got.shape == (1, 50, 4)
    np.testing.assert_allclose(np.asarray(got[0]), decode(loc, anchors), rtol=1e-6, atol=1e-4)


def test_decode_clamps_log_size():
    anchors = np.array([[0.0, 0.0, 2.0, 4.0]], np.float32)
    out = decode(np.array([[0.0, 0.0, 1e4, 1e4]], np.float32), anchors)
    assert np.all(np.isfinite(out))
    # the clamp bounds exp(0.2 * dw) at 1000/16: width 2 -> at most 125
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 2.0 * math.exp(BBOX_XFORM_CLIP), rtol=1e-5)


def test_decode_matches_torchvision_boxcoder():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection._utils import BoxCoder

    rng = np.random.default_rng(1)
    anchors_xyxy = _random_boxes(rng, 300, size=300.0)
    loc = rng.normal(0, 2, (300, 4)).astype(np.float32)
    loc[:5, 2:] = 40.0  # exercises the clamp
    want = (
        BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        .decode_single(torch.from_numpy(loc), torch.from_numpy(anchors_xyxy))
        .numpy()
    )
    got = decode(loc, xyxy_to_cxcywh(anchors_xyxy))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


def test_box_iou_and_clip():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float32)
    b = np.array([[1, 1, 3, 3], [5, 5, 6, 6]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0], [0, 0]], atol=1e-7)
    np.testing.assert_allclose(box_iou(a, a).diagonal(), [1, 1])
    np.testing.assert_allclose(clip_boxes(np.array([[-5.0, 3, 50, 120]]), 100, 40), [[0, 3, 40, 100]])


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.1], np.float32)
    # box 1 wins, suppresses 0 (IoU 81/119) and 3 (same IoU); box 2 overlaps nothing
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 2])
    # threshold above 81/119 = 0.68: box 0 survives and removes its exact duplicate 3
    np.testing.assert_array_equal(nms(boxes, scores, 0.69), [1, 0, 2])
    # suppression needs IoU strictly above the threshold: 1/3 at threshold 1/3 survives
    pair = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], np.float32)
    np.testing.assert_array_equal(nms(pair, np.array([1.0, 0.5]), 1 / 3), [0, 1])
    assert nms(np.zeros((0, 4)), np.zeros((0,)), 0.5).shape == (0,)


def test_batched_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.9, 0.8, 0.95], np.float32)
    labels = np.array([1, 1, 2])
    # box 1 is suppressed by box 0 (same class); box 2 (other class) is kept, listed first
    np.testing.assert_array_equal(batched_nms(boxes, scores, labels, 0.5), [2, 0])
    assert batched_nms(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,)), 0.5).dtype == np.int64
    with pytest.raises(InputError):
        batched_nms(boxes, scores, labels[:2], 0.5)


@pytest.mark.parametrize("n", [300, 1500])  # torchvision's coordinate trick below 1000 boxes, per-class loop above
def test_batched_nms_matches_torchvision(n):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(n)
    boxes = _random_boxes(rng, n, size=200.0)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    labels = rng.integers(0, 4, n)
    for thr in (0.3, 0.45, 0.7):
        want = tv_ops.batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), thr
        ).numpy()
        np.testing.assert_array_equal(batched_nms(boxes, scores, labels, thr), want)
        want = tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, thr), want)
