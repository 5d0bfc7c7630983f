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
