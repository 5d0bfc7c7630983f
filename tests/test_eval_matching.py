"""Detection-to-ground-truth matching in one image (``crp_jax.eval.match_to_ground_truth``),
against matches worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from crp_jax.errors import ConfigError
from crp_jax.eval import match_detections, match_to_ground_truth

SQUARE = [0, 0, 10, 10]
GT_BOXES = np.array([SQUARE, SQUARE, [20, 20, 30, 30]], np.float64)
GT_LABELS = np.array([1, 2, 1])


def test_each_detection_takes_the_best_free_ground_truth_of_its_own_label():
    det_boxes = np.array(
        [
            SQUARE,  # label 2: the label-2 square (index 1), although index 0 overlaps as much
            SQUARE,  # label 1: the label-1 square (index 0)
            SQUARE,  # label 1, lower score: index 0 is taken -> unmatched
            [20, 20, 30, 40],  # label 1: IoU with index 2 = 100 / 200 = 0.5 >= 0.5 -> matched
            SQUARE,  # label 3, best score: no ground truth of label 3 -> unmatched
        ],
        np.float64,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    labels = np.array([2, 1, 1, 1, 3])
    taken = np.zeros(3, bool)
    got = match_to_ground_truth(det_boxes, scores, GT_BOXES, 0.5, det_labels=labels, gt_labels=GT_LABELS, taken=taken)
    np.testing.assert_array_equal(got, [1, 0, -1, 2, -1])
    np.testing.assert_array_equal(taken, [True, True, True])


def test_a_higher_score_claims_first_whatever_the_list_order():
    det_boxes = np.array([[0, 0, 10, 12], SQUARE], np.float64)  # IoU 100/120 and 1 with the square
    got = match_to_ground_truth(det_boxes, [0.3, 0.9], GT_BOXES[:1], 0.5)
    np.testing.assert_array_equal(got, [-1, 0])  # the second detection ranks first and takes it
    np.testing.assert_array_equal(match_detections(det_boxes, [0.3, 0.9], GT_BOXES[:1], 0.5), [False, True])


def test_iou_below_the_threshold_and_empty_inputs_match_nothing():
    got = match_to_ground_truth(np.array([[0, 0, 10, 21]], np.float64), [1.0], GT_BOXES[:1], 0.5)
    np.testing.assert_array_equal(got, [-1])  # IoU 100 / 210 < 0.5
    assert match_to_ground_truth(np.zeros((0, 4)), [], GT_BOXES).shape == (0,)
    np.testing.assert_array_equal(match_to_ground_truth(GT_BOXES, [1, 1, 1], np.zeros((0, 4))), [-1, -1, -1])


def test_labels_must_be_given_for_both_sides():
    with pytest.raises(ConfigError, match="both"):
        match_to_ground_truth(GT_BOXES, [1, 1, 1], GT_BOXES, det_labels=GT_LABELS)


def test_the_report_matches_detections_as_voc_does():
    """The report's table (crp_jax/report/scenes.py) uses the benchmark's matching: a
    detection whose best ground truth is already taken stays unmatched, even when another
    free ground truth of its label overlaps it enough (a greedy "best free" match would give
    it that one)."""
    from types import SimpleNamespace

    from crp_jax.report.scenes import match

    class Det(SimpleNamespace):
        def __len__(self):
            return len(self.scores)

    # gt 0 = [0, 0, 10, 10], gt 1 = [4, 0, 14, 10], both label 1.
    # det 0 (score .9) = gt 0 exactly; det 1 (score .8) = [1, 0, 11, 10]: IoU with gt 0 is
    # 90 / 110 = 0.818 (its best, but taken), with gt 1 70 / 130 = 0.538 (free, >= 0.5).
    scene = SimpleNamespace(
        boxes=np.array([[0, 0, 10, 10], [4, 0, 14, 10]], np.float32), labels=np.array([1, 1]), num_objects=2
    )
    det = Det(
        boxes=np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float32),
        scores=np.array([0.9, 0.8]),
        labels=np.array([1, 1]),
    )
    assert match(det, scene) == [(0, 0)]
    # with the order of scores swapped, det 1 takes gt 0 first and det 0 (best: gt 0) is unmatched
    det.scores = np.array([0.7, 0.8])
    assert match(det, scene) == [(1, 0)]
    # another label never matches
    det.labels = np.array([2, 2])
    assert match(det, scene) == []
