"""benchmarks/speed.py runs end to end (smallest configuration) and reports every row it
promises; timings themselves are never asserted (docs/design.md §6: ratios live in RESULTS.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "speed.py"


def run_speed(tmp_path, *args) -> tuple[dict, str]:
    """``speed.py --no-zennit --no-mem --json OUT *args``: (its JSON, its stdout)."""
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(SCRIPT), *args, "--no-zennit", "--no-mem", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def check_rows(results, T: int, expected: set) -> dict:
    rows = {r["method"]: r for r in results["timing"]}
    assert set(rows) == expected
    for name, r in rows.items():
        assert r["T"] == T and math.isfinite(r["per_target_s"]) and r["per_target_s"] > 0, name
    assert rows["floor"]["vs_floor"] == 1.0
    return rows


def test_speed_script_smoke(tmp_path):
    results, _ = run_speed(
        tmp_path,
        *("--model", "shipped", "--targets", "2", "--images", "1", "--methods", "crp", "--repeats", "1"),
        *("--chunk", "2", "--naive-max-T", "2", "--host-copy", "--device-output"),
    )
    check_rows(results, 2, {"crp", "gradient", "floor", "floor_host", "crp_dev", "naive"})


def test_speed_script_ssdlite(tmp_path):
    """The SSDlite path (depthwise convs, no zennit): FLOPs count a depthwise conv per
    group, and the SSDlite headline is printed."""
    results, stdout = run_speed(
        tmp_path,
        *("--model", "shipped_ssdlite", "--targets", "1", "--images", "1", "--methods", "crp", "--repeats", "1"),
        *("--chunk", "1", "--naive-max-T", "0"),
    )
    check_rows(results, 1, {"crp", "gradient", "floor"})
    layers = results["models"]["shipped_ssdlite"]["conv_layers"]
    dw = [L for L in layers if L["groups"] > 1]
    assert dw and all(L["kernel"][2] == 1 and L["groups"] == L["in"][-1] for L in dw)
    for L in dw:
        _, ho, wo, cout = L["out"]
        assert L["flops"] == 2.0 * ho * wo * cout * L["kernel"][0] * L["kernel"][1]
    assert "crp / floor per target, shipped_ssdlite, T=1, 1 image:" in stdout


def test_torch_ssdlite_runner(monkeypatch):
    """The torch side of the SSDlite320 rows: torchvision's outputs have our shapes, and
    one input gradient per target comes back."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch_ssdlite

    from crp_jax.ssd import SSDConfig

    cfg = SSDConfig.ssdlite320_mobilenet_v3_large(91)
    x = np.random.default_rng(0).normal(size=(1, 320, 320, 3)).astype(np.float32)
    runner = torch_ssdlite.TorchSSDliteRunner(x, threads=1)
    cls, loc = runner.forward(0)
    assert cls.shape == (1, cfg.num_anchors(), 91) and loc.shape == (1, cfg.num_anchors(), 4)
    coef = np.zeros((2, 91), np.float32)
    coef[:, 1] = 1.0
    grads = runner.run(np.zeros(2, int), np.array([0, 3000]), coef, keep=2)
    runner.close()
    assert len(grads) == 2 and all(
        g.shape == (320, 320, 3) and np.isfinite(g).all() and np.abs(g).max() > 0 for g in grads
    )
