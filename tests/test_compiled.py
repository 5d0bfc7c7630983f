"""crp_jax/compiled.py: the one owner of compiled functions and plans."""

import numpy as np
import pytest

import crp_jax as cj
from crp_jax import compiled
from crp_jax.compiled import FunctionCache, cache_info, cached, clear_caches


@pytest.fixture
def scratch_caches():
    """Caches a test registers are taken out of the registry afterwards."""
    before = set(compiled._CACHES)
    yield
    for name in set(compiled._CACHES) - before:
        compiled._CACHES.pop(name)


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


def test_cache_is_lru_counts_and_builds_afresh_for_unhashable_keys(scratch_caches):
    built = []

    @cached("test_cache_lru", maxsize=2)
    def build(key):
        built.append(key)
        return object()

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


def test_threads_asking_for_one_key_wait_for_a_single_build(scratch_caches):
    import threading
    import time

    built = []

    @cached("test_cache_threads", maxsize=4)
    def build(key):
        built.append(key)
        time.sleep(0.2)  # long enough for every thread to ask while the first builds
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(build("k"))) for _ in range(4)]
    threads += [threading.Thread(target=lambda: got.append(build("other")))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(built) == ["k", "other"]  # each key built once
    assert len({id(v) for v in got}) == 2
    assert build.info().misses == 2 and build.info().hits == 3


def test_a_failed_build_is_not_cached_and_the_next_call_builds_again(scratch_caches):
    calls = []

    @cached("test_cache_failure", maxsize=4)
    def build(key):
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("first build fails")
        return key * 2

    with pytest.raises(RuntimeError, match="first build fails"):
        build(3)
    assert build(3) == 6 and build(3) == 6 and calls == [3, 3]


def test_gradient_and_gradient_x_input_share_one_forward_program():
    model, variables, meta = cj.load_pretrained()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    targets = [cj.ClassTarget(0, 5, 1), cj.LocTarget(0, 700, "w", 1)]
    clear_caches()
    grad = cj.explain(model, variables, x, targets, method="gradient", meta=meta)
    gxi = cj.explain(model, variables, x, targets, method="gradient_x_input", meta=meta)
    info = cache_info()
    assert info["forward"].entries == 1 and info["forward"].compilations == 1
    assert info["dense_backward"].entries == 2  # times_input is the backward's last step
    np.testing.assert_allclose(gxi, grad * x[0], rtol=1e-6, atol=1e-6 * np.abs(gxi).max())
    # the rules make CRP's forward a different program
    cj.explain(model, variables, x, targets, method="crp", meta=meta)
    assert cache_info()["forward"].entries == 2
