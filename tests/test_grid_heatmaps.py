"""crp_jax/apps/explanations.py: the CLI's grid of methods runs them two at a time
(``per_method``); its heatmaps are each method's ``explain`` alone."""

import threading
import time

import numpy as np
import pytest

import crp_jax as cj
from crp_jax.apps.explanations import Ask, DetectedImage, grid_heatmaps, per_method
from crp_jax.relevance.composite import PRESETS


def test_per_method_keeps_order_runs_each_once_and_overlaps_two():
    running, peak, calls = [0], [0], []
    lock = threading.Lock()

    def fn(m):
        with lock:
            calls.append(m)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        return m.upper()

    out = per_method(fn, ["b_new", "a_new", "b_new", "c_new"])
    assert list(out) == ["b_new", "a_new", "c_new"] and out == {"b_new": "B_NEW", "a_new": "A_NEW", "c_new": "C_NEW"}
    assert sorted(calls) == ["a_new", "b_new", "c_new"]
    assert peak[0] == 2
    # methods run before: in order, one at a time (their programs exist; threads would contend)
    calls.clear()
    peak[0] = 0
    assert per_method(fn, ["c_new", "a_new"]) == {"c_new": "C_NEW", "a_new": "A_NEW"}
    assert calls == ["c_new", "a_new"] and peak[0] == 1


def test_per_method_raises_the_error_of_a_failing_method_and_starts_no_more():
    started = []

    def fn(m):
        started.append(m)
        if m == "bad":
            raise cj.TargetError("bad target")
        time.sleep(0.2)  # "ok" is still running when "bad" fails
        return m

    with pytest.raises(cj.TargetError, match="bad target"):
        per_method(fn, ["ok", "bad", "later1", "later2", "later3"])
    # the two workers took "ok" and "bad" (in either order); at most one more had started
    assert sorted(started[:2]) == ["bad", "ok"] and len(started) <= 3


def test_grid_of_methods_equals_each_methods_explain_alone():
    model, variables, meta = cj.load_pretrained()
    from crp_jax.data import generate_scene
    from crp_jax.data.splits import HELDOUT_SEED

    image = generate_scene(HELDOUT_SEED, 0).image
    x = cj.preprocess(image[None], meta)
    det = cj.detect(model, variables, x, meta)[0]
    assert len(det) >= 1
    im = DetectedImage("scene.png", "scene", image, x, det)
    dets, main, columns = grid_heatmaps(model, variables, meta, im, Ask("cls", 1, None), "crp", "methods")
    assert [m for _, m, _ in columns] == list(PRESETS)
    for _, method, maps in columns:
        targets = [maps[i][0] for i in dets]
        alone = cj.heatmap(cj.explain(model, variables, x, targets, method=method, meta=meta))
        for j, i in enumerate(dets):
            np.testing.assert_array_equal(maps[i][1], alone[j])
    assert all(np.array_equal(main[i][1], columns[0][2][i][1]) for i in dets)
