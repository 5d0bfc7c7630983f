"""SSDlite320-MobileNetV3: config and layout, the BatchNorm-folding canonizer, converter errors.

Parity with torchvision itself is in tests/test_parity_ssdlite.py (needs torch); nothing
here imports torch: state dicts are built from the key map with numpy arrays.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import traverse_util

import crp_jax as cj
from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd import SSDConfig
from crp_jax.ssd.anchors import central_anchor
from crp_jax.ssd.convert import ssdlite_key_map
from crp_jax.ssd.fold import fold_batchnorm
from crp_jax.ssd.io import expected_shapes
from crp_jax.ssd.ssdlite import SSDLite, random_variables

# A reduced SSDlite (every layer type, all six sources) that runs in seconds on a CPU.
SMALL = dataclasses.replace(SSDConfig.ssdlite320_mobilenet_v3_large(4), image_size=96, width=0.35)


def test_ssdlite320_config_has_torchvisions_3234_anchors_on_six_sources():
    cfg = SSDConfig.ssdlite320_mobilenet_v3_large(91)
    assert cfg.feature_sizes() == (20, 10, 5, 3, 2, 1)
    assert cfg.anchors_per_cell == (6,) * 6
    assert cfg.num_anchors() == 6 * (400 + 100 + 25 + 9 + 4 + 1) == 3234
    assert cj.default_boxes(cfg).shape == (3234, 4)
    # torchvision's DefaultBoxGenerator(min_ratio=0.2, max_ratio=0.95): linear scales, then 1
    np.testing.assert_allclose(cfg.scales, [0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0], atol=1e-12)
    assert SSDConfig.from_dict(cfg.to_dict()) == cfg
    assert SSDConfig.from_name("ssdlite320_mobilenet_v3_large", 5).num_classes == 5


def test_model_outputs_one_row_per_default_box():
    model = SSDLite(SMALL)
    cls, loc = jax.eval_shape(model.apply, random_variables(model), jax.ShapeDtypeStruct((2, 96, 96, 3), np.float32))
    assert cls.shape == (2, SMALL.num_anchors(), 4) and loc.shape == (2, SMALL.num_anchors(), 4)


def test_ssdlite_config_checks_extra_blocks_and_backbone():
    with pytest.raises(ConfigError, match="mid == out // 2"):
        dataclasses.replace(SMALL, extras=((100, 512, 2, 1),) + SMALL.extras[1:])
    with pytest.raises(ConfigError, match="backbone 'resnet'"):
        dataclasses.replace(SMALL, backbone="resnet")


def test_layers_declare_their_relevance_kinds():
    model = SSDLite(SMALL)
    kinds = {}

    def record(next_fun, args, kwargs, context):
        kind = getattr(type(context.module), "relevance_kind", None)
        if kind is not None and context.method_name == "__call__":
            kinds.setdefault(kind, set()).add("/".join(context.module.path))
        return next_fun(*args, **kwargs)

    import flax.linen as nn

    with nn.intercept_methods(record):
        jax.eval_shape(model.apply, random_variables(model), jax.ShapeDtypeStruct((1, 96, 96, 3), np.float32))
    assert "stem/act" in kinds["activation"] and "block_12/se/gate_act" in kinds["activation"]
    assert "block_2/add" in kinds["add"] and "block_1/add" not in kinds["add"]  # block 1 is strided
    assert "block_3/se/gate" in kinds["gate"]
    # which convs see negative values is read from the graph, not declared
    # (tests/test_bounded_relevance.py)
    assert set(kinds) == {"activation", "add", "gate"}


def test_folding_batchnorm_keeps_outputs_with_negative_gammas():
    model = SSDLite(SMALL)
    variables = random_variables(model, seed=1, negative_gamma=0.3)
    gammas = np.concatenate(
        [v.ravel() for k, v in traverse_util.flatten_dict(variables["params"], sep="/").items() if k.endswith("scale")]
    )
    assert (gammas < 0).mean() > 0.2  # folding really flips weight signs
    x = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype(np.float32)
    folded, fvars = fold_batchnorm(model, variables)
    assert not folded.batchnorm and set(fvars) == {"params"}
    ref = model.apply(variables, x)
    got = folded.apply(fvars, x)
    for r, g in zip(ref, got):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        assert np.max(np.abs(r)) > 1.0  # outputs of a useful size, not a vanishing signal
        assert np.max(np.abs(g - r)) <= 1e-5 * np.max(np.abs(r)), np.max(np.abs(g - r)) / np.max(np.abs(r))


def test_fold_of_one_conv_matches_the_formula():
    """w' = w gamma / sqrt(var + eps), b' = beta - mu gamma / sqrt(var + eps), by hand."""
    model = SSDLite(SMALL)
    variables = random_variables(model, seed=2)
    _, fvars = fold_batchnorm(model, variables)
    p, st = variables["params"]["stem"], variables["batch_stats"]["stem"]
    s = p["bn"]["scale"].astype(np.float64) / np.sqrt(st["bn"]["var"].astype(np.float64) + 1e-3)
    np.testing.assert_allclose(fvars["params"]["stem"]["conv"]["kernel"], p["conv"]["kernel"] * s, rtol=1e-6)
    np.testing.assert_allclose(
        fvars["params"]["stem"]["conv"]["bias"], p["bn"]["bias"] - st["bn"]["mean"] * s, rtol=1e-5
    )


def test_fold_rejects_a_folded_model_and_a_vgg_model():
    model = SSDLite(SMALL)
    folded, fvars = fold_batchnorm(model, random_variables(model))
    with pytest.raises(ConfigError, match="batchnorm=False"):
        fold_batchnorm(folded, fvars)
    with pytest.raises(ConfigError, match="SSD"):
        fold_batchnorm(cj.SSD(SSDConfig.small(3)), {})


# ---- converter errors ----------------------------------------------------------------------


def _numpy_state_dict(num_classes: int = 5) -> dict:
    cfg = SSDConfig.ssdlite320_mobilenet_v3_large(num_classes)
    shapes = expected_shapes(cfg, batchnorm=True)
    sd = {}
    for tkey, okey in ssdlite_key_map().items():
        s = shapes[okey]
        sd[tkey] = np.zeros((s[3], s[2], s[0], s[1]) if okey.endswith("kernel") else s, np.float32)
    return sd


def test_converter_reads_classes_from_the_heads_and_keeps_batch_stats():
    model, variables, meta = cj.convert_torchvision_ssdlite(_numpy_state_dict(5))
    assert meta.num_classes == 5 and meta.config.num_anchors() == 3234
    assert meta.mean == (0.5, 0.5, 0.5) and meta.std == (0.5, 0.5, 0.5)
    assert "batch_stats" in variables and model.batchnorm
    model, variables, _ = cj.convert_torchvision_ssdlite(_numpy_state_dict(5), fold=True)
    assert set(variables) == {"params"} and not model.batchnorm


def test_converter_lists_missing_extra_and_misshaped_keys():
    sd = _numpy_state_dict()
    del sd["backbone.features.0.5.block.2.fc1.weight"]
    sd["backbone.features.0.0.0.extra_thing"] = np.zeros(3, np.float32)
    sd["backbone.extra.1.1.0.weight"] = np.zeros((128, 1, 5, 5), np.float32)
    sd["backbone.features.0.0.1.num_batches_tracked"] = np.zeros((), np.float32)  # ignored, as torch's
    with pytest.raises(CheckpointError) as e:
        cj.convert_torchvision_ssdlite(sd)
    msg = str(e.value)
    assert "missing keys (1): backbone.features.0.5.block.2.fc1.weight" in msg
    assert "unexpected keys (1): backbone.features.0.0.0.extra_thing" in msg
    assert "backbone.extra.1.1.0.weight expected (128, 1, 3, 3) found (128, 1, 5, 5)" in msg


def test_converters_name_the_other_converter_for_the_other_architecture():
    from crp_jax.ssd.convert import torch_key_map

    vgg = {k: np.zeros(1, np.float32) for k in torch_key_map("torchvision")}
    with pytest.raises(CheckpointError, match="convert_torchvision_ssd"):
        cj.convert_torchvision_ssdlite(vgg)
    with pytest.raises(CheckpointError, match="convert_torchvision_ssdlite"):
        cj.convert_torchvision_ssd(_numpy_state_dict())
    # the dispatcher (and `crp-jax convert`) recognises SSDlite and converts it, folded
    model, variables, _ = cj.ssd.convert.convert_state_dict(_numpy_state_dict())
    assert isinstance(model, SSDLite) and not model.batchnorm and "batch_stats" not in variables
    with pytest.raises(CheckpointError, match="convert_torchvision_ssdlite"):
        cj.ssd.convert.convert_state_dict(_numpy_state_dict(), "torchvision")


# ---- relevance presets on SSDlite ----------------------------------------------------------


@pytest.fixture(scope="module")
def folded_zero_bias():
    """The reduced SSDlite, BN folded, every bias then set to zero; one random image."""
    from crp_jax.ssd.meta import Meta, default_class_names

    model = SSDLite(SMALL)
    folded, fvars = fold_batchnorm(model, random_variables(model, seed=3))
    flat = traverse_util.flatten_dict(fvars, sep="/")
    flat = {k: (np.zeros_like(v) if k.endswith("bias") else v) for k, v in flat.items()}
    meta = Meta(SMALL, default_class_names(SMALL.num_classes), (0.5,) * 3, (0.5,) * 3)
    img = np.random.default_rng(0).integers(0, 256, (96, 96, 3)).astype(np.uint8)
    return folded, traverse_util.unflatten_dict(flat, sep="/"), meta, cj.preprocess(img, meta)


def test_relevance_is_conserved_in_every_source_of_folded_ssdlite(folded_zero_bias):
    """LRP-ab one-hot sums to 1; CRP's class contrast and alpha1beta1 localization targets
    sum to 0, within 1e-3 of sum |R|: through w+ with contributions (signed inputs), z^B at
    the stem, pass-through activations and gates, and proportional residual adds."""
    model, variables, meta, x = folded_zero_bias
    anchors = [central_anchor(SMALL, k) for k in range(SMALL.num_sources)]
    one_hot = cj.explain(model, variables, x, [cj.ClassTarget(0, a, 2) for a in anchors], method="lrp_ab", meta=meta)
    contrast = cj.explain(
        model, variables, x, [cj.ClassTarget(0, a, 2, contrast="others") for a in anchors], method="crp", meta=meta
    )
    # Float32 floor: rounding errors scale with the relevance flowing through the network
    # (the initial mass: 1 for one-hot, 2 for a contrast), not with what reaches the input.
    # On random weights a deep source's contrast nearly cancels on the way down (source 5:
    # sum |R| ~ 6e-5 of its initial 2, benchmarks/conservation_ssdlite.py), below what 1e-3
    # of sum |R| can resolve in float32; there the floor 1e-6 of the initial mass applies.
    for name, R, init, mass in (("lrp_ab", one_hot, 1.0, 1.0), ("crp", contrast, 0.0, 2.0)):
        sums = R.reshape(len(R), -1).sum(1).astype(np.float64)
        scale = np.abs(R).reshape(len(R), -1).sum(1)
        assert np.all(np.isfinite(R)) and np.all(scale > 0), name
        for i, (s, a) in enumerate(zip(sums, scale)):
            assert abs(s - init) <= max(1e-3 * a, 1e-6 * mass), (name, i, s, a)
        # sources 0-4: the criterion itself, with no floor
        assert np.all(np.abs(sums[:5] - init) <= 1e-3 * scale[:5]), (name, sums, scale)
    # alpha1beta1 at a localization head: + and - relevance of size 1 largely cancel on the
    # way down (sum |R| at the input can be 1e-4), so the float32 error is measured against
    # the initial relevance (|s| = 1) instead.
    loc = cj.explain(
        model, variables, x, [cj.LocTarget(0, anchors[0], "cx", 1), cj.LocTarget(0, anchors[5], "h", -1)], "crp", meta
    )
    assert np.all(np.abs(loc.reshape(2, -1).sum(1)) <= 1e-4)


@pytest.mark.parametrize("method", ["crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input"])
def test_every_preset_explains_ssdlite(folded_zero_bias, method):
    model, variables, meta, x = folded_zero_bias
    R = cj.explain(
        model, variables, x, [cj.ClassTarget(0, 5, 1), cj.LocTarget(0, 200, "w", 1)], method=method, meta=meta
    )
    assert R.shape == (2, 96, 96, 3) and np.all(np.isfinite(R)) and np.all(np.abs(R).sum((1, 2, 3)) > 0)


def test_gradient_preset_is_the_true_input_gradient_of_ssdlite(folded_zero_bias):
    model, variables, meta, x = folded_zero_bias
    anchor, k = 7, 1
    R = cj.explain(model, variables, x, [cj.ClassTarget(0, anchor, k, contrast="none")], method="gradient", meta=meta)
    g = jax.grad(lambda v: model.apply(variables, v)[0][0, anchor, k])(x)
    # float32: explain's batched backward and jax.grad sum in other orders through 15 blocks
    np.testing.assert_allclose(R[0], np.asarray(g[0]), rtol=1e-4, atol=1e-5 * np.abs(g).max())


def test_central_anchor_is_the_first_box_of_each_sources_middle_cell():
    cfg = SSDConfig.ssdlite320_mobilenet_v3_large(5)
    # by hand: source 0 is 20x20 with 6 boxes per cell; the last source's only cell ends the list
    assert central_anchor(cfg, 0) == (10 * 20 + 10) * 6 == 1260
    assert central_anchor(cfg, 5) == 3234 - 6
    boxes = cj.default_boxes(cfg)
    for k, f in enumerate(cfg.feature_sizes()):
        cx, cy = boxes[central_anchor(cfg, k), :2]
        np.testing.assert_allclose([cx, cy], [(f // 2 + 0.5) / f] * 2, atol=1e-6)
    with pytest.raises(ConfigError, match="source"):
        central_anchor(cfg, 6)
