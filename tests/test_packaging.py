"""A normal install ships the default model: a wheel and ``pip install .`` (not editable),
each in a fresh virtual environment, then ``crp-jax demo`` from a folder outside the repo.

The venvs see the system's site-packages for jax/flax/... (nothing is downloaded) but get
their own copy of crp_jax, which must not read the checkout's weights/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_venv(path: Path) -> Path:
    # No pip inside: this interpreter's pip installs into it (``pip --python``), and the
    # build runs on the system's setuptools, so nothing is downloaded.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    return path / "bin" / "python"


def pip(python: Path, *args) -> list:
    return [sys.executable, "-m", "pip", "--python", python, *args]


def run(cmd, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CRP_JAX_WEIGHTS_DIR")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def copy_of_repo(tmp_path: Path) -> Path:
    # Build from a copy so that build/ and *.egg-info never land in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__"))
    return src


def check_installed(python: Path, where: Path) -> None:
    out = run(
        [
            python,
            "-c",
            "import crp_jax as cj, crp_jax.ssd.io as io; m, v, meta = cj.load_pretrained(); "
            "print(cj.__file__); print(io.default_weights_dir()); print(meta.num_classes)",
        ],
        cwd=where,
    )
    file, folder, k = out.split()
    site = str(python.parent.parent)
    assert file.startswith(site) and folder.startswith(site), out  # the venv's copy, not the checkout
    assert Path(folder, "default.msgpack").is_file() and int(k) >= 2


@pytest.mark.slow
def test_wheel_contains_the_default_model_and_demo_runs_from_another_folder(tmp_path):
    src = copy_of_repo(tmp_path)
    python = make_venv(tmp_path / "venv")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", tmp_path / "dist"],
        src,
    )
    (wheel,) = (tmp_path / "dist").glob("crp_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for model in ("default", "ssdlite"):
        assert f"crp_jax/weights/{model}.msgpack" in names and f"crp_jax/weights/{model}.json" in names
    run(pip(python, "install", "-q", "--no-deps", wheel), tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check_installed(python, elsewhere)
    run([python.parent / "crp-jax", "demo", "--out", "demo"], elsewhere)
    assert len(list((elsewhere / "demo").glob("*.png"))) >= 3


@pytest.mark.slow
def test_plain_pip_install_of_the_repo_ships_the_default_model(tmp_path):
    src = copy_of_repo(tmp_path)
    python = make_venv(tmp_path / "venv")
    run(pip(python, "install", "-q", "--no-deps", "--no-build-isolation", "."), src)
    shutil.rmtree(src)  # the installed package must not need the source tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check_installed(python, elsewhere)
