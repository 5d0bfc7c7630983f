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


# ---- ties: equal scores keep their input order (torchvision sorts stably) ------------------


def _tied_pairs(n_pairs):
    """``2 * n_pairs`` boxes: boxes 2k and 2k+1 overlap with IoU 9/11 (> 0.5), pairs are
    disjoint. Of each pair the earlier index must survive when the scores tie."""
    boxes = []
    for k in range(n_pairs):
        x = 20.0 * k
        boxes += [[x, 0.0, x + 10, 10.0], [x + 1, 0.0, x + 11, 10.0]]
    return np.array(boxes, np.float32)


def test_nms_ties_beyond_sixteen_boxes_keep_input_order():
    # numpy's default sort is an insertion sort (stable) below 17 elements and unstable above,
    # so ties only tell a stable sort apart with more boxes than that.
    boxes = _tied_pairs(20)  # 40 boxes
    scores = np.where(np.arange(40) < 20, 0.5, 0.9).astype(np.float32)  # two tied groups
    # by hand: the 0.9 group first, each in index order; of each pair the first survives
    want = list(range(20, 40, 2)) + list(range(0, 20, 2))
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), want)
    # all disjoint boxes tied: the output is the input order
    apart = boxes[::2]
    np.testing.assert_array_equal(nms(apart, np.full(20, 0.3, np.float32), 0.5), np.arange(20))


def test_nms_ties_match_torchvision():
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(16)
    boxes = _tied_pairs(30)[rng.permutation(60)]
    scores = rng.choice(np.array([0.2, 0.6, 0.9], np.float32), 60)  # three tied groups
    for thr in (0.5, 0.85):  # 0.85 > 9/11: pairs no longer suppress each other
        want = tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, thr), want)


def test_batched_nms_equal_scores_across_classes_come_back_in_input_order():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.7, 0.7, 0.7], np.float32)
    # labels (2, 1, 2): different classes never suppress each other; ties in input order,
    # not grouped by class
    np.testing.assert_array_equal(batched_nms(boxes, scores, np.array([2, 1, 2]), 0.5), [0, 1, 2])
    # forty boxes, one score, labels cycling 3, 2, 1: all kept, in input order
    pairs = _tied_pairs(20)[::2]
    many = np.concatenate([pairs, pairs])  # each box twice, the copy under another label
    labels = np.array([3, 2, 1] * 14)[:40]  # box i and its copy i + 20 differ in label
    np.testing.assert_array_equal(batched_nms(many, np.full(40, 0.4, np.float32), labels, 0.5), np.arange(40))


def test_batched_nms_ties_match_torchvision():
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(3)
    boxes = _tied_pairs(25)[rng.permutation(50)]
    scores = rng.choice(np.array([0.3, 0.8], np.float32), 50)
    labels = rng.integers(1, 4, 50)
    for thr in (0.5, 0.85):
        want = tv_ops.batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), thr
        ).numpy()
        np.testing.assert_array_equal(batched_nms(boxes, scores, labels, thr), want)


def test_nms_keeps_a_box_whose_iou_equals_the_threshold():
    # A second angle on "suppress only when IoU > threshold": IoU exactly 1/2 and 1/4, with
    # areas and intersections that are exact in float32.
    boxes = np.array(
        [[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 4.0, 1.0], [2.0, 0.0, 6.0, 4.0]], np.float32
    )
    # IoU with box 0: box 1 = 8/16 = 1/2, box 2 = 4/16 = 1/4, box 3 = 8/24 = 1/3
    np.testing.assert_allclose(box_iou(boxes[:1], boxes[1:]), [[0.5, 0.25, 1 / 3]], rtol=1e-7)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    for i, thr in ((1, 0.5), (2, 0.25)):
        pair = boxes[[0, i]]
        np.testing.assert_array_equal(nms(pair, scores[[0, i]], thr), [0, 1])  # equal: kept
        np.testing.assert_array_equal(nms(pair, scores[[0, i]], thr * (1 - 1e-6)), [0])  # IoU just above: gone
        labels = np.array([1, 1])
        np.testing.assert_array_equal(batched_nms(pair, scores[[0, i]], labels, thr), [0, 1])
