"""The relevance engine end to end: conservation, the contrast shortcut, transforms
(jit / vmap / batching), max-pool routing, targets and error paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import crp_jax as cj
from crp_jax.errors import ConfigError, InputError, TargetError
from crp_jax.relevance import Composite, relevance_vjp
from crp_jax.relevance.composite import get_composite
from crp_jax.ssd import SSD, Meta, SSDConfig
from crp_jax.ssd.build import init_variables
from crp_jax.ssd.meta import TORCHVISION_MEAN, TORCHVISION_STD, default_class_names

K_TINY = 5


@pytest.fixture(scope="module")
def tiny():
    cfg = SSDConfig.small(num_classes=K_TINY, image_size=64, width=0.125)
    model = SSD(cfg)
    variables = init_variables(model, seed=0)
    # non-zero biases so that the epsilon rule differs from the bias-free rules
    variables = jax.tree_util.tree_map_with_path(lambda p, v: v + 0.01 if p[-1].key == "bias" else v, variables)
    meta = Meta(cfg, default_class_names(K_TINY), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    low, high = meta.pixel_bounds
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3), minval=low[0], maxval=high[0])
    return model, variables, meta, x


def _source_anchor(cfg: SSDConfig, k: int) -> int:
    """Anchor index of the centre cell's first box of source k (torchvision order)."""
    sizes, per = cfg.feature_sizes(), cfg.anchors_per_cell
    start = sum(f * f * a for f, a in zip(sizes[:k], per[:k]))
    f = sizes[k]
    cell = (f // 2) * f + f // 2
    return start + cell * per[k]


# ---- conservation on SSD300 -------------------------------------------------------------


@pytest.mark.slow
def test_conservation_ssd300_every_source():
    cfg = SSDConfig.ssd300_vgg16(21)
    model = SSD(cfg)
    variables = init_variables(model, seed=0)
    meta = Meta(cfg, default_class_names(21), TORCHVISION_MEAN, TORCHVISION_STD)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, 300, 300, 3)).astype(np.float32) / 255.0
    x = jnp.asarray((img - np.array(meta.mean)) / np.array(meta.std), jnp.float32)
    anchors = [_source_anchor(cfg, k) for k in range(6)]
    targets = (
        [cj.ClassTarget(0, a, 7, contrast="others") for a in anchors]  # CRP contrast: sums to 0
        + [cj.ClassTarget(0, a, 7, contrast="none") for a in anchors]  # one-hot w+: sums to 1
        + [cj.LocTarget(0, anchors[2], "cx", 1), cj.LocTarget(0, anchors[5], "h", -1)]  # a1b1: 0
    )
    R = cj.explain(model, variables, x, targets, method="crp", meta=meta)
    sums = R.reshape(len(targets), -1).sum(1)
    scale = np.abs(R).reshape(len(targets), -1).sum(1)
    assert np.all(scale > 0), "every target must reach the input"
    np.testing.assert_allclose(sums[6:12], 1.0, rtol=1e-3)
    for s, a in zip(np.r_[sums[:6], sums[12:]], np.r_[scale[:6], scale[12:]]):
        assert abs(s) <= 1e-3 * a, (s, a)


def test_lrp_ab_conserves_on_small_model(tiny):
    model, variables, meta, x = tiny
    cfg = model.config
    targets = [cj.ClassTarget(0, _source_anchor(cfg, k), 2) for k in range(cfg.num_sources)]
    R = cj.explain(model, variables, x, targets, method="lrp_ab", meta=meta)
    np.testing.assert_allclose(R.reshape(len(targets), -1).sum(1), 1.0, rtol=1e-3)


# ---- the contrast shortcut -------------------------------------------------------------


@pytest.mark.parametrize("contrast", ["others", "foreground", (1, 3)])
def test_contrast_equals_difference_of_one_hot_passes(tiny, contrast):
    model, variables, meta, x = tiny
    anchor, k_star = 37, 2
    K = model.config.num_classes
    one_hot = cj.explain(
        model,
        variables,
        x,
        [cj.ClassTarget(1, anchor, k, contrast="none") for k in range(K)],
        method="crp",
        meta=meta,
    )
    C = {"others": [k for k in range(K) if k != k_star], "foreground": [k for k in range(1, K) if k != k_star]}.get(
        contrast, list(contrast)
    )
    expected = one_hot[k_star] - one_hot[C].mean(0)
    got = cj.explain(
        model, variables, x, [cj.ClassTarget(1, anchor, k_star, contrast=contrast)], method="crp", meta=meta
    )[0]
    np.testing.assert_allclose(got, expected, atol=1e-6 * np.abs(one_hot).max())


def test_crp_default_contrast_is_others_and_lrp_default_is_one_hot(tiny):
    model, variables, meta, x = tiny
    t_default = [cj.ClassTarget(0, 11, 1)]
    crp = cj.explain(model, variables, x, t_default, method="crp", meta=meta)
    crp_others = cj.explain(model, variables, x, [cj.ClassTarget(0, 11, 1, "others")], method="crp", meta=meta)
    np.testing.assert_array_equal(crp, crp_others)
    ab = cj.explain(model, variables, x, t_default, method="lrp_ab", meta=meta)
    crp_none = cj.explain(model, variables, x, [cj.ClassTarget(0, 11, 1, "none")], method="crp", meta=meta)
    # lrp_ab and crp share every rule on the class path; only the initial relevance differs
    np.testing.assert_allclose(ab, crp_none, atol=1e-7)
    assert abs(crp.sum()) < 1e-3 * np.abs(crp).sum() and ab.sum() == pytest.approx(1.0, rel=1e-3)


def test_loc_target_uses_alpha1beta1_in_crp_only(tiny):
    model, variables, meta, x = tiny
    t = [cj.LocTarget(0, 20, "w", 1)]
    crp = cj.explain(model, variables, x, t, method="crp", meta=meta)
    ab = cj.explain(model, variables, x, t, method="lrp_ab", meta=meta)
    # alpha1beta1 moves as much relevance to what pushes against as to what pushes for
    assert abs(crp.sum()) < 1e-3 * np.abs(crp).sum()
    assert ab.sum() == pytest.approx(1.0, rel=1e-3)
    neg = cj.explain(model, variables, x, [cj.LocTarget(0, 20, "w", -1)], method="crp", meta=meta)
    np.testing.assert_allclose(neg, -crp, atol=1e-7)


# ---- transforms: linearity, vmap, jit, batches -----------------------------------------


def _cotangent(model, x, image, anchor, cls_vec=None, loc_vec=None):
    cfg = model.config
    ct_cls = np.zeros((x.shape[0], cfg.num_anchors(), cfg.num_classes), np.float32)
    ct_loc = np.zeros((x.shape[0], cfg.num_anchors(), 4), np.float32)
    if cls_vec is not None:
        ct_cls[image, anchor] = cls_vec
    if loc_vec is not None:
        ct_loc[image, anchor] = loc_vec
    return jnp.asarray(ct_cls), jnp.asarray(ct_loc)


def _jitted_explain_fn(model, variables, meta, method="crp"):
    """relevance_vjp's explain_fn as one jitted function of (x, cotangent)."""

    @jax.jit
    def run(x, ct):
        return relevance_vjp(model.apply, variables, x, method, meta=meta)[1](ct)

    return run


def test_linearity_vmap_and_jit(tiny):
    model, variables, meta, x = tiny
    xb = x[:1]
    run = _jitted_explain_fn(model, variables, meta)
    e = np.eye(K_TINY, dtype=np.float32)
    c1 = _cotangent(model, xb, 0, 5, cls_vec=e[1])
    c2 = _cotangent(model, xb, 0, 40, loc_vec=np.array([0, 1, 0, 0], np.float32))
    r1, r2 = run(xb, c1), run(xb, c2)
    assert np.abs(r1).max() > 0 and np.abs(r2).max() > 0
    r12 = run(xb, jax.tree.map(lambda a, b: 2.0 * a - 3.0 * b, c1, c2))
    np.testing.assert_allclose(r12, 2 * r1 - 3 * r2, atol=1e-6)
    # vmap over initial relevances (targets) sharing one forward
    outs, efn = jax.jit(lambda x: relevance_vjp(model.apply, variables, x, "crp", meta=meta))(xb)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), c1, c2)
    rv = jax.jit(jax.vmap(efn))(stacked)
    np.testing.assert_allclose(rv[0], r1, atol=1e-6)
    np.testing.assert_allclose(rv[1], r2, atol=1e-6)
    # eager (no jit anywhere) == jit
    _, efn_eager = relevance_vjp(model.apply, variables, xb, "crp", meta=meta)
    np.testing.assert_allclose(efn_eager(c1), r1, atol=1e-6)
    # the forward outputs are the model's own (up to float32 rounding: rules that need z+
    # compute the layer in one conv with their extra kernels, which reorders the sums)
    ref = jax.jit(model.apply)(variables, xb)
    np.testing.assert_allclose(outs[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[1], ref[1], rtol=1e-5, atol=1e-5)


def test_batch_equals_image_by_image(tiny):
    model, variables, meta, x = tiny
    run = _jitted_explain_fn(model, variables, meta)
    cls_vec = np.eye(K_TINY, dtype=np.float32)[3] - 0.25
    rb = run(x, _cotangent(model, x, 1, 9, cls_vec=cls_vec))
    r1 = run(x[1:2], _cotangent(model, x[1:2], 0, 9, cls_vec=cls_vec))
    np.testing.assert_allclose(rb[1], r1[0], atol=1e-6)
    assert np.abs(rb[0]).max() == 0.0 and np.abs(r1).max() > 0
    # vmap over images gives the same as a batch
    ct1 = _cotangent(model, x[:1], 0, 9, cls_vec=cls_vec)
    rv = jax.jit(jax.vmap(lambda xi: run(xi[None], ct1)[0]))(x)
    np.testing.assert_allclose(rv[1], r1[0], atol=1e-6)
    # explain over a batch with targets in mixed order == one image at a time
    t = [cj.ClassTarget(1, 9, 2), cj.ClassTarget(0, 3, 1), cj.LocTarget(1, 30, "cy", -1)]
    both = cj.explain(model, variables, x, t, method="crp", meta=meta)
    singles = [cj.ClassTarget(0, 9, 2), cj.ClassTarget(0, 3, 1), cj.LocTarget(0, 30, "cy", -1)]
    for i, (tg, single) in enumerate(zip(t, singles)):
        alone = cj.explain(model, variables, x[tg.image : tg.image + 1], [single], method="crp", meta=meta)
        np.testing.assert_allclose(both[i], alone[0], atol=1e-6)


def test_explain_chunking_matches_relevance_vjp(tiny):
    model, variables, meta, x = tiny
    t = [cj.ClassTarget(0, a, 1 + a % 4) for a in range(0, 100, 10)]  # 10 targets
    for method, chunks in (("crp", (3, 8)), ("gradient_x_input", (8,))):
        comp = get_composite(method, meta)
        Rs = [cj.explain(model, variables, x, t, method=method, meta=meta, chunk_size=c) for c in chunks]
        for R in Rs[1:]:
            np.testing.assert_allclose(R, Rs[0], atol=1e-6)
        run = _jitted_explain_fn(model, variables, meta, method)
        for i in (0, 9):
            cc, _ = t[i].coefficients(K_TINY, comp.contrast)
            ref = run(x[:1], _cotangent(model, x[:1], 0, t[i].anchor, cls_vec=cc))[0]
            np.testing.assert_allclose(Rs[0][i], ref, atol=1e-6)


def test_device_output_equals_host_output_in_target_order(tiny):
    model, variables, meta, x = tiny
    # images interleaved, so the chunks come back out of target order and must be permuted
    t = [cj.ClassTarget(i % 2, 7 * i, 1 + i % 3) for i in range(11)]
    host = cj.explain(model, variables, x, t, method="crp", meta=meta, chunk_size=4)
    dev = cj.explain(model, variables, x, t, method="crp", meta=meta, chunk_size=4, to_host=False)
    assert isinstance(dev, jax.Array) and dev.shape == host.shape
    np.testing.assert_array_equal(np.asarray(dev), host)
    hm = cj.heatmap(dev, "abs")
    assert isinstance(hm, jax.Array)
    np.testing.assert_allclose(np.asarray(hm), np.abs(host).sum(-1), rtol=1e-6)
    # the default chunk (8) gives the same relevance
    np.testing.assert_allclose(cj.explain(model, variables, x, t, method="crp", meta=meta), host, atol=1e-6)
    with pytest.raises(InputError, match="to_host"):
        cj.explain(model, variables, x, t, method="crp", meta=meta, to_host="no")
    with pytest.raises(ConfigError, match="to_host=False"):
        cj.explain(model, variables, x, t, method="crp", meta=meta, mesh="auto", to_host=False)


def test_gradient_methods_match_autodiff(tiny):
    model, variables, meta, x = tiny
    out, vjp = jax.vjp(lambda x: model.apply(variables, x), x[:1])
    ct = _cotangent(model, x[:1], 0, 17, cls_vec=np.eye(K_TINY, dtype=np.float32)[4])
    (g,) = vjp(ct)
    t = [cj.ClassTarget(0, 17, 4)]
    np.testing.assert_allclose(cj.explain(model, variables, x, t, method="gradient")[0], g[0], atol=1e-6)
    np.testing.assert_allclose(
        cj.explain(model, variables, x, t, method="gradient_x_input")[0], (g * x[:1])[0], atol=1e-6
    )


def test_layer_flow_conserved_through_layers(tiny):
    model, variables, meta, x = tiny
    t = [cj.ClassTarget(0, 1, 2, "none"), cj.ClassTarget(0, 1, 2, "others")]
    R, flow = cj.relevance_flow(model, variables, x, t, method="lrp_ab", meta=meta)
    names = list(flow)
    assert names[0] == "conv1_1" and "l2norm" in names and "cls_0" in names
    # anchor 1 sits in source 0: every backbone layer up to conv4_3 carries the whole unit
    for name in names[: names.index("conv4_3") + 1]:
        assert flow[name][0, 0] == pytest.approx(1.0, rel=1e-3), name
        assert abs(flow[name][1, 0]) < 1e-3 * flow[name][1, 1], name
    assert flow["conv5_1"][0, 1] == 0.0  # nothing flows through layers above the source


# ---- targets ----------------------------------------------------------------------------


def test_targets_from_detections():
    class D:
        def __init__(self, image, anchors, labels):
            self.image, self.anchors, self.labels = image, np.array(anchors), np.array(labels)

    dets = [D(0, [4, 9], [1, 2]), D(1, [7], [3])]
    t = cj.targets_from_detections(dets, what="all", signs=(1, -1))
    assert len(t) == 3 * (1 + 4 * 2)
    assert t[0] == cj.ClassTarget(0, 4, 1, None)
    assert t[1] == cj.LocTarget(0, 4, "cx", 1) and t[2] == cj.LocTarget(0, 4, "cx", -1)
    assert t[-1] == cj.LocTarget(1, 7, "h", -1)
    assert cj.targets_from_detections(dets, what="cy") == [
        cj.LocTarget(0, 4, "cy", 1),
        cj.LocTarget(0, 9, "cy", 1),
        cj.LocTarget(1, 7, "cy", 1),
    ]
    with pytest.raises(TargetError, match="'size'"):
        cj.targets_from_detections(dets, what="size")


def test_contrast_coefficients_by_hand():
    c, l = cj.ClassTarget(0, 0, 2, "others").coefficients(5)
    np.testing.assert_allclose(c, [-0.25, -0.25, 1.0, -0.25, -0.25])
    c, _ = cj.ClassTarget(0, 0, 2, "foreground").coefficients(5)
    np.testing.assert_allclose(c, [0, -1 / 3, 1.0, -1 / 3, -1 / 3])
    c, _ = cj.ClassTarget(0, 0, 2, (4,)).coefficients(5)
    np.testing.assert_allclose(c, [0, 0, 1.0, 0, -1.0])
    c, l = cj.LocTarget(0, 0, "h", -1).coefficients(5)
    np.testing.assert_allclose(l, [0, 0, 0, -1])
    np.testing.assert_allclose(c, np.zeros(5))  # a loc target starts no class relevance


# ---- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,match",
    [
        (cj.ClassTarget(0, 10**6, 1), r"anchor 1000000 out of range: valid is 0\.\."),
        (cj.ClassTarget(0, 3, 9), r"cls 9 out of range: valid is 0\.\.4"),
        (cj.ClassTarget(5, 3, 1), r"image 5 out of range: valid is 0\.\.1"),
        (cj.ClassTarget(0, 3, -1), r"cls -1 out of range"),
        (cj.ClassTarget(0, 3, 1, (1, 2)), r"contains the target class 1"),
        (cj.ClassTarget(0, 3, 1, (7,)), r"contrast class 7 out of range"),
        (cj.ClassTarget(0, 3, 1, "everything"), r"contrast 'everything' unknown"),
        (cj.LocTarget(0, 3, "x", 1), r"coord 'x' unknown"),
        (cj.LocTarget(0, 3, 4, 1), r"coord 4 out of range: valid is 0\.\.3"),
        ("not a target", r"not a ClassTarget or LocTarget"),
    ],
)
def test_bad_targets(tiny, target, match):
    model, variables, meta, x = tiny
    with pytest.raises(TargetError, match=match):
        cj.explain(model, variables, x, [target], method="crp", meta=meta)


def test_a_sign_other_than_plus_or_minus_one_is_refused_when_the_target_is_made():
    with pytest.raises(TargetError, match=r"sign must be the integer \+1 or -1, got 0"):
        cj.LocTarget(0, 3, "cx", 0)


def test_bad_inputs(tiny):
    model, variables, meta, x = tiny
    t = [cj.ClassTarget(0, 3, 1)]
    with pytest.raises(ConfigError, match="unknown method 'lrp_zz'"):
        cj.explain(model, variables, x, t, method="lrp_zz", meta=meta)
    with pytest.raises(ConfigError, match="pass meta"):
        cj.explain(model, variables, x, t, method="crp")
    bad = np.array(x)
    bad[1, 5, 5, 0] = np.nan
    with pytest.raises(InputError, match=r"images \[1\] contain NaN or Inf"):
        cj.explain(model, variables, bad, t, method="crp", meta=meta)
    with pytest.raises(InputError, match="rank 4"):
        cj.explain(model, variables, x[0], t, method="crp", meta=meta)
    with pytest.raises(InputError, match="64x64"):
        cj.explain(model, variables, jnp.zeros((1, 32, 32, 3)), t, method="crp", meta=meta)
    with pytest.raises(InputError, match="empty batch"):
        cj.explain(model, variables, jnp.zeros((0, 64, 64, 3)), t, method="crp", meta=meta)
    with pytest.raises(InputError, match="chunk_size"):
        cj.explain(model, variables, x, t, method="crp", meta=meta, chunk_size=0)
    with pytest.raises(InputError, match="floating point"):
        cj.explain(model, variables, np.zeros((1, 64, 64, 3), np.uint8), t, method="crp", meta=meta)
    assert cj.explain(model, variables, x, [], method="crp", meta=meta).shape == (0, 64, 64, 3)
    with pytest.raises(ConfigError, match="not a crp_jax rule"):
        Composite(rules=(("conv*", "wplus"),))
    with pytest.raises(ConfigError, match="contrast 'all'"):
        Composite(contrast="all")


def test_second_call_does_not_recompile(tiny):
    from crp_jax.relevance import compiled_functions

    model, variables, meta, x = tiny
    # the dense path's pair (the cropped backward's count: tests/test_cropped.py)
    comp = get_composite("crp", meta)
    cj.explain(model, variables, x, [cj.ClassTarget(0, a, 1) for a in range(9)], method="crp", meta=meta, crop=False)
    forward, backward = compiled_functions(model, comp, 8, model.config.num_anchors())
    sizes = (forward._cache_size(), backward._cache_size())
    # other target counts that fill whole or partial chunks of 8, on either image
    cj.explain(model, variables, x, [cj.ClassTarget(1, a, 2) for a in range(13)], method="crp", meta=meta, crop=False)
    cj.explain(
        model,
        variables,
        x,
        [cj.LocTarget(i % 2, a, "w", 1) for i, a in enumerate(range(30))],
        method="crp",
        meta=meta,
        crop=False,
    )
    assert (forward._cache_size(), backward._cache_size()) == sizes == (1, 1)
