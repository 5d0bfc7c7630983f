"""``cj.diagnose`` on hand-built cases whose answers are known.

The detector here is a Flax module whose outputs are its parameters (logits and offsets per
anchor, per image), on the shipped model's anchor layout. Offsets are encoded in this file
(the SSD box coding written out, variances 0.1 / 0.2) so that chosen anchors decode to
hand-picked boxes; every IoU the tests expect is computed by hand in the comments.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import crp_jax as cj
from crp_jax.errors import ConfigError, InputError
from crp_jax.ssd.anchors import default_boxes_xyxy


class _Outputs(nn.Module):
    """``x [B, S, S, 3] -> (cls [B, A, K], loc [B, A, 4])``: the parameters, whatever ``x``."""

    config: Any
    images: int

    @nn.compact
    def __call__(self, x):
        A, K = self.config.num_anchors(), self.config.num_classes
        cls = self.param("cls", nn.initializers.zeros, (self.images, A, K))
        loc = self.param("loc", nn.initializers.zeros, (self.images, A, 4))
        return cls[: x.shape[0]] + 0.0 * x.sum(), loc[: x.shape[0]]


def _offsets(anchor_xyxy, box):
    """SSD coding of ``box`` against the anchor (both xyxy pixels), variances (0.1, 0.2)."""
    ax1, ay1, ax2, ay2 = (float(v) for v in anchor_xyxy)
    aw, ah, acx, acy = ax2 - ax1, ay2 - ay1, (ax1 + ax2) / 2, (ay1 + ay2) / 2
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return [
        ((x1 + x2) / 2 - acx) / (0.1 * aw),
        ((y1 + y2) / 2 - acy) / (0.1 * ah),
        math.log(w / aw) / 0.2,
        math.log(h / ah) / 0.2,
    ]


def _hand_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


E, F, O, Q = 1, 2, 3, 4
# image -> [(anchor, box, label, logit)]; every other anchor: background logit 10
FIRING = {
    0: [
        (100, (14, 10, 44, 50), E, 5.0),  # kept; IoU with gt E = 26*40 / (1200 + 1200 - 1040) = 0.7647
        (200, (10, 10, 40, 50), E, 4.0),  # the exact box of gt E, lower score: NMS removes it (IoU 0.7647 > 0.45)
        (300, (70, 70, 110, 120), E, 5.0),  # on gt F with label E: wrong label
        (400, (40, 80, 60, 110), Q, 5.0),  # on nothing: false alarm
    ],
    1: [
        (100, (10, 10, 50, 50), E, 5.0),  # finds gt E #0
        (200, (24, 10, 64, 50), E, 4.0),  # fits gt E #1 (IoU 1360/1840 = 0.7391) but NMS removes it:
    ],  # IoU with the kept box 1040 / 2160 = 0.4815 > 0.45
    2: [
        (100, (10, 10, 50, 40), E, 5.0),  # finds gt E (IoU 1200 / 1600 = 0.75)
        (200, (10, 20, 50, 55), E, 4.0),  # IoU 0.6667 with gt E, 800 / 1800 = 0.4444 with the kept box: survives NMS
    ],
    3: [(100, (10, 10, 50, 50), E, 5.0)],  # not annotated
    4: [
        (100, (10, 10, 50, 47), E, 5.0),  # finds gt E (IoU 1480 / 1600 = 0.925)
        (200, (10, 10, 50, 50), E, 4.0),  # removed by NMS, fits exactly: better by 0.075 only, not reported
    ],
}
MISSED_ANCHOR = 500  # image 0: decodes onto gt O (IoU 39*30 / (40*30) = 0.975) with O's score 0.18
MISSED_BOX = (81, 10, 120, 40)
GT = {
    0: ([(10, 10, 40, 50), (70, 70, 110, 120), (80, 10, 120, 40)], [E, F, O]),
    1: ([(10, 10, 50, 50), (30, 10, 70, 50)], [E, E]),
    2: ([(10, 10, 50, 50)], [E]),
    3: (None, None),
    4: ([(10, 10, 50, 50)], [E]),
}


def _score(logit):  # softmax of one logit against six zeros (the other six classes)
    return math.exp(logit) / (math.exp(logit) + 6)


@pytest.fixture(scope="module")
def fixed():
    _, _, meta = cj.load_pretrained()
    cfg = meta.config
    model = _Outputs(cfg, len(FIRING))
    A, K = cfg.num_anchors(), cfg.num_classes
    anchors = np.asarray(default_boxes_xyxy(cfg), np.float64)
    cls = np.zeros((len(FIRING), A, K), np.float32)
    cls[..., 0] = 10.0
    loc = np.zeros((len(FIRING), A, 4), np.float32)
    for b, fires in FIRING.items():
        for a, box, label, logit in fires:
            cls[b, a] = 0.0
            cls[b, a, label] = logit
            loc[b, a] = _offsets(anchors[a], box)
    cls[0, MISSED_ANCHOR] = [2.0, 0, 0, 1.0, 0, 0, 0]
    loc[0, MISSED_ANCHOR] = _offsets(anchors[MISSED_ANCHOR], MISSED_BOX)
    variables = {"params": {"cls": jnp.asarray(cls), "loc": jnp.asarray(loc)}}
    x = jnp.zeros((len(FIRING), cfg.image_size, cfg.image_size, 3), jnp.float32)
    gt_boxes = [GT[b][0] for b in range(len(FIRING))]
    gt_labels = [GT[b][1] for b in range(len(FIRING))]
    result = cj.diagnose(model, variables, x, gt_boxes, gt_labels, meta=meta, iou=0.5, score_threshold=0.5)
    return result, anchors, model, variables, x, meta


def test_every_kind_is_found_where_it_was_built(fixed):
    result, *_ = fixed
    counts = [r.counts() for r in result[:3]]
    assert counts[0] == {"missed": 1, "false_alarm": 1, "wrong_label": 1, "duplicate": 1}
    assert counts[1] == {"missed": 1, "false_alarm": 0, "wrong_label": 0, "duplicate": 0}
    assert counts[2] == {"missed": 0, "false_alarm": 0, "wrong_label": 0, "duplicate": 1}
    assert [len(r.correct) for r in result[:3]] == [1, 1, 1]
    assert [r.annotated for r in result] == [True, True, True, False, True]
    assert result[4].errors == () and len(result[4].correct) == 1  # NMS kept a box 0.075 worse: the rule
    assert result[3].errors == () and result[3].unannotated == (0,)


def test_the_kept_box_fits_worse_than_the_one_nms_removed(fixed):
    (dup,) = fixed[0][0].duplicates
    assert dup.suppressed and dup.detection == -1 and (dup.anchor, dup.kept_anchor) == (200, 100)
    assert dup.gt == 0 and dup.label == E
    np.testing.assert_allclose([dup.gt_iou, dup.kept_gt_iou, dup.iou], [1.0, 1040 / 1360, 1040 / 1360], atol=1e-4)
    np.testing.assert_allclose(dup.score_margin, _score(5) - _score(4), atol=1e-5)
    assert dup.iou_margin < 0
    assert dup.targets() == {"why": cj.AnchorContrastTarget(0, 100, 200, cls=E)}
    np.testing.assert_allclose(dup.box, (10, 10, 40, 50), atol=1e-3)


def test_a_box_on_another_class_is_a_wrong_label_and_its_object_is_not_also_missed(fixed):
    (wrong,) = fixed[0][0].wrong_labels
    assert (wrong.label, wrong.true_label, wrong.gt, wrong.anchor) == (E, F, 1, 300)
    np.testing.assert_allclose(wrong.iou, 1.0, atol=1e-4)
    assert wrong.targets() == {"why": cj.ClassTarget(0, 300, E, (F,))}
    assert [m.gt for m in fixed[0][0].missed] == [2]


def test_a_box_on_nothing_is_a_false_alarm_against_background(fixed):
    (fa,) = fixed[0][0].false_alarms
    assert (fa.label, fa.anchor, fa.best_iou) == (Q, 400, 0.0)
    np.testing.assert_allclose(fa.score, _score(5), atol=1e-5)
    assert fa.targets() == {"why": cj.ClassTarget(0, 400, Q, (0,))}


def test_a_missed_object_names_the_anchor_that_should_have_fired_and_its_scores(fixed):
    result, anchors, *_ = fixed
    (m,) = result[0].missed
    gt = (80, 10, 120, 40)
    assert (m.gt, m.label, m.anchor, m.winner) == (2, O, MISSED_ANCHOR, 0)
    np.testing.assert_allclose(m.anchor_iou, 0.975, atol=1e-4)
    z = math.exp(2) + math.e + 5  # softmax of (2, 0, 0, 1, 0, 0, 0)
    np.testing.assert_allclose(m.scores, [math.exp(2) / z, 1 / z, 1 / z, math.e / z, 1 / z, 1 / z, 1 / z], atol=1e-5)
    ious = [_hand_iou(a, gt) for a in anchors]  # the default box that matches it best
    assert m.default_anchor == int(np.argmax(ious))
    np.testing.assert_allclose(m.default_iou, max(ious), atol=1e-5)
    assert m.suppressed is None
    assert m.targets() == {
        "why_not": cj.ClassTarget(0, MISSED_ANCHOR, O, (0,)),  # O against the background that won
        "missing": cj.ClassTarget(0, MISSED_ANCHOR, O, "none"),
    }


def test_a_true_object_whose_box_nms_removed_is_missed_with_the_neighbour_named(fixed):
    (m,) = fixed[0][1].missed
    assert (m.gt, m.label, m.anchor) == (1, E, 200)
    s = m.suppressed
    assert s is not None and (s.anchor, s.by_anchor, s.by_detection) == (200, 100, 0)
    np.testing.assert_allclose([s.gt_iou, s.iou], [1360 / 1840, 1040 / 2160], atol=1e-4)
    np.testing.assert_allclose(s.score_margin, _score(5) - _score(4), atol=1e-5)
    assert m.winner == E  # E won there (0.90), only NMS removed it: contrast against every other class
    assert m.targets()["why_not"] == cj.ClassTarget(1, 200, E, "others")
    assert m.targets()["suppressed"] == cj.AnchorContrastTarget(1, 100, 200, cls=E)


def test_a_second_box_that_survived_nms_is_a_duplicate_not_a_false_alarm(fixed):
    (dup,) = fixed[0][2].duplicates
    assert not dup.suppressed and (dup.detection, dup.kept, dup.anchor, dup.kept_anchor) == (1, 0, 200, 100)
    np.testing.assert_allclose([dup.gt_iou, dup.kept_gt_iou, dup.iou], [1200 / 1800, 0.75, 800 / 1800], atol=1e-4)


def test_the_cases_targets_can_be_explained(fixed):
    result, _, model, variables, x, meta = fixed
    targets = [t for r in result for c in (*r.errors, *r.correct) for t in c.targets().values()]
    assert len(targets) == 13
    R = cj.explain(model, variables, x, targets, method="gradient", meta=meta, crop=False)
    assert R.shape == (13, *x.shape[1:]) and np.isfinite(R).all()


@pytest.mark.parametrize(
    "boxes,labels,match",
    [
        (
            [[(10, 10, 200, 50)]],
            [[1]],
            r"image 0: ground truth 0 box \[10\.0, 10\.0, 200\.0, 50\.0\] is not a box inside",
        ),
        ([[(10, 10, 5, 50)]], [[1]], r"ground truth 0 box \[10\.0, 10\.0, 5\.0, 50\.0\]"),
        ([[(10, 10, 50, 50)]], [[7]], r"image 0: ground truth 0 label 7 out of range: valid is 1\.\.6"),
        ([[(10, 10, 50, 50)]], [[0]], r"label 0 out of range"),
        ([[(10, 10, 50, 50)]], [[1, 2]], r"gt_labels must be \[1\]"),
        ([[(10, 10, 50, 50)], []], [[1], []], r"ground truth for 1 images needs 1 box lists"),
        ([None], [[1]], r"both be None"),
    ],
)
def test_ground_truth_that_does_not_fit_is_named(fixed, boxes, labels, match):
    _, _, model, variables, x, meta = fixed
    with pytest.raises(InputError, match=match):
        cj.diagnose(model, variables, x[:1], boxes, labels, meta=meta)


def test_settings_and_detectors_diagnose_cannot_serve_are_refused(fixed):
    _, _, model, variables, x, meta = fixed
    gt = ([[(10, 10, 50, 50)]], [[1]])
    for kwargs, match in (
        ({"iou": 0.0}, r"iou must be a number in \(0, 1\], got 0\.0"),
        ({"score_threshold": 1.0}, r"score_threshold must be in \[0, 1\), got 1\.0"),
    ):
        with pytest.raises(ConfigError, match=match):
            cj.diagnose(model, variables, x[:1], *gt, meta=meta, **kwargs)

    class OwnPipeline:  # a meta with its own post-processing, as BlazeFace's
        config = meta.config

        def detect(self, *args, **kwargs):
            raise AssertionError("not called")

    with pytest.raises(ConfigError, match=r"SSD-style detectors"):
        cj.diagnose(model, variables, x[:1], *gt, meta=OwnPipeline())
