"""crp_jax/relevance/stored_plans.py: crop plans kept beside the compilation cache."""

import dataclasses
import json

import numpy as np
import pytest

import crp_jax as cj
from crp_jax.compiled import clear_caches
from crp_jax.relevance import cropped, stored_plans
from crp_jax.relevance.composite import get_composite
from crp_jax.relevance.explain import output_dims


@pytest.fixture
def plans_dir(tmp_path, monkeypatch):
    folder = tmp_path / stored_plans.SUBDIR
    monkeypatch.setattr(stored_plans, "folder", lambda: folder)
    return folder


def _groups(model, variables, meta, method="crp"):
    """The crop groups, comparable across processes: the spec's treedef holds the traced
    VJP's own function, new in every trace, so only its leaves' shapes are kept."""
    x_shape = (1, 128, 128, 3)
    A, K, R = output_dims(model, variables, np.zeros(x_shape, np.float32))
    groups = cropped.crop_groups(model, variables, x_shape, get_composite(method, meta), A, K, R)
    return tuple(dataclasses.replace(g, spec=g.spec[1]) for g in groups)


def test_plans_read_back_equal_the_computed_ones_and_skip_the_interpreter(plans_dir, monkeypatch):
    model, variables, meta = cj.load_pretrained()
    clear_caches()
    computed = _groups(model, variables, meta)
    files = list(plans_dir.glob("*.json"))
    assert len(files) == 1 and len(json.loads(files[0].read_text())["groups"]) == len(computed)
    clear_caches()

    def fail(*a, **k):
        raise AssertionError("planned again although the plan is stored")

    with monkeypatch.context() as m:
        m.setattr(cropped, "_plan_group", fail)
        assert _groups(model, variables, meta) == computed
    # another composite: another backward, another key
    clear_caches()
    _groups(model, variables, meta, "lrp_eps")
    assert len(list(plans_dir.glob("*.json"))) == 2


@pytest.mark.parametrize("damage", ["{not json", '{"groups": [{"anchors": [0]}]}', '{"groups": 3}'])
def test_a_damaged_plan_file_is_ignored_and_rewritten(plans_dir, damage):
    model, variables, meta = cj.load_pretrained()
    clear_caches()
    computed = _groups(model, variables, meta)
    (file,) = plans_dir.glob("*.json")
    file.write_text(damage)
    clear_caches()
    assert _groups(model, variables, meta) == computed
    assert len(json.loads(file.read_text())["groups"]) == len(computed)


def test_nothing_is_stored_without_a_compilation_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(stored_plans, "folder", lambda: None)
    model, variables, meta = cj.load_pretrained()
    clear_caches()
    assert _groups(model, variables, meta)
    assert stored_plans.load("0" * 64) is None
    assert not any(tmp_path.iterdir())


def test_the_key_depends_on_the_inputs_and_the_jaxpr():
    import jax

    closed = jax.make_jaxpr(lambda a: a * 2)(1.0)
    other = jax.make_jaxpr(lambda a: a * 3)(1.0)
    assert stored_plans.key(closed, A=1) == stored_plans.key(closed, A=1)
    assert stored_plans.key(closed, A=1) != stored_plans.key(closed, A=2)
    assert stored_plans.key(closed, A=1) != stored_plans.key(other, A=1)
