"""benchmarks/speed.py runs end to end (smallest configuration) and reports every row it
promises; timings themselves are never asserted (docs/design.md §6: ratios live in RESULTS.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_speed_script_smoke(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "speed.py"),
        "--model",
        "shipped",
        "--targets",
        "2",
        "--images",
        "1",
        "--methods",
        "crp",
        "--repeats",
        "1",
        "--chunk",
        "2",
        "--no-zennit",
        "--no-mem",
        "--naive-max-T",
        "2",
        "--host-copy",
        "--device-output",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())["timing"]}
    assert set(rows) == {"crp", "gradient", "floor", "floor_host", "crp_dev", "naive"}
    for name, r in rows.items():
        assert r["T"] == 2 and math.isfinite(r["per_target_s"]) and r["per_target_s"] > 0, name
    assert rows["floor"]["vs_floor"] == 1.0
