"""Receptive-field-cropped propagation (crp_jax/relevance/cropped.py): ``explain`` crops by
default, and its relevance must equal the dense path's (``crop=False``), which is itself
checked against explicit float64 rule matrices elsewhere (tests/test_explain_reference.py).

Equality is checked within 1e-5 of max|R| for every preset, every source (head output),
anchors at the corners, edges and centre of every source's grid, chunk sizes 1, 3 and 8, on
the shipped model, on SSD300 (the realistic shape: 300 px, a 108 px first-source window) and
on the shipped SSDlite (depthwise taps, residual adds, SE gates). Window sizes are compared
with the cone geometry, which is computed independently from the forward pass
(crp_jax/relevance/cones.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import crp_jax as cj
from crp_jax import viz
from crp_jax.errors import InputError
from crp_jax.relevance import (
    INPUT_LAYER,
    Composite,
    RelevanceWindows,
    compiled_functions,
    cone_sizes,
    crop_groups,
    output_sizes,
    rules,
)
from crp_jax.relevance.composite import get_composite
from crp_jax.relevance.cropped import compiled_cropped, group_leaves
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.meta import Meta
from crp_jax.ssd.model import SSD

PRESETS = ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")
TOL = 1e-5  # of max|R|


def edge_targets(model, image: int = 0, per_cell_boxes=(0, -1), loc: bool = True) -> list:
    """Targets at the four corners, two edge midpoints and the centre of every source's
    grid (first and last box of the cell), plus a box-offset target per source."""
    cfg = model.config
    out, a0 = [], 0
    for fm, n_box in zip(cfg.feature_sizes(), cfg.anchors_per_cell):
        h = w = fm
        cells = {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 0), (0, w // 2), (h // 2, w // 2)}
        for k, (y, x) in enumerate(sorted(cells)):
            box = per_cell_boxes[k % len(per_cell_boxes)] % n_box
            anchor = a0 + (y * w + x) * n_box + box
            out.append(cj.ClassTarget(image=image, anchor=int(anchor), cls=1 + k % (cfg.num_classes - 1)))
        if loc:
            out.append(cj.LocTarget(image=image, anchor=int(a0 + (h - 1) * w * n_box), coord="cy", sign=-1))
        a0 += h * w * n_box
    return out


def assert_cropped_equals_dense(model, variables, meta, x, targets, method, chunk_size, crop="always", tol=TOL):
    """``crop="always"``: every head output runs cropped, also where explain's default would
    keep whole-image windows dense."""
    dense = cj.explain(model, variables, x, targets, method=method, meta=meta, chunk_size=chunk_size, crop=False)
    cropped = cj.explain(model, variables, x, targets, method=method, meta=meta, chunk_size=chunk_size, crop=crop)
    scale = np.abs(dense).max()
    assert scale > 0
    err = np.abs(cropped - dense).max(axis=(1, 2, 3)) / scale
    assert err.max() <= tol, f"{method}, chunk {chunk_size}: worst target {int(err.argmax())} off by {err.max():.2e}"
    # conservation sums are those of the dense path (within 1e-5 of each target's sum|R|)
    gap = np.abs(cropped.sum((1, 2, 3)) - dense.sum((1, 2, 3)))
    assert (gap <= tol * np.abs(dense).sum((1, 2, 3))).all(), gap
    return dense, cropped


@pytest.fixture(scope="module")
def shipped():
    model, variables, meta = cj.load_pretrained("default")
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.5, 1.5, (1, *[model.config.image_size] * 2, 3)).astype(np.float32)
    return model, variables, meta, x


@pytest.fixture(scope="module")
def ssd300():
    cfg = SSDConfig.ssd300_vgg16(21)
    model = SSD(cfg)
    variables = cj.init_variables(model, seed=0)
    meta = Meta(cfg, tuple(f"c{k}" for k in range(21)), mean=(0.48, 0.46, 0.41), std=(0.23, 0.22, 0.23))
    x = np.random.default_rng(5).uniform(-1.5, 1.5, (1, 300, 300, 3)).astype(np.float32)
    return model, variables, meta, x


@pytest.mark.parametrize("method", PRESETS)
@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_cropped_equals_dense_on_the_shipped_model(shipped, method, chunk_size):
    model, variables, meta, x = shipped
    assert_cropped_equals_dense(model, variables, meta, x, edge_targets(model), method, chunk_size)


@pytest.mark.parametrize("crop", [True, "always"])
def test_cropped_equals_dense_on_ssd300_every_source(ssd300, crop):
    model, variables, meta, x = ssd300
    assert_cropped_equals_dense(model, variables, meta, x, edge_targets(model), "crp", 3, crop)


@pytest.mark.parametrize("method", ["crp", "lrp_ab", "lrp_eps", "gradient_x_input"])
def test_cropped_equals_dense_on_ssd300_first_source(ssd300, method):
    """Only first-source targets: explain's default crops them after a forward trimmed to
    the residuals they read (the layers after conv4_3 are not computed). That forward is
    another XLA program, so its float32 rounding differs (residuals within 2e-7, relative),
    and CRP's contrast on these random weights is as sensitive as that: a 1-ulp change of
    the input moves the dense result by up to 6.7e-6 of max|R| at these anchors (measured),
    and the trimmed forward by up to 1.04e-5. crp gets 3e-5 here; every test where the
    forward is shared holds 1e-5."""
    model, variables, meta, x = ssd300
    first = [t for t in edge_targets(model) if t.anchor < 38 * 38 * 4]
    assert len(first) == 8
    tol = 3e-5 if method == "crp" else TOL
    assert_cropped_equals_dense(model, variables, meta, x, first, method, 8, crop=True, tol=tol)


@pytest.mark.parametrize("method", ["crp", "lrp_ab"])
def test_cropped_equals_dense_on_the_shipped_ssdlite(method):
    model, variables, meta = cj.load_pretrained("ssdlite")
    x = np.random.default_rng(4).uniform(-1.5, 1.5, (1, 256, 256, 3)).astype(np.float32)
    assert_cropped_equals_dense(model, variables, meta, x, edge_targets(model, loc=False), method, 3)


def test_windows_are_the_cones_of_ssd300(ssd300):
    """The cropped pass's input windows are the cones' unclipped sizes, capped at the image
    (SSD300's first source: 108 px; the others cover the whole image)."""
    model, variables, meta, x = ssd300
    comp = get_composite("crp", meta)
    A, K = output_sizes(model, variables, x)
    groups = crop_groups(model, variables, x.shape, comp, A, K)
    cones = cone_sizes(model, variables, x.shape)
    assert [g.anchors for g in groups] == [(c.anchors.start, c.anchors.stop) for c in cones]
    assert [g.grid for g in groups] == [(f, f) for f in model.config.feature_sizes()]
    for g, c in zip(groups, cones):
        assert g.windowed and not g.densified
        assert g.window == tuple(min(s, 300) for s in c.sizes["input"])
    assert groups[0].window == (108, 108)
    # by default explain crops where the window is at most half the image: the first source
    assert [g.cropped for g in groups] == [True] + [False] * 5


def test_window_output(shipped):
    model, variables, meta, x = shipped
    targets = edge_targets(model)
    dense = cj.explain(model, variables, x, targets, meta=meta, crop=False)
    rw = cj.explain_windows(model, variables, x, targets, meta=meta, crop="always")
    assert isinstance(rw, RelevanceWindows) and len(rw) == len(targets) and rw.shape == dense.shape
    scale = np.abs(dense).max()
    assert np.abs(rw.dense() - dense).max() <= TOL * scale
    assert np.abs(np.asarray(rw) - dense).max() <= TOL * scale
    first = [t for t, tg in enumerate(targets) if tg.anchor < 1024]
    for t in first:  # first-source windows are 108 px; relevance outside them is exactly zero
        win, (top, left) = rw.window(t)
        assert win.shape == (108, 108, 3)
        outside = dense[t].copy()
        outside[top : top + 108, left : left + 108] = 0
        assert not outside.any()
        assert np.abs(rw[t] - dense[t]).max() <= TOL * scale
    assert rw.nbytes < dense.nbytes
    np.testing.assert_allclose(rw.dense(first[::-1]), rw.dense()[first[::-1]])
    heat = cj.heatmap(rw)
    assert isinstance(heat, RelevanceWindows) and heat.shape == dense.shape[:3]
    assert np.abs(heat.dense() - cj.heatmap(dense)).max() <= TOL * scale * 3
    image = np.zeros((128, 128, 3), np.uint8)
    a = np.asarray(viz.overlay(image, rw[first[0]]))
    b = np.asarray(viz.overlay(image, dense[first[0]]))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    with pytest.raises(InputError, match="out of range"):
        rw.window(len(targets))


def test_window_output_on_the_device_and_dense_on_the_device(shipped):
    model, variables, meta, x = shipped
    targets = edge_targets(model)
    dense = cj.explain(model, variables, x, targets, meta=meta, crop=False)
    scale = np.abs(dense).max()
    on_device = cj.explain(model, variables, x, targets, meta=meta, to_host=False, crop="always")
    assert isinstance(on_device, jax.Array)
    assert np.abs(np.asarray(on_device) - dense).max() <= TOL * scale
    rw = cj.explain_windows(model, variables, x, targets, meta=meta, to_host=False, crop="always")
    assert all(isinstance(w, jax.Array) for w in rw.windows)
    assert np.abs(rw.dense() - dense).max() <= TOL * scale


def test_relevance_flow_equals_dense_and_crop_modes_are_named(shipped):
    model, variables, meta, x = shipped
    targets = edge_targets(model)[:3]
    R, flow = cj.relevance_flow(model, variables, x, targets, meta=meta)  # runs dense
    np.testing.assert_allclose(R, cj.explain(model, variables, x, targets, meta=meta, crop=False), atol=1e-6)
    assert flow
    with pytest.raises(InputError, match="crop must be one of"):
        cj.explain(model, variables, x, targets, meta=meta, crop="yes")


def test_a_mixed_call_compiles_one_backward_per_group_and_chunk(shipped):
    model, variables, meta, x = shipped
    comp = get_composite("crp", meta)
    targets = edge_targets(model)
    cj.explain(model, variables, x, targets, meta=meta, chunk_size=4, crop="always")
    fns = [compiled_cropped(model, comp, 4, 1528, g) for g in crop_groups(model, variables, x.shape, comp, 1528, 7)]
    sizes = [f._cache_size() for f in fns]
    assert sizes == [1] * len(fns)
    cj.explain(model, variables, x, targets[::-1], meta=meta, chunk_size=4, crop="always")
    assert [f._cache_size() for f in fns] == sizes  # a second call reuses them


class CumsumDetector(nn.Module):
    """A detector whose backward has an op the cropped interpreter does not window (a
    cumulative sum along the rows), so it must run that op on whole maps."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), padding=1, name="stem")(x))
        h = jnp.cumsum(h, axis=1) / h.shape[1]
        h = nn.relu(nn.Conv(4, (3, 3), strides=2, padding=1, name="down")(h))
        c = nn.Conv(2 * 3, (1, 1), name="cls")(h)
        b = nn.Conv(2 * 4, (1, 1), name="box")(h)
        return c.reshape(x.shape[0], -1, 3), b.reshape(x.shape[0], -1, 4)


def test_ops_without_a_window_rule_run_whole_and_stay_exact():
    model = CumsumDetector()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 12, 12, 2)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(1), x)
    comp = Composite(rules=((INPUT_LAYER, rules.Flat()), (nn.Conv, rules.Epsilon(1e-3))))
    A, K = output_sizes(model, variables, x)
    (group,) = crop_groups(model, variables, x.shape, comp, A, K)
    assert "cumsum" in group.densified and not group.windowed and not group.cropped
    targets = [cj.ClassTarget(image=0, anchor=a, cls=1, contrast="none") for a in (0, 7, A - 1)]
    dense = cj.explain(model, variables, x, targets, method=comp, crop=False)
    np.testing.assert_allclose(cj.explain(model, variables, x, targets, method=comp, crop="always"), dense, atol=1e-6)
    # the group's cropped function itself (run whole where needed) is exact too
    forward, _ = compiled_functions(model, comp, 3, A)
    _, vjp_fn = forward(variables, jnp.asarray(x))
    fn = compiled_cropped(model, comp, 3, A, group, dense_out=True)
    coef = np.zeros((3, 1, K), np.float32)
    coef[:, 0, 1] = 1
    got = fn(
        group_leaves(group, vjp_fn),
        jnp.asarray(x),
        jnp.asarray([0, 7, A - 1], jnp.int32),
        coef,
        np.zeros((3, 1, 4), np.float32),
    )
    assert got.shape == (1, *dense.shape)
    np.testing.assert_allclose(np.asarray(got)[0], dense, atol=1e-6)


def test_auto_crop_policy_by_window_share_and_target_count():
    from crp_jax.relevance.cropped import auto_crops

    # shares computed by hand: 108^2 / 128^2 = 0.712, 108^2 / 300^2 = 0.130, 100^2 / 128^2 = 0.61
    assert auto_crops((108, 108), (300, 300)) and auto_crops((108, 108), (300, 300), 1)
    assert not auto_crops((108, 108), (128, 128), 15) and auto_crops((108, 108), (128, 128), 16)
    assert auto_crops((100, 100), (128, 128), 16) and not auto_crops((100, 100), (128, 128), 3)
    assert not auto_crops((324, 324), (128, 128), 1000)  # clipped to the image: the whole image
    assert not auto_crops((128, 100), (128, 128), 10**6)  # 0.78 > 0.75
    assert auto_crops((64, 128), (128, 128))  # exactly half


def test_auto_crops_the_shipped_first_source_only_for_many_targets(shipped):
    from crp_jax.compiled import cache_info, clear_caches

    model, variables, meta, x = shipped
    first = [a for a in range(0, 1024, 61)]  # 17 anchors of the first source (71% windows)
    targets = [cj.ClassTarget(0, a, 1 + a % 6) for a in first]
    clear_caches()
    few = cj.explain(model, variables, x, targets[:3], meta=meta)
    info = cache_info()
    assert info["cropped_backward"].entries == 0 and info["crop_plans"].entries == 0  # nothing planned
    many = cj.explain(model, variables, x, targets[:16], meta=meta)
    assert cache_info()["cropped_backward"].entries == 1
    dense = cj.explain(model, variables, x, targets[:16], meta=meta, crop=False)
    scale = np.abs(dense).max()
    assert np.abs(many - dense).max() <= TOL * scale
    np.testing.assert_allclose(few, dense[:3], atol=TOL * scale, rtol=0)
