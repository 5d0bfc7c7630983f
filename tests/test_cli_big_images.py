"""Large and odd images on the command line: bounded memory, no Pillow warnings, boxes in
the original pixels; float images with NaN/Inf pixels are refused with a count.

The large image is a held-out scene magnified 98 times (nearest), 12544 x 12544 pixels
(157 M, over Pillow's 89 M warning limit, under its 179 M refusal limit). The CLI reduces
it by 7 while reading (12544 / 7 = 1792 <= MAX_SIDE), which is the scene magnified 14
times, and the model's bilinear resize to 128 samples two rows and columns inside each
14-pixel block: the model sees exactly the scene. So the printed boxes must be the
scene's detections times 98, computed here by hand from the library on the small scene.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crp_jax import viz
from crp_jax.cli import main
from crp_jax.cli.common import MAX_SIDE
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
MAGNIFY = 98
GIB = 1 << 30

# Runs `python -m crp_jax ARGS` as its only child and prints that child's peak RSS (bytes).
PEAK_RSS = """
import resource, subprocess, sys
r = subprocess.run([sys.executable, "-m", "crp_jax", *sys.argv[1:]], capture_output=True, text=True, timeout=600)
sys.stdout.write(r.stdout)
sys.stderr.write(r.stderr)
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
print("PEAK_RSS", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)
sys.exit(r.returncode)
"""


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory):
    scene = generate_scene(HELDOUT_SEED, 0)
    S = scene.image.shape[0]
    path = tmp_path_factory.mktemp("big") / "huge.png"
    big = Image.fromarray(scene.image).resize((S * MAGNIFY, S * MAGNIFY), Image.Resampling.NEAREST)
    big.save(path, compress_level=1)
    del big
    return path, scene


def _run_measured(*args) -> tuple[subprocess.CompletedProcess, int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT
    )
    peak = int(r.stdout.strip().splitlines()[-1].split()[1])
    return r, peak


def test_detect_on_a_huge_image_stays_under_2_gib_and_boxes_are_in_original_pixels(tmp_path, big_scene):
    import crp_jax as cj

    path, scene = big_scene
    with warnings.catch_warnings():  # Pillow's DecompressionBombWarning, here in the test process
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            assert im.size == (128 * MAGNIFY, 128 * MAGNIFY) and 128 * MAGNIFY > MAX_SIDE
    r, peak = _run_measured("detect", str(path), "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert peak < 2 * GIB, f"peak RSS {peak / GIB:.2f} GiB"
    assert r.stderr == "", r.stderr  # no DecompressionBombWarning, nothing else
    side = 128 * MAGNIFY
    assert f"{path} ({side}x{side}):" in r.stdout
    printed = [[float(v) for v in ln.split("[")[1].rstrip("]").split(",")] for ln in r.stdout.splitlines() if "[" in ln]
    # by hand: the library's detections on the 128 px scene (model pixels = scene pixels), times 98
    model, variables, meta = cj.load_pretrained()
    assert meta.image_size == scene.image.shape[0] == 128
    det = cj.detect(model, variables, cj.preprocess([scene.image], meta), meta, score_threshold=0.5, max_detections=20)
    expected = np.asarray(det[0].boxes, np.float64) * MAGNIFY
    assert len(expected) > 0, "the scene has no detection: the check would prove nothing"
    np.testing.assert_allclose(np.asarray(printed), expected, atol=0.051)  # printed with one decimal
    with Image.open(tmp_path / "huge_detections.png") as drawn:
        assert drawn.size == (side // 7, side // 7)  # reduced by 7 to fit MAX_SIDE


def test_explain_on_a_huge_image_stays_under_2_gib(tmp_path, big_scene):
    path, _ = big_scene
    r, peak = _run_measured(
        "explain", str(path), "--out", str(tmp_path), "--method", "gradient", "--compare", "none", "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    assert peak < 2 * GIB, f"peak RSS {peak / GIB:.2f} GiB"
    assert "Warning" not in r.stderr and "DecompressionBomb" not in r.stderr, r.stderr
    overlays = sorted(tmp_path.glob("huge_det*_gradient.png"))
    assert overlays, r.stdout
    for f in overlays:
        with Image.open(f) as im:
            assert im.size == (128 * MAGNIFY // 7,) * 2


# ---- load_image_bounded: what the reduction computes -------------------------------------------


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean of each f x f block (partial blocks at the right and bottom edges), float64."""
    H, W = a.shape[:2]
    out = np.zeros((-(-H // f), -(-W // f)) + a.shape[2:])
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = a[i * f : (i + 1) * f, j * f : (j + 1) * f].reshape(-1, *a.shape[2:]).mean(0)
    return out


def test_bounded_loading_is_the_block_mean_of_the_full_load(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (23, 31, 4), dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    full = viz.load_image(path)  # composited over white
    small, size = viz.load_image_bounded(path, 8)  # factor ceil(31 / 8) = 4
    assert size == (23, 31) and small.shape == (6, 8, 3)
    assert np.abs(small.astype(float) - _block_mean(full.astype(float), 4)).max() <= 1.0  # rounding
    same, size = viz.load_image_bounded(path, 31)  # fits: not reduced, identical to load_image
    assert size == (23, 31)
    np.testing.assert_array_equal(same, full)


def test_bounded_loading_applies_exif_rotation_and_reports_the_displayed_size(tmp_path):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)
    path = tmp_path / "rotated.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees clockwise: 64 high, 40 wide
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    small, size = viz.load_image_bounded(path, 16)  # factor 4
    assert size == (64, 40) and small.shape == (16, 10, 3)
    expected = np.rot90(_block_mean(stored.astype(float), 4), k=-1)  # clockwise
    assert np.abs(small.astype(float) - expected).max() <= 1.0


def test_bounded_loading_of_a_jpeg_decodes_at_a_reduced_scale_within_the_bound(tmp_path):
    yy, xx = np.mgrid[0:1600, 0:2400]
    smooth = np.stack([xx * 255 // 2399, yy * 255 // 1599, (xx + yy) * 255 // 3998], -1).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    small, size = viz.load_image_bounded(path, 500)
    h, w = small.shape[:2]
    assert size == (1600, 2400) and 250 < w <= 500 and abs(w / h - 1.5) < 0.01
    # the same picture: the full decode box-averaged to that size, up to JPEG's own error
    ref = np.asarray(Image.fromarray(viz.load_image(path)).resize((w, h), Image.Resampling.BOX), np.float64)
    assert np.abs(small - ref).mean() < 2.0


def test_bounded_loading_of_16_bit_grey_scales_by_the_whole_image(tmp_path):
    a = np.full((30, 30), 1000, np.uint16)
    a[0, 0] = 65535  # one bright pixel: the whole image is scaled by 65535, as unreduced
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    small, _ = viz.load_image_bounded(path, 10)
    ref = _block_mean(a.astype(float), 3) * 255.0 / 65535.0
    assert np.abs(small[..., 0].astype(float) - ref).max() <= 1.0


# ---- float images with NaN / Inf ---------------------------------------------------------------


def _float_tiff(path: Path, bad: dict) -> Path:
    a = np.full((32, 32), 0.25, np.float32)
    a[8:24, 8:24] = 0.75
    for (i, j), v in bad.items():
        a[i, j] = v
    Image.fromarray(a, "F").save(path)
    return path


def test_a_float_tiff_with_inf_or_nan_pixels_is_refused_with_the_count(tmp_path):
    one_inf = _float_tiff(tmp_path / "one_inf.tif", {(3, 4): np.inf})
    with pytest.raises(InputError, match=r"one_inf\.tif: 1 of 1024 pixels are NaN or Inf"):
        viz.load_image(one_inf)
    two = _float_tiff(tmp_path / "two.tif", {(0, 0): np.nan, (5, 5): -np.inf})
    with pytest.raises(InputError, match=r"two\.tif: 2 of 1024 pixels"):
        viz.load_image_bounded(two, 8)  # the reduced path counts too
    fine = viz.load_image(_float_tiff(tmp_path / "fine.tif", {}))
    assert fine[0, 0, 0] == 64 and fine[16, 16, 0] == 191  # 0.25 * 255 = 63.75, 0.75 * 255 = 191.25


def test_detect_refuses_a_float_tiff_with_one_inf_pixel_in_one_line(tmp_path, capsys):
    path = _float_tiff(tmp_path / "one_inf.tif", {(3, 4): np.inf})
    assert main(["detect", str(path)]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("crp-jax detect: error:") and str(path) in lines[0] and "1 of 1024" in lines[0]
