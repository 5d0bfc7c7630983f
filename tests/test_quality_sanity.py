"""Smoke test of the quality benchmark's --sanity sections (:mod:`crp_jax.eval.quality`:
randomization cascade, pointing game, box-aware deletion, localization-head variants) on a
tiny random SSD with oracle detections: every section runs, the weight-independent control
stays at 1 and the report has the new tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crp_jax.eval import quality

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # compiles seven composites and runs a 20-step cascade per method


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from crp_jax.data import CLASS_NAMES
    from crp_jax.ssd.build import init_variables
    from crp_jax.ssd.config import SSDConfig
    from crp_jax.ssd.meta import Meta
    from crp_jax.ssd.model import SSD

    cfg = SSDConfig.small(num_classes=7, image_size=64, width=0.125)
    model = SSD(cfg)
    variables = init_variables(model, seed=0)
    meta = Meta(config=cfg, class_names=CLASS_NAMES, mean=(0.5,) * 3, std=(0.25,) * 3)
    out = tmp_path_factory.mktemp("q")
    res = quality.run_quality(
        model,
        variables,
        meta,
        n=2,
        methods=("crp", "gradient"),
        out_dir=out / "fig",
        md_path=out / "q.md",
        detector="oracle",
        steps=2,
        n_boot=20,
        log=lambda s: None,
        sanity=True,
        sanity_scenes=1,
        box_steps=2,
        box_fraction=0.1,
    )
    return quality, res, out


def test_the_pointing_game_rows_are_hit_shares_and_the_centre_baseline_is_reported(run):
    _, res, _ = run
    t = res["table"]
    for row in ("crp", "gradient", "centre"):
        for key in ("pg", "pg0"):
            est, lo, hi, k = t[row][key]
            assert 0.0 <= lo <= est <= hi <= 1.0 and k == res["stats"]["matched"]
    assert set(res["values"]["crp"]["pg"]) <= {0.0, 1.0}


def test_the_edge_map_control_stays_at_one_and_every_cascade_starts_at_one(run):
    q, res, _ = run
    rz = res["sanity"]["randomization"]
    assert rz["blocks"][0] == "trained" and rz["blocks"][1] == "heads" and rz["blocks"][-1] == "conv1_1"
    for m, steps in rz["per_method"].items():
        for k, v in steps[0][1].items():
            np.testing.assert_allclose(v, 1.0, atol=1e-9, err_msg=f"{m} {k}")
    for _name, sims in rz["per_method"][q.CONTROL]:
        for v in sims.values():
            np.testing.assert_allclose(v, 1.0, atol=1e-12)


def test_box_deletion_curves_start_at_the_original_box_for_every_row(run):
    q, res, _ = run
    bx = res["sanity"]["box"]
    assert bx["fractions"][0] == 0.0 and bx["fractions"][-1] == pytest.approx(0.1, abs=1 / 64**2)
    assert {"random", "crp", "gradient", *q.LOC_VARIANTS} <= set(bx["curves"])
    n = res["sanity"]["n_cases"]
    for row, curves in bx["curves"].items():
        assert len(curves) == n * 8, row  # 4 coordinates x 2 signs per detection
        for shift, iou, _, _ in curves.values():
            assert shift[0] == 0.0 and iou[0] == pytest.approx(1.0)


def test_the_report_has_the_new_sections_and_the_cascade_figure(run):
    _, res, out = run
    text = (out / "q.md").read_text()
    for title in ("**Pointing game**", "**Model randomization, cascading**", "**Box-aware faithfulness**"):
        assert title in text
    assert "H1, the rule at the localization heads" in text and "H3, the deletion size" in text
    assert "| edge map (control) |" in text
    assert "Reading of these sections" in text and "- H1 (loc-head rule)" in text
    assert any(p.endswith("randomization_cascade.png") for p in res["figures"])
