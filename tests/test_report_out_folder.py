"""Where ``crp-jax report`` writes: ``--out`` on another file system than its parent (a
mount point), a failure or Ctrl-C during the final move, ``--force`` beside the user's own
folders, and the folders' modes. Checked against file-system facts (``st_dev``, modes,
file contents), with a :class:`ReportWriter` that holds no image (its index, report.json
and legend are a whole report) and one real ``crp-jax report`` run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crp_jax import report as report_pkg
from crp_jax.cli import main
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.errors import InputError
from crp_jax.report import ReportWriter


def _write(out, tag: str, **kw) -> Path:
    settings = {"tag": tag, "score_threshold": 0.5, "max_detections": 20, "weights": "none"}
    with ReportWriter(out, None, None, None, settings=settings, **kw) as w:
        return w.finish()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _other_device_dir(tmp_path: Path) -> Path:
    """A fresh folder on a file system other than ``tmp_path``'s (skip when there is none)."""
    here = os.stat(tmp_path).st_dev
    for root in ("/dev/shm", f"/run/user/{os.getuid()}", "/var/tmp", "/tmp", os.path.expanduser("~")):
        try:
            if os.path.isdir(root) and os.access(root, os.W_OK) and os.stat(root).st_dev != here:
                return Path(tempfile.mkdtemp(prefix="crp-jax-test-", dir=root))
        except OSError:
            continue
    pytest.skip(f"no writable folder on a file system other than {tmp_path}'s (device {here})")


@pytest.fixture
def other_device(tmp_path):
    import shutil

    d = _other_device_dir(tmp_path)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_report_replaces_the_old_one_when_out_is_on_another_file_system(tmp_path, other_device):
    # --out is a mount point: the folder lives on another device than its parent folder
    (tmp_path / "out").symlink_to(other_device, target_is_directory=True)
    out = tmp_path / "out"
    assert os.stat(out).st_dev != os.stat(out.parent).st_dev
    _write(out, "old")
    _write(out, "new")
    doc = json.loads((out / "report.json").read_text())
    assert doc["settings"]["tag"] == "new"
    assert (out / "index.html").is_file() and (out / "pages" / "legend.png").is_file()
    assert sorted(p.name for p in other_device.iterdir()) == ["index.html", "pages", "report.json"]


def test_the_real_command_replaces_a_report_on_another_file_system(tmp_path, other_device):
    png = tmp_path / "scene.png"
    Image.fromarray(generate_scene(HELDOUT_SEED, 0).image).save(png)
    (tmp_path / "out").symlink_to(other_device, target_is_directory=True)
    out = tmp_path / "out"
    _write(out, "old")
    assert main(["report", str(png), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["generator"] == report_pkg.GENERATOR and [e["stem"] for e in doc["images"]] == ["scene"]
    assert (out / "pages" / "scene.html").is_file()


def test_a_failed_move_keeps_the_old_report_whole(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _write(out, "old")
    before = _snapshot(out)
    real = os.replace

    def failing(src, dst):  # the first rename of a NEW entry into --out fails, as across devices
        src, dst = Path(src), Path(dst)
        if dst.parent == out and src.name == dst.name and ".old" not in src.parts:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real(src, dst)

    monkeypatch.setattr(report_pkg.os, "replace", failing)
    with pytest.raises(OSError, match="cross-device"):
        _write(out, "new")
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "pages", "report.json"]


def test_ctrl_c_during_the_final_move_leaves_the_old_report_whole(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _write(out, "old")
    before = _snapshot(out)
    real = os.replace
    calls = []

    def interrupting(src, dst):
        real(src, dst)
        calls.append(dst)
        if len(calls) == 2:  # in the middle of the move
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(report_pkg.os, "replace", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _write(out, "new")
    monkeypatch.undo()
    assert len(calls) > 2  # the move was rolled back, not cut
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "pages", "report.json"]


def test_force_never_deletes_the_users_own_folders(tmp_path):
    out = tmp_path / "out"
    for name in ("scenes", "relevance", "notes"):
        (out / name).mkdir(parents=True)
        (out / name / "mine.txt").write_text(name)
    _write(out, "first", force=True)
    _write(out, "second", force=True)
    for name in ("scenes", "relevance", "notes"):
        assert (out / name / "mine.txt").read_text() == name
    doc = json.loads((out / "report.json").read_text())
    assert doc["settings"]["tag"] == "second"
    assert doc["files"] == ["index.html", "pages", "report.json"]


def test_force_refuses_to_replace_a_users_pages_folder_and_names_it(tmp_path):
    out = tmp_path / "out"
    (out / "pages").mkdir(parents=True)
    (out / "pages" / "mine.html").write_text("mine")
    with pytest.raises(InputError, match="pages"):
        _write(out, "x", force=True)
    assert (out / "pages" / "mine.html").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["pages"]  # no temporary folder left


def test_a_rerun_removes_the_old_reports_stale_entries_and_only_those(tmp_path):
    out = tmp_path / "out"
    _write(out, "old", save_relevance=True)
    (out / "relevance").mkdir(exist_ok=True)  # what the old report wrote (an empty folder here)
    doc = json.loads((out / "report.json").read_text())
    doc["files"] = sorted(doc["files"] + ["relevance"])
    (out / "report.json").write_text(json.dumps(doc))
    (out / "mine.txt").write_text("mine")
    _write(out, "new")
    assert not (out / "relevance").exists()
    assert (out / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_report_folders_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        out = _write(tmp_path / "new" / "out", "x")
    finally:
        os.umask(old)
    want = 0o777 & ~mask
    for d in (out, out / "pages"):
        assert stat.S_IMODE(os.stat(d).st_mode) == want, (d, oct(os.stat(d).st_mode))
    assert np.all([stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~mask for f in out.rglob("*") if f.is_file()])
