"""A damaged entry of the persistent compilation cache: removed with a note naming the
file before JAX reads it (JAX warned on every run and never repaired it; a damaged
executable inside intact compression can crash XLA's deserialiser), recompiled, recorded
again, and the run after that is silent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from crp_jax.compile_cache import MANIFEST
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED

ROOT = Path(__file__).resolve().parents[1]


def _detect(png: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CRP_JAX_CACHE_DIR=str(cache), CRP_JAX_CACHE_MIN_SECONDS="0")
    return subprocess.run(
        [sys.executable, "-m", "crp_jax", "detect", str(png), "--no-progress"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _damage(entry: Path) -> None:
    """Flip bytes in the middle of the serialized executable and compress it again, as JAX
    does (zlib here unless zstandard is installed)."""
    from jax._src import compilation_cache as jcc

    raw = bytearray(jcc.decompress_executable(entry.read_bytes()))
    mid = len(raw) // 2
    for i in range(mid, min(len(raw), mid + 4096)):
        raw[i] ^= 0x5A
    entry.write_bytes(jcc.compress_executable(bytes(raw)))


def test_a_damaged_cache_entry_is_removed_with_a_note_and_recompiled(tmp_path):
    png, cache = tmp_path / "scene.png", tmp_path / "cache"
    Image.fromarray(generate_scene(HELDOUT_SEED, 0).image).save(png)
    first = _detect(png, cache)
    assert first.returncode == 0, first.stderr
    assert (cache / MANIFEST).is_file()
    entry = max(cache.glob("jit_raw-*-cache"), key=lambda p: p.stat().st_size)
    _damage(entry)

    second = _detect(png, cache)
    assert second.returncode == 0, second.stderr
    assert f"removed damaged compilation-cache entry {entry}" in second.stderr
    assert "Error reading persistent compilation cache" not in second.stderr
    assert second.stdout == first.stdout
    assert entry.is_file()  # compiled and written again

    third = _detect(png, cache)
    assert third.returncode == 0 and third.stderr == "", third.stderr
    assert third.stdout == first.stdout


def test_an_entry_that_does_not_decompress_is_removed_even_unrecorded(tmp_path):
    from crp_jax.compile_cache import check_entries

    (tmp_path / "jit_f-0123-cache").write_bytes(b"not compressed at all")
    (tmp_path / "jit_g-4567-atime").write_bytes(b"\\x00")  # JAX's access times: not entries
    removed = check_entries(tmp_path, "test")
    assert [p.name for p in removed] == ["jit_f-0123-cache"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jit_g-4567-atime"]
