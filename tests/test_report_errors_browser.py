"""The report's errors view in headless Chromium: ``crp-jax report --scenes N`` against
``cj.diagnose`` on the same scenes.

Six held-out scenes of the default ``SceneSpec`` hold every error kind for the shipped model
at the report's threshold (0.5): a wrong label in scene 0, a duplicate in 1, two missed objects
in 3, a false alarm in 5 (the test checks each kind is present rather than trusting this).
The kinds and counts of ``data-error`` sections in the DOM must equal ``cj.diagnose``'s, the
index's per-kind counts the totals, and its links lead to pages that have errors.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_report_browser import CHROMIUM, THRESHOLD, check_page, dump_dom

import crp_jax as cj
from crp_jax.cli import main
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.eval import ERROR_KINDS

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
N = 6


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors") / "report"
    assert main(["report", "--scenes", str(N), "--methods", "crp", "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "report.json").read_text())


def _diagnosed() -> list[dict]:
    model, variables, meta = cj.load_pretrained()
    scenes = [generate_scene(HELDOUT_SEED, i) for i in range(N)]
    x = cj.preprocess(np.stack([s.image for s in scenes]), meta)
    res = cj.diagnose(
        model, variables, x, [s.boxes for s in scenes], [s.labels for s in scenes], meta=meta, score_threshold=THRESHOLD
    )
    return [r.counts() for r in res]


def test_error_sections_in_the_dom_equal_diagnose(site, tmp_path):
    out, doc = site
    want = _diagnosed()
    totals = {k: sum(c[k] for c in want) for k in ERROR_KINDS}
    assert all(totals[k] > 0 for k in ERROR_KINDS), totals  # every kind is present
    by_name = {e["name"]: e for e in doc["images"]}
    for i, counts in enumerate(want):
        entry = by_name[f"scene_{i:04d}.png"]
        dom = dump_dom(tmp_path, out / entry["page"])
        check_page(dom)
        found = re.findall(r'<section[^>]*\sdata-error="([a-z_]+)"', dom)
        assert {k: found.count(k) for k in ERROR_KINDS} == counts, entry["name"]
        assert len(found) == len(entry["errors"])


def test_index_counts_each_kind_and_links_to_the_pages(site, tmp_path):
    out, doc = site
    dom = dump_dom(tmp_path, out / "index.html")
    p = check_page(dom)
    want = _diagnosed()
    assert "data-error" not in dom  # the index counts; only the case sections carry the attribute
    for k in ERROR_KINDS:
        row = re.search(rf'<tr id="errors-{k}">(.*?)</tr>', dom, re.S).group(1)
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        assert int(cells[1]) == sum(c[k] for c in want), k
        for href in re.findall(r'href="([^"]+)"', cells[2]):
            page, anchor = href.split("#")
            assert anchor == "errors" and (out / page).is_file() and href in p.urls
