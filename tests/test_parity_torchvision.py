"""Measured parity with torchvision's ssd300_vgg16 (converted random weights, one image).

The setup and the figures come from ``benchmarks/parity_torchvision.py`` (one source of
truth for what the lead quotes and what is asserted here); see its docstring for how the
torch model is built and edited before conversion.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

pytestmark = [pytest.mark.slow, pytest.mark.torch]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "parity_torchvision.py"
BOX_ATOL = 1e-3  # pixels
SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def parity():
    pytest.importorskip("crp_jax.ssd.detect")
    spec = importlib.util.spec_from_file_location("parity_torchvision", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.run_parity(seed=0, box_atol=BOX_ATOL, score_atol=SCORE_ATOL)


def test_preprocess_equals_torchvision_transform(parity):
    # torchvision's GeneralizedRCNNTransform (normalise, resize 300 -> 300) vs cj.preprocess
    assert parity["input_max_abs_diff"] <= 1e-4


def test_raw_outputs(parity):
    assert parity["cls_max_rel_diff"] <= 1e-4, parity["cls_max_rel_diff"]
    assert parity["loc_max_rel_diff"] <= 1e-4, parity["loc_max_rel_diff"]


def test_default_boxes(parity):
    assert parity["anchors_shape"] == (8732, 4)
    assert parity["anchors_max_abs_diff_px"] <= 1e-3


def _check_detections(f):
    ours, tv = f["arrays"]["ours"], f["arrays"]["torchvision"]
    n = len(tv["scores"])
    assert n > 0 and len(set(tv["labels"].tolist())) >= 3  # the setup really detects things
    assert len(ours["scores"]) == n
    # The final cut is not a near-tie (else the two sets could legitimately differ).
    assert f["det_cut_score_gap"] > 4 * SCORE_ATOL
    # Matched one-to-one (label, box within 1e-3 px, score within 1e-5) ...
    assert f["detections_matched"] == n
    # ... and in the same order, except that neighbours whose scores tie to within the
    # tolerance may swap (the order is by score; no swap happens on the reference machine).
    same = (
        (ours["labels"] == tv["labels"])
        & (np.abs(ours["scores"] - tv["scores"]) <= SCORE_ATOL)
        & np.all(np.abs(ours["boxes"] - tv["boxes"]) <= BOX_ATOL, axis=1)
    )
    for i in np.flatnonzero(~same):
        lo, hi = max(i - 1, 0), min(i + 2, n)
        near_tie = np.abs(tv["scores"][lo:hi] - tv["scores"][i]) <= 2 * SCORE_ATOL
        assert near_tie.sum() > 1, (
            f"detection {i} differs and is not a near-tie: ours {ours['labels'][i]} {ours['scores'][i]} "
            f"{ours['boxes'][i]}, torchvision {tv['labels'][i]} {tv['scores'][i]} {tv['boxes'][i]}"
        )


def test_detections(parity):
    _check_detections(parity)


def test_detections_resized_image(parity):
    """A 375x500 image end to end: torchvision's transform resizes it and maps boxes back;
    crp-jax's preprocess_with_sizes + detect(image_sizes=...) must do the same."""
    r = parity["resized"]
    assert r["input_max_abs_diff"] <= 1e-3  # inputs are on the 0..255 scale here
    _check_detections(r)
