"""Two small defects a hostile first use found: file stems that clash with a real stem
(``x``, ``x-2``, ``b/x`` gave two pages ``x-2``), and ``RelevanceWindows.dense(targets)``
returning zeros for negative, out-of-range or repeated indices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crp_jax.cli import main
from crp_jax.cli.common import unique_stems
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.errors import InputError
from crp_jax.relevance.windows import RelevanceWindows


def test_a_suffixed_stem_never_takes_another_files_own_stem():
    assert unique_stems(["a/x.png", "a/x-2.png", "b/x.png"]) == ["x", "x-2", "x-3"]
    assert unique_stems(["b/x.png", "a/x.png", "a/x-2.png"]) == ["x", "x-3", "x-2"]
    assert unique_stems(["A.png", "a.png"]) == ["A", "a-2"]  # one file on a case-insensitive disk
    stems = unique_stems(["x.png", "x.jpg", "x-2.png", "x-3.png", "x-2.jpg"])
    assert len({s.casefold() for s in stems}) == 5


def test_report_of_x_x2_and_another_x_writes_three_pages(tmp_path):
    img = generate_scene(HELDOUT_SEED, 0).image
    paths = [tmp_path / "a" / "x.png", tmp_path / "a" / "x-2.png", tmp_path / "b" / "x.png"]
    for p in paths:
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(p)
    out = tmp_path / "report"
    assert main(["report", *map(str, paths), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert sorted(e["source"] for e in doc["images"]) == sorted(map(str, paths))
    assert len({e["page"] for e in doc["images"]}) == 3
    assert len(list((out / "pages").glob("*.html"))) == 3


@pytest.fixture
def windows():
    rng = np.random.default_rng(0)
    wa, wb = rng.normal(size=(2, 2, 3, 1)).astype(np.float32), rng.normal(size=(1, 4, 4, 1)).astype(np.float32)
    rw = RelevanceWindows(
        (3, 4, 4, 1), (np.array([2, 0]), np.array([1])), (wa, wb), (np.array([[1, 0], [2, 1]]), np.zeros((1, 2), int))
    )
    dense = np.zeros((3, 4, 4, 1), np.float32)  # by hand
    dense[2, 1:3, 0:3] = wa[0]
    dense[0, 2:4, 1:4] = wa[1]
    dense[1] = wb[0]
    return rw, dense


def test_dense_of_listed_targets_indexes_like_numpy(windows):
    rw, dense = windows
    np.testing.assert_array_equal(rw.dense(), dense)
    for targets in ([-1], [2, -3], [1, 1, 0], [-1, 2, -1], []):
        np.testing.assert_array_equal(rw.dense(targets), dense[targets], err_msg=str(targets))
    np.testing.assert_array_equal(rw.dense(np.array([0, -2])), dense[[0, -2]])


@pytest.mark.parametrize("bad", [[3], [-4], [0, 7], [1.0], [True], "0"])
def test_dense_refuses_bad_indices_naming_them(windows, bad):
    rw, _ = windows
    with pytest.raises(InputError, match="target"):
        rw.dense(bad)
