"""Ctrl-C in the first seconds of a command (while JAX is imported, the model loaded and
compiled): JAX can swallow the ``KeyboardInterrupt`` ("Exception ignored in:
_xla_gc_callback"), after which the run used to complete with exit 0 and replace the old
output. Whenever SIGINT arrives, the exit status must be 130 and the old output untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.report import ReportWriter

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupt_at(delay: float, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CRP_JAX_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "crp_jax", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    assert proc.poll() is None, "the command ended before the signal"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def scene_png(tmp_path):
    p = tmp_path / "scene.png"
    Image.fromarray(generate_scene(HELDOUT_SEED, 0).image).save(p)
    return p


@pytest.mark.parametrize("delay", [0.5, 1.5])
def test_ctrl_c_early_in_report_exits_130_and_keeps_the_old_report(tmp_path, scene_png, delay):
    out = tmp_path / "report"
    settings = {"score_threshold": 0.5, "max_detections": 20, "weights": "old"}
    with ReportWriter(out, None, None, None, settings=settings) as w:
        w.finish()
    before = _snapshot(out)
    r = _interrupt_at(delay, ["report", str(scene_png), "--out", str(out), "--no-progress"], tmp_path)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert "interrupted" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "pages", "report.json"]


def test_ctrl_c_early_in_detect_exits_130_and_writes_nothing(tmp_path, scene_png):
    # (later, during an image, detect finishes that image first: crp_jax/interrupts.py)
    out = tmp_path / "drawn"
    out.mkdir()
    (out / "scene_detections.png").write_bytes(b"the old drawing")
    r = _interrupt_at(0.5, ["detect", str(scene_png), "--out", str(out), "--no-progress"], tmp_path)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert (out / "scene_detections.png").read_bytes() == b"the old drawing"
    assert sorted(p.name for p in out.iterdir()) == ["scene_detections.png"]
    assert r.stdout == ""  # no detections printed: it stopped before the image
