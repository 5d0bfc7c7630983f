"""Smoke test of the quality benchmark (:mod:`crp_jax.eval.quality`, the library behind
benchmarks/quality.py) on a tiny random SSD (64 px, width 0.125).

A random model detects nothing at score 0.5, so the detector path must report 0 counted
detections; the "oracle" path (every ground-truth object explained at its best default box)
forces cases through every metric, the markdown report and both figures. The script itself
runs once end to end (slow) and once on a file that is not a checkpoint.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crp_jax.eval import quality

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    from crp_jax.data import CLASS_NAMES
    from crp_jax.ssd.build import init_variables
    from crp_jax.ssd.config import SSDConfig
    from crp_jax.ssd.meta import Meta
    from crp_jax.ssd.model import SSD

    cfg = SSDConfig.small(num_classes=7, image_size=64, width=0.125)
    model = SSD(cfg)
    variables = init_variables(model, seed=0)
    meta = Meta(config=cfg, class_names=CLASS_NAMES, mean=(0.5,) * 3, std=(0.25,) * 3)
    return model, variables, meta


def test_no_detections_are_reported_as_zero(tiny, tmp_path):
    model, variables, meta = tiny
    md = tmp_path / "q.md"
    res = quality.run_quality(
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
    model, variables, meta = tiny
    md = tmp_path / "q.md"
    res = quality.run_quality(
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


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quality.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_script_reports_a_file_that_is_no_checkpoint_as_a_one_line_error(tmp_path):
    bad = tmp_path / "ckpt_000001.msgpack"
    bad.write_bytes(b"not msgpack at all")
    done = _script("--weights", str(bad), "--n", "1", "--no-md", "--no-figures", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("quality.py: error: ")
    assert str(bad) in done.stderr and "not a crp-jax training checkpoint" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_script_runs_end_to_end_on_saved_weights(tiny, tmp_path):
    from crp_jax.ssd.io import save_weights

    model, variables, meta = tiny
    weights = save_weights(tmp_path / "tiny.msgpack", variables, meta)
    md = tmp_path / "q.md"
    args = ("--weights", str(weights), "--n", "2", "--detector", "oracle", "--methods", "crp")
    done = _script(*args, "--steps", "2", "--n-boot", "20", "--no-figures", "--md", str(md), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = md.read_text()
    assert "tiny.msgpack (weights file; sha256" in text  # the script's description of --weights
    assert "| crp (pair) |" in text and "oracle" in text
