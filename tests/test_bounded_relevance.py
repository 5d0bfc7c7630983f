"""Relevance stays bounded on signed networks (issue: SSDlite relevance grew to 1e36, then Inf).

References are independent of the code under test: sign facts of layers written here by
hand, the addition rule's formula in float64, the conservation law (LRP-ab with zero biases
sums to the initial relevance 1, a class contrast to 0), and the bound ``sum |R|`` <= the
initial ``sum |R|`` read layer by layer from ``relevance_flow``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import crp_jax as cj
from crp_jax.errors import NumericsError
from crp_jax.relevance import Composite, Kind, relevance_vjp, rules
from crp_jax.relevance.signs import layer_signs
from crp_jax.ssd import Meta, SSDConfig
from crp_jax.ssd.anchors import central_anchor
from crp_jax.ssd.fold import calibrate_batchnorm, fold_batchnorm
from crp_jax.ssd.meta import default_class_names
from crp_jax.ssd.ssdlite import SSDLite, random_variables

SMALL = dataclasses.replace(SSDConfig.ssdlite320_mobilenet_v3_large(4), image_size=96, width=0.35)


# ---- sign facts read from the graph ------------------------------------------------------


class _Add(nn.Module):
    relevance_kind = "add"

    def __call__(self, a, b):
        return a + b


class _SignNet(nn.Module):
    """Each conv's sign facts are known by construction (see the test)."""

    @nn.compact
    def __call__(self, x):
        conv = lambda name: nn.Conv(4, (1, 1), name=name)  # noqa: E731
        a = conv("reads_input")(x)  # input signed (the model input); output -> relu: not signed
        h = nn.relu(a)
        b = conv("after_relu")(h)  # input >= 0; output -> hardswish: signed
        hs = b * jnp.clip(b + 3.0, 0.0, 6.0) / 6.0
        c = conv("after_hardswish")(hs)  # input signed; output -> relu6 clip: not signed
        r6 = jnp.clip(c, 0.0, 6.0)
        d = conv("bottleneck")(r6)  # input >= 0; output -> residual add: signed
        y = _Add(name="add")(d, jax.nn.sigmoid(r6))
        e = conv("after_add")(jax.nn.sigmoid(y) * r6)  # input: sigmoid * relu6 >= 0; output = model output
        return e


def test_sign_analysis_reads_each_layers_facts_from_the_graph():
    model = _SignNet()
    v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 2)))
    signs = layer_signs(model.apply, v, jax.ShapeDtypeStruct((1, 3, 3, 2), jnp.float32))
    got = {k: (s.input_signed, s.output_signed) for k, s in signs.items()}
    assert got == {
        "reads_input": (True, False),
        "after_relu": (False, True),
        "after_hardswish": (True, False),
        "bottleneck": (False, True),
        "after_add": (False, False),
    }


class _SumNet(nn.Module):
    """A plain sum (an interpolation) before a ReLU lets relevance reach an addend's negative
    entries (the gradient gives every addend the sum's relevance); a sign-split add module
    before a ReLU does not."""

    @nn.compact
    def __call__(self, x):
        a = nn.Conv(4, (1, 1), name="before_plain_sum")(x)
        mixed = nn.relu(0.5 * a + 0.5 * jnp.roll(a, 1, axis=1))
        b = nn.Conv(4, (1, 1), name="before_add_module")(x)
        added = nn.relu(_Add(name="add")(b, nn.relu(x)))
        return nn.Conv(2, (1, 1), name="head")(mixed + added)


def test_plain_sums_pass_relevance_to_negative_entries_and_add_modules_split_by_sign():
    model = _SumNet()
    v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 4)))
    signs = layer_signs(model.apply, v, jax.ShapeDtypeStruct((1, 3, 3, 4), jnp.float32))
    assert signs["before_plain_sum"].output_signed
    assert not signs["before_add_module"].output_signed


def test_sign_analysis_of_ssdlite_finds_what_its_former_hand_list_named():
    """The reviewed hand list that SSDlite kept before (convs whose input or output can be
    negative): the graph analysis must find at least those, and none of the convs between
    ReLU / ReLU6 outputs. The folded form, which rules see (with BatchNorm between a conv and
    its ReLU, a negative gamma makes every such conv's negative outputs matter)."""
    model, variables = fold_batchnorm(SSDLite(SMALL), random_variables(SSDLite(SMALL)))
    signs = layer_signs(model.apply, variables, jax.ShapeDtypeStruct((1, 96, 96, 3), np.float32))
    signed = {k for k, s in signs.items() if s.input_signed or s.output_signed}
    assert {"stem/conv", "block_1/expand/conv", "block_0/dw/conv", "block_7/dw/conv", "block_1/project/conv"} <= signed
    assert {"last/conv", "extra_0/pw1/conv", "dw_cls_0/conv", "dw_loc_1/conv"} <= signed
    assert not {"block_1/dw/conv", "block_4/dw/conv", "extra_1/pw1/conv", "dw_cls_2/conv", "cls_0", "loc_0"} & signed
    # linear bottlenecks feed adds: relevance reaches their negative outputs
    assert signs["block_2/project/conv"].output_signed and not signs["block_2/project/conv"].input_signed


def test_vgg_ssd_keeps_the_cheap_w_plus_on_every_relu_layer():
    model, variables, meta = cj.load_pretrained()
    S = meta.config.image_size
    signs = layer_signs(model.apply, variables, jax.ShapeDtypeStruct((1, S, S, 3), np.float32))
    body = {k: s for k, s in signs.items() if not k.startswith(("cls_", "loc_")) and k != "conv1_1"}
    assert body and not any(s.input_signed or s.output_signed for s in body.values())
    assert signs["conv1_1"].input_signed  # the pixels (z^B's layer)


# ---- rules: the sign-aware addition and the cheap SignedWPlus form ----------------------


def test_sign_aware_add_matches_the_formula_and_keeps_every_share_in_0_1():
    rng = np.random.default_rng(0)
    # addends that nearly cancel: the value split's shares blow up there
    a = rng.normal(size=(64,)).astype(np.float32)
    b = (-a + rng.normal(scale=1e-3, size=64)).astype(np.float32)
    R = rng.normal(size=(64,)).astype(np.float32)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, ab):
            return _Add(name="add")(ab[0], ab[1])

    for by_sign in (True, False):
        comp = Composite(rules=((Kind("add"), rules.Proportional(1e-9, by_sign=by_sign)),))
        _, explain = relevance_vjp(Net().apply, {}, jnp.asarray(np.stack([a, b])), comp)
        Ra, Rb = np.asarray(explain(jnp.asarray(R)), np.float64)
        a64, b64, R64 = a.astype(np.float64), b.astype(np.float64), R.astype(np.float64)
        y = a64 + b64
        if by_sign:
            pos = y >= 0
            pa = np.where(pos, np.maximum(a64, 0), np.minimum(a64, 0))
            pb = np.where(pos, np.maximum(b64, 0), np.minimum(b64, 0))
            tot = pa + pb
            den = tot + np.where(tot >= 0, 1e-9, -1e-9)
            np.testing.assert_allclose(Ra, pa / den * R64, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(Rb, pb / den * R64, rtol=1e-5, atol=1e-7)
            assert np.all(np.abs(Ra) + np.abs(Rb) <= np.abs(R64) * (1 + 1e-6))
            np.testing.assert_allclose(Ra + Rb, R64, rtol=1e-5, atol=1e-7)
        else:  # the old split: conserving but unbounded where the addends cancel
            assert np.max(np.abs(Ra) + np.abs(Rb)) > 100 * np.max(np.abs(R64))


def test_signed_w_plus_for_non_negative_inputs_equals_its_general_form():
    from crp_jax.relevance.linear import ConvOp

    rng = np.random.default_rng(1)
    x = jnp.asarray(np.maximum(rng.normal(size=(1, 6, 6, 5)), 0).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 4)).astype(np.float32))
    b = jnp.asarray(rng.normal(size=(4,)).astype(np.float32))
    R = jnp.asarray(rng.normal(size=(1, 6, 6, 4)).astype(np.float32))
    op = ConvOp(strides=(1, 1), padding=((1, 1), (1, 1)))
    general = jax.vjp(lambda x: rules.SignedWPlus()(op, x, w, b), x)[1](R)[0]
    cheap = jax.vjp(lambda x: rules.SignedWPlus(signed_input=False)(op, x, w, b), x)[1](R)[0]
    np.testing.assert_allclose(np.asarray(cheap), np.asarray(general), rtol=1e-5, atol=1e-6 * np.abs(general).max())


def test_specialize_picks_the_sign_aware_form_the_facts_need():
    from crp_jax.relevance.signs import LayerSigns

    wp = rules.WPlus(stabilizer=1e-7)
    assert wp.specialize(LayerSigns(False, False)) == wp
    assert wp.specialize(LayerSigns(True, False)) == rules.WPlus(1e-7, contributions=True)
    assert wp.specialize(LayerSigns(False, True)) == rules.SignedWPlus(1e-7, signed_input=False)
    assert wp.specialize(LayerSigns(True, True)) == rules.SignedWPlus(1e-7, signed_input=True)
    ab = rules.AlphaBeta(1.0, 1.0)
    assert ab.specialize(LayerSigns(True, True)) == rules.AlphaBeta(1.0, 1.0, contributions=True)
    assert rules.Epsilon().specialize(LayerSigns(True, True)) == rules.Epsilon()


# ---- whole networks: calibrated random SSDlite, gammas of both signs, zero biases --------


def calibrated_zero_bias_ssdlite(cfg: SSDConfig, seed: int):
    """The issue's recipe on our own SSDLite: random weights, BN statistics calibrated on
    random images (activations of order 1, as in a trained model), gammas redrawn as
    1 + 0.6 N(0, 1) (some negative), BN betas, running means and every bias zero, folded."""
    model = SSDLite(cfg)
    rng = np.random.default_rng(seed)
    S = cfg.image_size
    calib = rng.uniform(-1, 1, size=(4, S, S, 3)).astype(np.float32)
    flat = traverse_util.flatten_dict(calibrate_batchnorm(model, random_variables(model, seed), calib), sep="/")
    for k, v in flat.items():
        if k.endswith("bn/scale"):
            flat[k] = (1 + 0.6 * rng.normal(size=v.shape)).astype(np.float32)
        elif k.endswith(("bn/bias", "bn/mean")):
            flat[k] = np.zeros_like(v)
    folded, fvars = fold_batchnorm(model, traverse_util.unflatten_dict(flat, sep="/"))
    flat = traverse_util.flatten_dict(fvars, sep="/")
    fvars = traverse_util.unflatten_dict(
        {k: np.zeros_like(v) if k.endswith("bias") else v for k, v in flat.items()}, "/"
    )
    meta = Meta(cfg, default_class_names(cfg.num_classes), (0.5,) * 3, (0.5,) * 3)
    img = rng.integers(0, 256, (S, S, 3)).astype(np.uint8)
    return folded, fvars, meta, cj.preprocess(img, meta)


def trunk(flow: dict) -> list[str]:
    """SSDlite's backbone cuts in forward order: every block's output (its add, or its
    project conv), then the last conv's activation. All relevance of a source-1 target
    crosses each of them."""
    out = ["stem/act"]
    for i in range(15):
        out.append(f"block_{i}/add" if f"block_{i}/add" in flow else f"block_{i}/project/conv")
    return out + ["last/act"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lrp_ab_conserves_and_stays_bounded_on_calibrated_signed_ssdlite(seed):
    model, variables, meta, x = calibrated_zero_bias_ssdlite(SMALL, seed)
    assert np.abs(np.asarray(model.apply(variables, x)[0])).max() > 0.5  # a signal, not a vanished one
    anchors = [central_anchor(SMALL, k) for k in range(SMALL.num_sources)]
    R, flow = cj.relevance_flow(
        model, variables, x, [cj.ClassTarget(0, a, 1) for a in anchors], method="lrp_ab", meta=meta
    )
    assert np.all(np.isfinite(R))
    sums = R.reshape(len(R), -1).sum(1)
    np.testing.assert_allclose(sums, 1.0, atol=1e-3)
    # no layer holds more absolute relevance than the target started with ...
    for k, v in flow.items():
        assert np.all(v[:, 1] <= 1.0 + 1e-4), (k, v[:, 1])
    # ... and along the backbone it never grows going back (target 1: source 1)
    cuts = [flow[k][1, 1] for k in trunk(flow)]
    assert all(cuts[i] <= cuts[i + 1] * (1 + 1e-4) + 1e-6 for i in range(len(cuts) - 1)), cuts
    crp = cj.explain(model, variables, x, [cj.ClassTarget(0, a, 1) for a in anchors], method="crp", meta=meta)
    assert np.all(np.isfinite(crp))
    # a contrast sums to 0; its initial mass is 2 (1 on the class, 1 spread over the others)
    assert np.all(np.abs(crp.reshape(len(crp), -1).sum(1)) <= 1e-5 * 2)
    assert np.all(np.abs(crp).reshape(len(crp), -1).sum(1) <= 2.0 * (1 + 1e-4))


def test_shipped_ssdlite_relevance_is_bounded_in_every_source():
    model, variables, meta = cj.load_pretrained("ssdlite")
    cfg = meta.config
    img = np.random.default_rng(3).integers(0, 256, (cfg.image_size, cfg.image_size, 3)).astype(np.uint8)
    x = cj.preprocess(img, meta)
    anchors = [central_anchor(cfg, k) for k in range(cfg.num_sources)]
    R, flow = cj.relevance_flow(
        model, variables, x, [cj.ClassTarget(0, a, 1) for a in anchors], method="lrp_ab", meta=meta
    )
    assert np.all(np.isfinite(R))
    # w+ shares ignore the biases, so relevance is never created; it can be lost only where a
    # unit has no contribution of its output's sign
    absum = np.abs(R).reshape(len(R), -1).sum(1)
    assert np.all(absum <= 1.0 + 1e-4) and np.all(absum > 0.5), absum
    for k, v in flow.items():
        assert np.all(v[:, 1] <= 1.0 + 1e-4), (k, v[:, 1])
    # its zero-bias copy conserves: LRP-ab sums to the initial relevance 1 in every source
    flat = traverse_util.flatten_dict(variables, sep="/")
    zero_bias = traverse_util.unflatten_dict(
        {k: np.zeros_like(v) if k.endswith("bias") else v for k, v in flat.items()}, sep="/"
    )
    R0 = cj.explain(model, zero_bias, x, [cj.ClassTarget(0, a, 1) for a in anchors], method="lrp_ab", meta=meta)
    np.testing.assert_allclose(R0.reshape(len(R0), -1).sum(1), 1.0, atol=1e-3)


# ---- where a composite cannot keep relevance finite: a named error, never NaN ------------

_PATTERN = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
# On the input (+u, -u, +u, -u), every column has its positive weights on the (+u, -u) pair
# only, equal on both: z+ = u w - u w = 0 exactly, while the negative weights make the output
# (+u, -u, +u, -u) again. The literal w+ rule divides by stab(0) = 1e-9 at every layer, and
# the unequal weights of a row (1, 2) keep the huge shares from cancelling.
_KERNEL = np.array([[1, 2, 1, 2], [1, 2, 1, 2], [0, -1, 0, -1], [-1, 0, -1, 0]], np.float32)[None, None]


class _CancellingDetector(nn.Module):
    """``[B, 2, 2, 4] -> (cls [B, 4, 2], loc [B, 4, 4])`` through six signed 1x1 convs."""

    @nn.compact
    def __call__(self, x):
        for i in range(6):
            x = nn.Conv(4, (1, 1), use_bias=False, name=f"body_{i}")(x)
        B = x.shape[0]
        c = nn.Conv(2, (1, 1), use_bias=False, name="cls_0")(x).reshape(B, -1, 2)
        return c, nn.Conv(4, (1, 1), use_bias=False, name="loc_0")(x).reshape(B, -1, 4)


@pytest.fixture(scope="module")
def cancelling():
    model = _CancellingDetector()
    v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 4)))
    flat = traverse_util.flatten_dict(v, sep="/")
    flat = {k: (_KERNEL if k.startswith("params/body") else np.abs(np.asarray(a)) + 0.1) for k, a in flat.items()}
    x = np.broadcast_to(_PATTERN, (1, 2, 2, 4)).copy()
    return model, traverse_util.unflatten_dict(flat, sep="/"), x


def test_unbounded_rules_raise_a_numerics_error_naming_the_layer(cancelling):
    model, variables, x = cancelling
    literal = Composite(rules=((nn.Conv, rules.WPlus()),), sign_aware=False, name="literal_wplus")
    with pytest.raises(NumericsError, match=r"literal_wplus.*not finite.*layer 'body_\d'"):
        cj.explain(model, variables, x, [cj.ClassTarget(0, 1, 0, contrast="none")], method=literal)


def test_the_same_rules_made_sign_aware_stay_finite_and_bounded(cancelling):
    model, variables, x = cancelling
    aware = Composite(rules=((nn.Conv, rules.WPlus()),), name="aware_wplus")
    R = cj.explain(model, variables, x, [cj.ClassTarget(0, 1, 0, contrast="none")], method=aware)
    assert np.all(np.isfinite(R)) and 0 < np.abs(R).sum() <= 1.0 + 1e-5


# ---- the recipe on torchvision's SSDlite320 ----------------------------------------


@pytest.mark.torch
@pytest.mark.slow
def test_torchvision_ssdlite_with_calibrated_signed_weights_conserves_in_every_source():
    """torchvision's ssdlite320_mobilenet_v3_large, random weights, BN statistics calibrated
    on random images, gammas 1 + 0.6 N(0, 1), every beta, running mean and head bias zero,
    converted as it is (BatchNorm kept, the converter's default): LRP-ab must sum to 1 in
    every source. Before the sign-aware rules and BatchNorm's pass-through, 5 of 6 targets
    were NaN and the sixth summed to 1.8e37 (this recipe on the previous commit)."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = tv.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    m.train()
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration batches
        for _ in range(3):
            m.head(list(m.backbone(torch.rand(4, 3, 320, 320) * 2 - 1).values()))
        for bn in bns:
            bn.weight.copy_(1 + 0.6 * torch.randn_like(bn.weight))
            bn.bias.zero_()
            bn.running_mean.zero_()
        for name, p in m.head.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    m.eval()
    model, variables, meta = cj.convert_torchvision_ssdlite({k: v.numpy() for k, v in m.state_dict().items()})
    assert model.batchnorm
    x = cj.preprocess(np.random.default_rng(0).integers(0, 256, (320, 320, 3)).astype(np.uint8), meta)
    cls, _ = model.apply(variables, x)
    assert 1.0 < np.abs(np.asarray(cls)).max() < 100  # finite, of a trained model's size
    cfg = meta.config
    anchors = [central_anchor(cfg, k) for k in range(cfg.num_sources)]
    R, flow = cj.relevance_flow(
        model, variables, x, [cj.ClassTarget(0, a, 1) for a in anchors], method="lrp_ab", meta=meta
    )
    assert np.all(np.isfinite(R))
    np.testing.assert_allclose(R.reshape(len(R), -1).sum(1), 1.0, atol=1e-3)
    for k, v in flow.items():
        assert np.all(np.isfinite(v)) and np.all(v[:, 1] <= 1.0 + 1e-3), (k, v[:, 1])
    cuts = [flow[k][1, 1] for k in trunk(flow)]
    assert all(cuts[i] <= cuts[i + 1] * (1 + 1e-3) + 1e-6 for i in range(len(cuts) - 1)), cuts


def test_half_precision_variables_are_explained_as_their_float32_values():
    """float16 / bfloat16 variables (a bare TypeError from XLA before) are explained exactly
    as the same values cast to float32 by hand."""
    model, variables, meta = cj.load_pretrained()
    S = meta.config.image_size
    x = cj.preprocess(np.random.default_rng(5).integers(0, 256, (S, S, 3)).astype(np.uint8), meta)
    t = [cj.ClassTarget(0, 100, 1)]
    for dtype in (jnp.float16, jnp.bfloat16):
        half = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
        by_hand = jax.tree.map(lambda a: np.asarray(a, np.float32), half)
        np.testing.assert_array_equal(
            cj.explain(model, half, x, t, method="crp", meta=meta),
            cj.explain(model, by_hand, x, t, method="crp", meta=meta),
        )
