"""crp_jax/compiled.py: the one owner of compiled functions and plans."""

import numpy as np
import pytest

import crp_jax as cj
from crp_jax.compiled import FunctionCache, cache_info, cached, clear_caches


def test_explain_fills_named_caches_and_a_second_call_compiles_nothing():
    model, variables, meta = cj.load_pretrained()
    x = np.zeros((2, 128, 128, 3), np.float32)
    targets = [cj.ClassTarget(0, 5, 1), cj.ClassTarget(1, 9, 2)]
    clear_caches()
    assert all(i.entries == 0 and i.compilations == 0 for i in cache_info().values())
    first = cj.explain(model, variables, x, targets, method="crp", meta=meta, crop="never")
    info = cache_info()
    assert info["forward"].entries == 1 and info["forward"].compilations == 1
    assert info["dense_backward"].compilations == 1
    again = cj.explain(model, variables, x, targets, method="crp", meta=meta, crop="never")
    after = cache_info()
    assert after["forward"].hits > info["forward"].hits
    assert {k: v.compilations for k, v in after.items()} == {k: v.compilations for k, v in info.items()}
    np.testing.assert_array_equal(first, again)


def test_cache_is_lru_counts_and_builds_afresh_for_unhashable_keys():
    built = []

    @cached("test_cache_lru", maxsize=2)
    def build(key):
        built.append(key)
        return object()

    try:
        a = build(1)
        assert build(1) is a and built == [1]
        build(2), build(3)  # evicts 1
        assert build(1) is not a and built == [1, 2, 3, 1]
        unhashable = [1]
        assert build(unhashable) is not build(unhashable)  # no cache, still correct
        i = build.info()
        assert (i.entries, i.hits) == (2, 1)
        build.clear()
        assert build.info().entries == 0
        with pytest.raises(ValueError, match="test_cache_lru"):
            FunctionCache("test_cache_lru", lambda: None, 1)
    finally:
        from crp_jax import compiled

        compiled._CACHES.pop("test_cache_lru", None)
