"""Anchor-vs-anchor contrast targets (crp_jax/relevance/pairs.py): "why box a and not box b".

- against the rules' formulas on explicit float64 matrices, with the two-anchor initial
  relevance written into the head's output vector directly (tests/test_explain_reference.py's
  two-layer detector; no expansion, no JAX convolution, no autodiff);
- cropped (each half in its own cone) equals dense on the shipped model, also as windows;
- sharded (4 forced host devices, fresh process) equals the float64 reference;
- bad pairs raise TargetError naming the field and value.
"""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from test_explain_reference import CELLS, CIN, HIGH, LOW, S, _tiny, reference_from_heads
from test_sharding import run_on_host_devices

import crp_jax as cj
from crp_jax.errors import ConfigError, TargetError
from crp_jax.relevance import RelevanceWindows
from crp_jax.relevance.composite import get_composite


def reference_two_anchors(variables, x_img, head: str, vec_a, anchor_a, vec_b, anchor_b):
    """float64 relevance at the input of one image for the crp preset, the initial relevance
    ``vec_a`` at ``anchor_a`` plus ``vec_b`` at ``anchor_b`` of head ``head``, written into
    one output vector (no expansion into halves)."""
    n = len(vec_a)
    R_out = np.zeros(CELLS * n)
    R_out[anchor_a * n : (anchor_a + 1) * n] += vec_a
    R_out[anchor_b * n : (anchor_b + 1) * n] += vec_b
    return reference_from_heads(variables, x_img, {head: R_out})


def _pair_problem():
    model, variables, x = _tiny()
    comp = get_composite("crp", SimpleNamespace(pixel_bounds=(tuple(LOW), tuple(HIGH))))
    targets = [
        cj.AnchorContrastTarget(1, 4, 0, cls=2),  # same class at two anchors
        cj.ClassTarget(0, 7, 1, "none"),  # an ordinary target between pairs keeps its place
        cj.AnchorContrastTarget(0, 8, 3, cls=1, other_cls=2),  # two classes at two anchors
        cj.AnchorContrastTarget(1, 2, 6, coord="w", sign=-1),  # a regressor at two anchors
    ]
    want = [
        reference_two_anchors(variables, x[1], "cls_0", [0, 0, 1.0], 4, [0, 0, -1.0], 0),
        reference_two_anchors(variables, x[0], "cls_0", [0, 1.0, 0], 7, [0, 0, 0], 7),
        reference_two_anchors(variables, x[0], "cls_0", [0, 1.0, 0], 8, [0, 0, -1.0], 3),
        reference_two_anchors(variables, x[1], "loc_0", [0, 0, -1.0, 0], 2, [0, 0, 1.0, 0], 6),
    ]
    return model, variables, x, comp, targets, want


def test_anchor_contrasts_match_float64_matrices_on_a_two_layer_detector():
    model, variables, x, comp, targets, want = _pair_problem()
    for kwargs in ({}, {"to_host": False}, {"windows": True}, {"chunk_size": 1}):
        kwargs = {"chunk_size": 2, **kwargs}
        run = cj.explain_windows if kwargs.pop("windows", False) else cj.explain
        R = run(model, variables, jnp.asarray(x), targets, method=comp, **kwargs)
        if isinstance(R, RelevanceWindows):
            R = R.dense()
        assert R.shape == (len(targets), S, S, CIN), kwargs
        for i, w in enumerate(want):
            assert np.abs(w).max() > 1e-3, i  # not vacuous
            np.testing.assert_allclose(
                np.asarray(R[i]), w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=f"{targets[i]} {kwargs}"
            )


def test_a_pair_is_not_the_same_as_either_half_alone():
    # the reference above would also pass if the second half were dropped, were the second
    # half's relevance zero: it is not
    model, variables, x, comp, _, _ = _pair_problem()
    pair, first, second = cj.explain(
        model,
        variables,
        jnp.asarray(x),
        [cj.AnchorContrastTarget(1, 4, 0, cls=2), cj.ClassTarget(1, 4, 2, "none"), cj.ClassTarget(1, 0, 2, "none")],
        method=comp,
    )
    assert np.abs(second).max() > 0.1 * np.abs(first).max()
    np.testing.assert_allclose(pair, first - second, atol=1e-6 * np.abs(first).max())


@pytest.fixture(scope="module")
def shipped():
    model, variables, meta = cj.load_pretrained("default")
    rng = np.random.default_rng(5)
    x = rng.uniform(-1.5, 1.5, (2, *[model.config.image_size] * 2, 3)).astype(np.float32)
    return model, variables, meta, x


def _source_starts(cfg) -> list[int]:
    return [int(v) for v in np.cumsum([0] + [f * f * a for f, a in zip(cfg.feature_sizes(), cfg.anchors_per_cell)])]


def test_cropped_anchor_contrasts_equal_dense_on_the_shipped_model(shipped):
    model, variables, meta, x = shipped
    st = _source_starts(model.config)
    targets = [
        cj.AnchorContrastTarget(0, st[0] + 5, st[0] + 40, cls=1),  # same head, two cones
        cj.AnchorContrastTarget(1, st[0] + 17, st[1] + 3, cls=2, other_cls=3),  # two heads
        cj.ClassTarget(1, st[0] + 9, 4),  # first source: a window smaller than the image
        cj.AnchorContrastTarget(0, st[1] + 2, st[2] + 1, coord="cy", sign=-1),
    ]
    for method in ("crp", "gradient_x_input"):
        dense = cj.explain(model, variables, x, targets, method=method, meta=meta, crop=False)
        scale = np.abs(dense).max()
        assert scale > 0
        for crop in (True, "always"):
            cropped = cj.explain(model, variables, x, targets, method=method, meta=meta, crop=crop)
            assert np.abs(cropped - dense).max() <= 1e-5 * scale, (method, crop)
        wins = cj.explain_windows(model, variables, x, targets, method=method, meta=meta, crop="always")
        assert isinstance(wins, RelevanceWindows)
        assert np.abs(wins.dense() - dense).max() <= 1e-5 * scale, method
        # a pair's row is a whole-image window; the ordinary target keeps its own small window
        assert wins.window(0)[0].shape[:2] == dense.shape[1:3]
        assert wins.window(2)[0].shape[0] < dense.shape[1]


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from test_anchor_contrast import _pair_problem
    assert len(jax.devices()) == 4, jax.devices()
    model, variables, x, comp, targets, want = _pair_problem()
    x = np.concatenate([x, x[:1] * 0.5])  # 3 images on 4 devices: one padded slot
    got = __import__("crp_jax").explain(model, variables, x, targets, method=comp, mesh="auto", chunk_size=2)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
    print("SHARDED_PAIRS_OK")
    """
)


def test_sharded_anchor_contrasts_match_float64_matrices():
    run_on_host_devices(SHARDED_SCRIPT, 4, "SHARDED_PAIRS_OK")


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: cj.AnchorContrastTarget(0, 3, 3, cls=1), r"same anchor 3"),
        (lambda: cj.AnchorContrastTarget(0, 3, 4), r"exactly one of cls .* got cls=None, coord=None"),
        (lambda: cj.AnchorContrastTarget(0, 3, 4, cls=1, coord="cx"), r"exactly one of cls"),
        (lambda: cj.AnchorContrastTarget(0, -1, 4, cls=1), r"anchor must be .* got -1"),
        (lambda: cj.AnchorContrastTarget(0, 3, 2.5, cls=1), r"other_anchor must be .* got 2\.5"),
        (lambda: cj.AnchorContrastTarget(0, 3, 4, cls=True), r"cls must be .* got True"),
        (lambda: cj.AnchorContrastTarget(0, 3, 4, coord="cx", sign=2), r"sign must be .* got 2"),
        (lambda: cj.AnchorContrastTarget(0, 3, 4, cls=1, sign=-1), r"class question has sign 1, got -1"),
        (lambda: cj.AnchorContrastTarget(0, 3, 4, coord="cx", other_cls=2), r"other_cls 2 is given"),
    ],
)
def test_malformed_anchor_contrasts_are_refused_when_made(make, match):
    with pytest.raises(TargetError, match=match):
        make()


@pytest.mark.parametrize(
    "target,match",
    [
        (cj.AnchorContrastTarget(0, CELLS, 1, cls=1), rf"target 0 .*anchor {CELLS} out of range: valid is 0\.\.8"),
        (cj.AnchorContrastTarget(0, 1, 99, cls=1), r"anchor 99 out of range: valid is 0\.\.8"),
        (cj.AnchorContrastTarget(0, 1, 2, cls=7), r"cls 7 out of range: valid is 0\.\.2"),
        (cj.AnchorContrastTarget(0, 1, 2, cls=1, other_cls=5), r"cls 5 out of range"),
        (cj.AnchorContrastTarget(4, 1, 2, cls=1), r"image 4 out of range: valid is 0\.\.1"),
        (cj.AnchorContrastTarget(0, 1, 2, coord="x"), r"coord 'x' unknown"),
    ],
)
def test_anchor_contrasts_out_of_range_name_the_value(target, match):
    model, variables, x, comp, _, _ = _pair_problem()
    with pytest.raises(TargetError, match=match):
        cj.explain(model, variables, jnp.asarray(x), [target], method=comp)


def test_per_layer_totals_are_refused_for_anchor_contrasts():
    model, variables, x, comp, _, _ = _pair_problem()
    with pytest.raises(ConfigError, match=r"relevance_flow does not take AnchorContrastTarget \(target 0\)"):
        cj.relevance_flow(model, variables, jnp.asarray(x), [cj.AnchorContrastTarget(0, 1, 2, cls=1)], method=comp)
