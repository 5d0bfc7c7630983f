"""The crp-jax command line, run in-process through ``crp_jax.cli.main``.

One tiny SSD (64 px, width 0.125, the glyph classes) is built once per module and saved with
``save_weights``; every command gets it with ``--weights``. Its classification biases favour
"E" so that it detects something at the default threshold. Every explain call holds one
target per detection and ``--max-detections 2`` keeps that at 2, so each method compiles
once for the whole module (XLA compiles dominate the run time).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crp_jax.cli import main
from crp_jax.cli.explain import METHODS
from crp_jax.data import CLASS_NAMES
from crp_jax.ssd import SSD, Meta, SSDConfig
from crp_jax.ssd.build import init_variables
from crp_jax.ssd.io import save_weights
from crp_jax.ssd.meta import TORCHVISION_MEAN, TORCHVISION_STD

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT / "weights" / "default.msgpack"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    cfg = SSDConfig.small(num_classes=7, image_size=64, width=0.125)
    model = SSD(cfg)
    # numpy initialisation (same scheme as model.init): jax.jit(model.init) compiles JAX's
    # random-number graph, which took over a minute on the shared 2-core machine.
    variables = init_variables(model, seed=0)
    params = {k: dict(v) for k, v in variables["params"].items()}
    for name, layer in params.items():
        if name.startswith("cls_"):
            bias = np.array(layer["bias"]).reshape(-1, cfg.num_classes)
            bias[:, CLASS_NAMES.index("E")] += 3.0  # every box is an "E" at ~0.77
            layer["bias"] = bias.reshape(-1)
    meta = Meta(cfg, CLASS_NAMES, mean=TORCHVISION_MEAN, std=TORCHVISION_STD, source="test")
    path = tmp_path_factory.mktemp("weights") / "tiny.msgpack"
    save_weights(path, {"params": params}, meta)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Grey PNG, RGBA PNG, palette PNG and an EXIF-rotated JPEG, all of odd sizes; with the
    (H, W) each is displayed at."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = {}
    grey = d / "grey.png"
    Image.fromarray(rng.integers(0, 256, (37, 29), dtype=np.uint8), "L").save(grey)
    out[grey] = (37, 29)
    rgba = d / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (41, 53, 4), dtype=np.uint8), "RGBA").save(rgba)
    out[rgba] = (41, 53)
    pal = d / "palette.png"
    Image.fromarray(rng.integers(0, 256, (33, 45, 3), dtype=np.uint8)).convert("P").save(pal)
    assert Image.open(pal).mode == "P"
    out[pal] = (33, 45)
    jpg = d / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: stored 35 x 61 (HxW) -> shown 61 x 35
    Image.fromarray(rng.integers(0, 256, (35, 61, 3), dtype=np.uint8)).save(jpg, exif=exif.tobytes())
    out[jpg] = (61, 35)
    return out


def _size_hw(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.height, im.width


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


# ---- help and usage --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "detect", "explain", "train", "evaluate", "convert"])
def test_help_of_every_command_exits_0(command, capsys):
    assert main([command, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_top_level_help_and_no_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "detect", "explain", "train", "evaluate", "convert"):
        assert command in out
    assert main([]) == 2


def test_python_dash_m_help():
    r = subprocess.run(
        [sys.executable, "-m", "crp_jax", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "explain" in r.stdout and "demo" in r.stdout


def test_bad_method_is_a_usage_error(tmp_path, capsys):
    assert main(["explain", "x.png", "--out", str(tmp_path), "--method", "nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_incompatible_options_are_usage_errors(tmp_path, weights, capsys):
    base = ["explain", "x.png", "--out", str(tmp_path), "--weights", weights]
    assert main(base + ["--sign", "-"]) == 2  # --sign needs a box coordinate target
    assert main(base + ["--target", "cx", "--contrast", "F"]) == 2
    assert main(base + ["--target", "w", "--compare", "classes"]) == 2
    capsys.readouterr()


# ---- user errors: one line, exit 1 -----------------------------------------------------------


def test_missing_image_is_one_line_exit_1(tmp_path, weights, capsys):
    missing = tmp_path / "missing.png"
    assert main(["detect", str(missing), "--weights", weights]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "missing.png" in line and "crp-jax detect: error:" in line


def test_not_an_image_is_one_line_exit_1(tmp_path, weights, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    assert main(["explain", str(bad), "--weights", weights, "--out", str(tmp_path / "o")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "notes.png" in line


def test_unknown_class_name_is_one_line(tmp_path, weights, images, capsys):
    img = str(next(iter(images)))
    rc = main(["explain", img, "--weights", weights, "--out", str(tmp_path), "--contrast", "Z"])
    assert rc == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "'Z'" in line and "E" in line  # names the bad class and the known ones


def test_weights_that_do_not_fit_are_one_line_exit_1(tmp_path, weights, images, capsys):
    # same arrays, but a sidecar that claims another architecture (5 classes)
    src = Path(weights)
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(src.read_bytes())
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["config"]["num_classes"] = 5
    meta["class_names"] = meta["class_names"][:5]
    bad.with_suffix(".json").write_text(json.dumps(meta))
    img = str(next(iter(images)))
    assert main(["detect", img, "--weights", str(bad)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "bad.msgpack" in line
    assert main(["detect", img, "--weights", str(tmp_path / "nothing.msgpack")]) == 1
    _one_error_line(capsys.readouterr().err)


# ---- detect and explain on every kind of image -----------------------------------------------


def test_detect_prints_and_draws_in_original_pixels(tmp_path, weights, images, capsys):
    out = tmp_path / "det"
    rc = main(["detect", *map(str, images), "--weights", weights, "--out", str(out), "--max-detections", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for path, (h, w) in images.items():
        assert f"{path} ({w}x{h}): 3 detections" in captured.out
        assert _size_hw(out / f"{path.stem}_detections.png") == (h, w)
    # boxes are printed in original pixels: every coordinate within the image
    for line in captured.out.splitlines():
        if line.startswith("  E "):
            box = [float(v) for v in line.split("[")[1].rstrip("]").split(",")]
            assert all(-0.01 <= v <= 61.01 for v in box)


@pytest.mark.slow  # compiles all five methods: most of this module's run time
def test_explain_all_methods_on_every_kind_of_image(tmp_path, weights, images, capsys):
    out = tmp_path / "explain"
    rc = main(["explain", *map(str, images), "--weights", weights, "--out", str(out), "--max-detections", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for path, hw in images.items():
        overlays = sorted(out.glob(f"{path.stem}_det*_E_cls_crp.png"))
        assert len(overlays) == 2, sorted(p.name for p in out.iterdir())
        for f in overlays:
            assert _size_hw(f) == hw
        grid = out / f"{path.stem}_grid.png"
        gh, gw = _size_hw(grid)
        # 2 rows (detections) x (input + 5 methods) columns, each cell at least image-sized
        assert gw >= 6 * hw[1] and gh >= 2 * hw[0]
    assert "wrote 3 files" in captured.out  # 2 overlays + 1 grid per image


def test_explain_class_contrast_and_box_coordinates(tmp_path, weights, images, capsys):
    # a large image: overlays keep its size, the grid shrinks its cells
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (700, 900, 3), dtype=np.uint8)).save(big)
    out = tmp_path / "swap"
    rc = main(
        [
            "explain",
            str(big),
            "--weights",
            weights,
            "--out",
            str(out),
            "--max-detections",
            "2",
            "--contrast",
            "F",
            "--compare",
            "classes",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    overlays = sorted(out.glob("big_det*_E_cls_crp.png"))
    assert len(overlays) == 2 and all(_size_hw(f) == (700, 900) for f in overlays)
    gh, gw = _size_hw(out / "big_grid.png")  # input, "E not F", "F not E" for 2 detections
    assert 3 * 400 <= gw < 3 * 400 + 100 and 2 * 311 <= gh < 2 * 311 + 150
    path, hw = next(iter(images.items()))
    rc = main(
        [
            "explain",
            str(path),
            "--weights",
            weights,
            "--out",
            str(out),
            "--max-detections",
            "2",
            "--target",
            "cx",
            "--sign",
            "-",
            "--method",
            "gradient",
            "--compare",
            "none",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    files = sorted(out.glob("*_cx-_gradient.png"))
    assert len(files) == 2 and all(_size_hw(f) == hw for f in files)
    assert not (out / f"{path.stem}_grid.png").exists()


def test_one_bad_image_among_good_ones_still_processes_the_rest(tmp_path, weights, images, capsys):
    good = str(next(iter(images)))
    rc = main(["detect", good, str(tmp_path / "gone.png"), "--weights", weights, "--max-detections", "1"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "1 detection" in captured.out
    assert "gone.png" in _one_error_line(captured.err)


# ---- demo -----------------------------------------------------------------------------------


def test_demo_with_given_weights(tmp_path, weights, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--weights", weights, "--max-detections", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    names = {p.name for p in out.iterdir()}
    assert {"scene.png", "detections.png", "methods_grid.png"} <= names
    assert {"det00_E_crp.png", "det00_E_lrp_ab.png", "det01_E_crp.png", "det01_E_lrp_ab.png"} <= names
    assert any(n.startswith("class_swap_det00_E_F") for n in names)
    assert str(out.resolve()) in captured.out


@pytest.mark.skipif(
    not DEFAULT_WEIGHTS.is_file(),
    reason=f"no shipped default model at {DEFAULT_WEIGHTS} (made by `crp-jax train`)",
)
def test_demo_with_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    names = {p.name for p in out.iterdir()}
    assert {"scene.png", "detections.png", "methods_grid.png"} <= names
    assert any(n.endswith("_crp.png") for n in names) and any(n.endswith("_lrp_ab.png") for n in names)


@pytest.mark.skipif(
    not DEFAULT_WEIGHTS.with_name("ssdlite.msgpack").is_file(),
    reason="no shipped SSDlite model (made by `crp-jax train --model ssdlite`)",
)
def test_demo_and_explain_with_the_shipped_ssdlite_by_name(tmp_path, images, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--weights", "ssdlite", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    names = {p.name for p in out.iterdir()}
    assert {"scene.png", "detections.png", "methods_grid.png"} <= names
    image = next(iter(images))
    rc = main(["explain", str(image), "--weights", "ssdlite", "--method", "crp", "--out", str(tmp_path / "ex")])
    assert rc == 0, capsys.readouterr().err


def test_an_unknown_model_name_is_one_line_exit_1(tmp_path, capsys):
    assert main(["demo", "--weights", "yolo", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "no shipped model named 'yolo'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_methods_are_the_documented_five():
    assert METHODS == ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")
    from crp_jax.relevance.composite import PRESETS, composite_names

    assert METHODS == PRESETS and set(PRESETS) <= set(composite_names())


def test_progress_bar_without_tqdm(monkeypatch, capsys):
    from crp_jax.progress import Progress

    monkeypatch.setitem(sys.modules, "tqdm", None)  # `from tqdm import tqdm` -> ImportError
    bar = Progress(3, "explain", enabled=True)
    bar.update()
    bar.write("a result line")
    bar.update()
    bar.close()
    captured = capsys.readouterr()
    assert "a result line" in captured.out
    assert "1/3" in captured.err and "2/3" in captured.err
    quiet = Progress(1, "explain", enabled=True)  # one image: no bar
    quiet.update()
    quiet.close()
    assert capsys.readouterr().err == ""
