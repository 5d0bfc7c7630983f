"""Evaluation: VOC all-point AP on hand-built cases, matching rules, and the shipped model's
mAP on a few held-out scenes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from crp_jax.cli.evaluate import evaluate_main
from crp_jax.data.splits import HELDOUT_SEED, VALIDATION_SEED
from crp_jax.eval import (
    average_precision,
    evaluate,
    evaluate_detections,
    format_table,
    match_detections,
)

NAMES = ("__background__", "A", "B")
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "default.msgpack"


def test_perfect_detections_give_ap_one():
    gts = [
        (np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), np.array([1, 2])),
        (np.array([[5, 5, 15, 25]]), np.array([1])),
    ]
    dets = [(gts[0][0], np.array([0.9, 0.8]), gts[0][1]), (gts[1][0], np.array([0.7]), gts[1][1])]
    res = evaluate_detections(dets, gts, NAMES)
    assert res["ap"] == {"A": 1.0, "B": 1.0} and res["map"] == 1.0
    assert res["num_gt"] == {"A": 2, "B": 1}


def test_false_positive_ranked_first_by_hand():
    # 2 GTs; ranking FP (0.9), TP (0.8), TP (0.7):
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1; envelope 2/3 everywhere ->
    # AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3
    assert average_precision([0.9, 0.8, 0.7], [False, True, True], 2) == pytest.approx(2 / 3, abs=1e-12)
    # same through matching: the FP is a box far from both GTs
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float64)
    det = np.array([[50, 50, 60, 60], [0, 0, 10, 10], [20, 0, 30, 10]], np.float64)
    res = evaluate_detections([(det, [0.9, 0.8, 0.7], [1, 1, 1])], [(gt, [1, 1])], NAMES[:2])
    assert res["ap"]["A"] == pytest.approx(2 / 3, abs=1e-12)


def test_ap_by_hand_more_cases():
    # TP, FP, TP with 2 GTs: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 1/2*1 + 1/2*2/3
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(0.5 + 1 / 3)
    # one of two GTs found -> 1/2; nothing found -> 0; no GT -> NaN
    assert average_precision([0.9], [True], 2) == pytest.approx(0.5)
    assert average_precision([], [], 3) == 0.0
    assert math.isnan(average_precision([0.5], [False], 0))
    # ranking is by score, not input order
    assert average_precision([0.7, 0.8, 0.9], [True, True, False], 2) == pytest.approx(2 / 3)


def test_matching_rules():
    gt = np.array([[0, 0, 10, 10]], np.float64)
    # duplicate of a matched GT is a false positive; the higher score wins the GT
    tp = match_detections(np.array([[0, 0, 10, 10], [0, 0, 10, 9]]), np.array([0.5, 0.6]), gt)
    np.testing.assert_array_equal(tp, [False, True])
    # IoU 0.5 exactly counts (>=), just below does not
    assert match_detections(np.array([[0, 0, 10, 20]]), np.array([1.0]), gt)[0]  # 100/200
    assert not match_detections(np.array([[0, 0, 10, 21]]), np.array([1.0]), gt)[0]
    # a detection takes the GT it overlaps most; if that one is taken it is an FP even when
    # another GT overlaps it enough (VOC rule)
    gts = np.array([[0, 0, 10, 10], [0, 0, 10, 12]], np.float64)
    det = np.array([[0, 0, 10, 10], [0, 0, 10, 10.5]])
    np.testing.assert_array_equal(match_detections(det, np.array([0.9, 0.8]), gts), [True, False])
    # wrong class never matches: class B detection on a class A GT
    res = evaluate_detections([(gt, [0.9], [2])], [(gt, [1])], NAMES)
    assert res["ap"]["A"] == 0.0 and math.isnan(res["ap"]["B"]) and res["map"] == 0.0


def test_table_lists_every_class_and_map():
    res = evaluate_detections([(np.zeros((0, 4)), [], [])], [(np.array([[0, 0, 5, 5]]), [1])], NAMES)
    text = format_table(res)
    assert "A" in text and "mAP" in text


def test_heldout_seed_is_not_a_training_seed():
    from crp_jax.training import TrainConfig

    assert HELDOUT_SEED != VALIDATION_SEED
    assert TrainConfig().seed not in (HELDOUT_SEED, VALIDATION_SEED)


def test_evaluate_main_usage_and_runtime_errors(tmp_path, capsys):
    assert evaluate_main(["--n", "0"]) == 2
    assert evaluate_main(["--nope"]) == 2
    capsys.readouterr()
    assert evaluate_main(["--weights", str(tmp_path / "missing.msgpack"), "--n", "2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(
    not WEIGHTS.is_file(),
    reason="weights/default.msgpack is absent (train it with `crp-jax train --out weights/default.msgpack`)",
)
def test_shipped_weights_detect_held_out_scenes():
    from crp_jax.ssd.io import load_pretrained

    model, variables, meta = load_pretrained()
    assert meta.class_names == ("__background__", "E", "F", "O", "Q", "P", "R")
    res = evaluate(model, variables, meta, seed=HELDOUT_SEED, n=20, batch_size=20)
    assert res["n"] == 20 and res["seed"] == HELDOUT_SEED
    assert res["map"] >= 0.8, format_table(res)


SSDLITE_WEIGHTS = WEIGHTS.with_name("ssdlite.msgpack")


@pytest.mark.skipif(
    not SSDLITE_WEIGHTS.is_file(),
    reason="weights/ssdlite.msgpack is absent (train it with `crp-jax train --model ssdlite`)",
)
def test_shipped_ssdlite_detects_held_out_scenes():
    from crp_jax.ssd.io import load_pretrained
    from crp_jax.ssd.ssdlite import SSDLite

    model, variables, meta = load_pretrained("ssdlite")
    assert isinstance(model, SSDLite) and not model.batchnorm
    assert meta.class_names == ("__background__", "E", "F", "O", "Q", "P", "R")
    res = evaluate(model, variables, meta, seed=HELDOUT_SEED, n=20, batch_size=20)
    assert res["map"] >= 0.8, format_table(res)
