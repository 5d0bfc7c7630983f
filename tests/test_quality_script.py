"""Smoke test of benchmarks/quality.py on a tiny random SSD (64 px, width 0.125).

A random model detects nothing at score 0.5, so the detector path must report 0 counted
detections; the "oracle" path (every ground-truth object explained at its best default box)
forces cases through every metric, the markdown report and both figures.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    name = "crp_benchmarks_quality"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny():
    from crp_jax.data import CLASS_NAMES
    from crp_jax.ssd.config import SSDConfig
    from crp_jax.ssd.meta import Meta
    from crp_jax.ssd.model import SSD, init_variables

    cfg = SSDConfig.small(num_classes=7, image_size=64, width=0.125)
    model = SSD(cfg)
    variables = init_variables(model, seed=0)
    meta = Meta(config=cfg, class_names=CLASS_NAMES, mean=(0.5,) * 3, std=(0.25,) * 3)
    return model, variables, meta


def test_no_detections_are_reported_as_zero(tiny, tmp_path):
    q = _load_script()
    model, variables, meta = tiny
    md = tmp_path / "q.md"
    res = q.run_quality(
        model,
        variables,
        meta,
        n=2,
        methods=("crp",),
        out_dir=tmp_path / "fig",
        md_path=md,
        score_threshold=0.99,
        n_boot=50,
        log=lambda s: None,
    )
    assert res["stats"]["matched"] == 0
    assert res["figures"] == []
    text = md.read_text()
    assert "0 detections counted" in text


def test_forced_detections_run_every_metric(tiny, tmp_path):
    q = _load_script()
    model, variables, meta = tiny
    md = tmp_path / "q.md"
    res = q.run_quality(
        model,
        variables,
        meta,
        n=2,
        methods=("crp", "lrp_ab"),
        out_dir=tmp_path / "fig",
        md_path=md,
        detector="oracle",
        steps=4,
        n_boot=50,
        log=lambda s: None,
    )
    k = res["stats"]["matched"]
    assert k >= 2
    assert res["rows"] == ["crp", "crp_pair", "lrp_ab"]
    table = res["table"]
    for row in res["rows"]:
        v = res["values"][row]
        assert len(v["epg"]) == len(v["class_r"]) == len(v["aopc"]) == k
        assert all(0.0 <= e <= 1.0 for e in v["epg"])
        assert all(-1.0 <= r <= 1.0 for r in v["class_r"])
        assert all(math.isfinite(a) for a in v["aopc_delta"] + v["aopc_pair_delta"])
        assert table[row]["epg"][3] == k
    for row in ("crp", "lrp_ab"):
        assert len(res["values"][row]["loc_cx"]) == k and set(res["values"][row]["loc_cx"]) <= {0.0, 1.0}
    # (det vs partner) and (partner vs det) are one linear propagation with opposite signs
    assert all(r == pytest.approx(-1.0, abs=1e-4) for r in res["values"]["crp_pair"]["class_r"])
    assert res["linearity"] < 1e-4
    # conservation: lrp_ab one-hot sums to about 1, crp contrasts to about 0 (relative to sum |R|)
    assert np.median(res["values"]["lrp_ab"]["sum_R"]) == pytest.approx(1.0, abs=0.2)
    assert np.median(res["values"]["crp"]["cons_rel_err"]) < 0.2
    text = md.read_text()
    assert "| crp (pair) |" in text and "| lrp_ab |" in text and "oracle" in text
    assert len(res["figures"]) == 2
    for p in res["figures"]:
        with Image.open(p) as im:
            assert im.width > 100 and im.height > 100
        assert Path(p).stat().st_size < 300_000
