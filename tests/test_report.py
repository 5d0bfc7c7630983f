"""``crp-jax report`` without a browser: files, numbers against independent recomputation,
bad input, interruption, and the persistent compilation cache.

One report (the shipped 128 px model, two generated held-out scenes, one of them with
``--save-relevance``) is built once per module; the numbers in ``report.json`` are checked
against the saved relevance with explicit numpy formulas and against ``cj.explain`` called
directly. (The browser checks are in tests/test_report_browser.py.)
"""

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import crp_jax as cj
from crp_jax import report as report_pkg
from crp_jax.cli import main
from crp_jax.compile_cache import default_cache_dir, resolve_cache_dir
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.report.build import runner_up

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene_pngs(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenes")
    paths = []
    for i in (0, 1):
        p = d / f"held_out_{i}.png"
        Image.fromarray(generate_scene(HELDOUT_SEED, i).image).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory, scene_pngs):
    out = tmp_path_factory.mktemp("rep") / "report"
    bad = tmp_path_factory.mktemp("bad") / "not_an_image.png"
    bad.write_text("hello")
    rc = main(["report", *map(str, scene_pngs), str(bad), "--out", str(out), "--save-relevance", "--no-progress"])
    return out, rc, json.loads((out / "report.json").read_text()), bad


def test_runner_up_is_the_best_other_foreground_class_by_logit():
    # background (index 0) has the highest logit but is never the runner-up
    assert runner_up(np.array([9.0, 1.0, 3.0, 2.0]), 1) == 2
    assert runner_up(np.array([0.0, 5.0, 3.0, 4.0]), 1) == 3
    assert runner_up(np.array([0.0, 5.0]), 1) is None


def test_report_writes_index_pages_json_and_lists_the_unreadable_image(built):
    out, rc, doc, bad = built
    assert rc == 1  # one image could not be read; the rest is still written
    assert (out / "index.html").is_file() and doc["generator"] == "crp-jax report"
    assert [f["path"] for f in doc["failures"]] == [str(bad)]
    index = (out / "index.html").read_text()
    assert html.escape(str(bad)) in index and html.escape(doc["failures"][0]["reason"]) in index
    for e in doc["images"]:
        assert (out / e["page"]).is_file()
        assert e["page"] in index


def test_sections_follow_detect_order_and_defaults(built, scene_pngs):
    out, _, doc, _ = built
    model, variables, meta = cj.load_pretrained()
    for path, e in zip(scene_pngs, doc["images"]):
        x = cj.preprocess([np.asarray(Image.open(path).convert("RGB"))], meta)
        det = cj.detect(model, variables, x, meta=meta, score_threshold=0.5, max_detections=20)[0]
        page = (out / e["page"]).read_text()
        found = [int(n) for n in re.findall(r'<section[^>]*data-detection="(\d+)"', page)]
        assert found == list(range(len(det)))
        assert [d["label"] for d in e["detections"]] == [int(k) for k in det.labels]
        np.testing.assert_allclose([d["score"] for d in e["detections"]], det.scores, rtol=1e-6)


def test_json_numbers_match_the_saved_relevance(built):
    out, _, doc, _ = built
    checked = 0
    for e in doc["images"]:
        arrays = np.load(out / e["relevance"])
        for d in e["detections"]:
            i = d["detection"]
            R = arrays[f"det{i:02d}_crp"].astype(np.float64)
            # conservation of a contrast: |sum R - 0| / sum |R|
            assert d["conservation"]["crp"]["relative_error"] == pytest.approx(abs(R.sum()) / np.abs(R).sum(), rel=1e-4)
            L = arrays[f"det{i:02d}_lrp_ab"].astype(np.float64)
            assert d["conservation"]["lrp_ab"]["relative_error"] == pytest.approx(
                abs(L.sum() - 1.0), rel=1e-4, abs=1e-7
            )
            if d["runner_up"] is not None:
                for m in ("crp", "lrp_ab"):
                    a = arrays[f"det{i:02d}_{m}"].sum(-1).ravel()
                    b = arrays[f"det{i:02d}_{m}_runner_up"].sum(-1).ravel()
                    assert d["class_pair_r"][m] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-5)
                checked += 1
            # the flow chart starts at the input: its sums are the relevance's own
            assert d["flow"]["crp"]["abs"][0] == pytest.approx(np.abs(R).sum(), rel=1e-5)
    assert checked > 0


def test_saved_maps_are_what_explain_returns_for_the_same_questions(built, scene_pngs):
    out, _, doc, _ = built
    model, variables, meta = cj.load_pretrained()
    e = doc["images"][0]
    d = e["detections"][0]
    x = cj.preprocess([np.asarray(Image.open(scene_pngs[0]).convert("RGB"))], meta)
    a, k, k2 = d["anchor"], d["label"], d["runner_up"]["label"]
    targets = [cj.ClassTarget(0, a, k, (k2,)), cj.LocTarget(0, a, "cy", -1)]
    R = cj.explain(model, variables, x, targets, method="crp", meta=meta)
    arrays = np.load(out / e["relevance"])
    np.testing.assert_allclose(arrays["det00_crp_pair"], R[0], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(arrays["det00_loc_cy-"], R[1], rtol=1e-4, atol=1e-9)


def test_links_are_relative_and_resolve(built):
    out, *_ = built
    pages = list(out.glob("*.html")) + list(out.glob("pages/*.html"))
    assert len(pages) >= 3
    for page in pages:
        text = page.read_text()
        assert "://" not in text  # no URL with a scheme: nothing off the machine
        for url in re.findall(r'(?:src|href)="([^"]+)"', text):
            assert not url.startswith(("/", "http", "//", "data:")), (page, url)
            if not url.startswith("#"):
                assert (page.parent / url.split("#")[0]).exists(), (page, url)
        assert text.count("<img") == len(re.findall(r'<img[^>]+alt="[^"]+"', text))  # alt text on every image


def test_out_that_is_another_folder_is_refused_unless_force(tmp_path, scene_pngs, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc = main(["report", str(scene_pngs[0]), "--out", str(out), "--no-progress", "--max-detections", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and str(out) in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    rc = main(["report", str(scene_pngs[0]), "--out", str(out), "--no-progress", "--max-detections", "1", "--force"])
    assert rc == 0 and (out / "index.html").is_file() and (out / "notes.txt").read_text() == "keep me"
    # a report folder is replaced without --force, and the old pages go
    (out / "pages" / "stale.html").write_text("old")
    rc = main(["report", str(scene_pngs[1]), "--out", str(out), "--no-progress", "--max-detections", "1"])
    assert rc == 0 and not (out / "pages" / "stale.html").exists()
    assert [e["source"] for e in json.loads((out / "report.json").read_text())["images"]] == [str(scene_pngs[1])]


def test_interrupt_leaves_no_half_written_report(tmp_path, scene_pngs, monkeypatch, capsys):
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(args[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(report_pkg.ReportWriter, "add_image", interrupted)
    out = tmp_path / "report"
    rc = main(["report", *map(str, scene_pngs), "--out", str(out), "--no-progress"])
    assert rc == 130 and calls == [str(scene_pngs[0])]
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the report nor its temporary folder


def test_progress_lines_give_an_eta_on_stderr(tmp_path, scene_pngs, capsys):
    rc = main(["report", *map(str, scene_pngs), "--out", str(tmp_path / "r"), "--max-detections", "1"])
    err = capsys.readouterr().err
    assert rc == 0
    lines = [ln for ln in err.splitlines() if "report:" in ln]
    assert re.search(r"\[1/2\] \d+ s elapsed, about \d+ s left", lines[0])
    assert re.search(r"\[2/2\] .*about 0 s left", lines[1])


def test_bad_methods_and_no_input_are_usage_errors(tmp_path, capsys):
    assert main(["report", "x.png", "--out", str(tmp_path / "r"), "--methods", "crp,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_cache_folder_follows_flag_then_environment_then_xdg(tmp_path):
    env = {"HOME": str(tmp_path / "home")}
    assert default_cache_dir(env) == Path(os.path.expanduser("~")) / ".cache" / "crp-jax" / "jax"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert resolve_cache_dir(environ=env) == tmp_path / "xdg" / "crp-jax" / "jax"
    env["CRP_JAX_CACHE_DIR"] = str(tmp_path / "c")
    assert resolve_cache_dir(environ=env) == tmp_path / "c"
    assert resolve_cache_dir(str(tmp_path / "flag"), environ=env) == tmp_path / "flag"
    assert resolve_cache_dir(str(tmp_path / "flag"), no_cache=True, environ=env) is None
    for word in ("off", "0", "OFF", "none"):
        assert resolve_cache_dir(environ={**env, "CRP_JAX_CACHE_DIR": word}) is None
    assert resolve_cache_dir(environ={"XDG_CACHE_HOME": ""}) == default_cache_dir({})


def test_cli_writes_compiled_programs_to_the_cache_dir_and_not_with_no_cache(tmp_path, scene_pngs):
    # every program is cached (a fast machine compiles detect's in less than the default 0.2 s)
    env = dict(os.environ, PYTHONPATH=str(ROOT), CRP_JAX_CACHE_DIR="off", CRP_JAX_CACHE_MIN_SECONDS="0")
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "crp_jax", "detect", str(scene_pngs[0])]
    subprocess.run(cmd + ["--cache-dir", str(cache)], env=env, check=True, capture_output=True, timeout=300)
    assert cache.is_dir() and any(cache.iterdir())
    other = tmp_path / "other"
    subprocess.run(cmd + ["--no-cache"], env=dict(env, CRP_JAX_CACHE_DIR=str(other)), check=True, timeout=300)
    assert not other.exists()


def test_cache_options_are_taken_from_any_position_of_any_command():
    from crp_jax.cli.app import _cache_options

    assert _cache_options(["--no-cache", "detect", "a.png"]) == (["detect", "a.png"], True, None)
    assert _cache_options(["train", "--steps", "3", "--cache-dir", "/c"]) == (["train", "--steps", "3"], False, "/c")
    assert _cache_options(["report", "--cache-dir=/d", "x"]) == (["report", "x"], False, "/d")
    # after "--" everything is an argument of the command
    assert _cache_options(["detect", "--", "--no-cache"]) == (["detect", "--", "--no-cache"], False, None)


def test_report_help_exits_0(capsys):
    assert main(["report", "--help"]) == 0
    assert "--scenes" in capsys.readouterr().out


def test_an_image_that_fails_while_explained_is_listed_and_leaves_no_files(tmp_path, scene_pngs, monkeypatch):
    real = report_pkg.detection_explanations

    def failing_first(model, variables, meta, x, det, *args, **kwargs):
        if not failing_first.failed:
            failing_first.failed = True
            raise cj.InputError("explain went wrong on purpose")
        return real(model, variables, meta, x, det, *args, **kwargs)

    failing_first.failed = False
    monkeypatch.setattr(report_pkg, "detection_explanations", failing_first)
    out = tmp_path / "r"
    rc = main(["report", *map(str, scene_pngs), "--out", str(out), "--no-progress", "--max-detections", "1"])
    doc = json.loads((out / "report.json").read_text())
    assert rc == 1
    assert doc["failures"] == [{"path": str(scene_pngs[0]), "reason": "explain went wrong on purpose"}]
    assert [e["source"] for e in doc["images"]] == [str(scene_pngs[1])]
    assert sorted(p.name for p in (out / "pages").iterdir()) == ["held_out_1", "held_out_1.html", "legend.png"]


def test_scene_matching_takes_each_ground_truth_once_by_score():
    from types import SimpleNamespace

    from crp_jax.report.scenes import match

    gt = SimpleNamespace(
        boxes=np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32),
        labels=np.array([1, 1, 2]),
        num_objects=3,
    )
    det = cj.Detections(
        boxes=np.array([[2, 0, 12, 10], [0, 0, 10, 10], [50, 50, 60, 60], [50, 50, 60, 60]], np.float32),
        scores=np.array([0.6, 0.9, 0.8, 0.7], np.float32),
        labels=np.array([1, 1, 1, 2]),
        anchors=np.arange(4),
    )
    # det 1 (best score) takes gt 0 (IoU 1), det 0 then gt 1 (IoU 1); det 2 has the wrong
    # label for gt 2, det 3 the right one
    assert sorted(match(det, gt)) == [(0, 1), (1, 0), (3, 2)]


def test_quality_cells_are_means_with_bootstrap_intervals_of_the_values():
    from crp_jax.report.scenes import quality_table

    rng = np.random.default_rng(1)
    a, b = rng.normal(0.5, 0.1, 7), rng.normal(0.2, 0.1, 5)
    per_scene = [
        {"crp": {"epg": list(a), "part": [float("nan"), 2.0]}},
        {"crp": {"epg": list(b)}},
    ]
    q = quality_table(per_scene, ["crp"], n_scenes=2, seed=0)
    cell = q["cells"]["crp"]["epg"]
    both = np.concatenate([a, b])
    assert cell["n"] == 12 and cell["mean"] == pytest.approx(both.mean())
    assert cell["lo"] < both.mean() < cell["hi"]
    assert q["cells"]["crp"]["part"] == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 1}  # NaN left out
    assert q["cells"]["crp_pair"]["epg"] is None


def test_ctrl_c_in_a_real_run_exits_130_and_leaves_nothing(tmp_path):
    import signal
    import time

    out = tmp_path / "report"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "crp_jax", "report", "--scenes", "6", "--out", str(out)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    # wait for the first image's progress line: the temporary folder then holds a page
    deadline = time.monotonic() + 600
    first = proc.stderr.readline()
    while "[1/6]" not in first and proc.poll() is None and time.monotonic() < deadline:
        first = proc.stderr.readline()
    assert "[1/6]" in first, first
    assert any(p.name.startswith(".report.tmp-") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []
