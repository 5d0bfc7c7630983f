"""SSDlite as a model people train, save and load: the reduced config, the BatchNorm-free
initialiser, the training preset, checkpoints of the folded form, load_pretrained by name.

The shipped SSDlite's quality (mAP on held-out scenes) is checked in
tests/test_evaluate.py next to the default model's.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

import crp_jax as cj
from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd import SSDConfig
from crp_jax.ssd.build import build_detector, init_variables
from crp_jax.ssd.io import load_pretrained, load_weights, save_weights
from crp_jax.ssd.meta import Meta
from crp_jax.ssd.ssdlite import SSDLite, random_variables
from crp_jax.training import TrainConfig, train

TINY = SSDConfig.ssdlite_small(num_classes=7, image_size=64, width=0.25)


def test_ssdlite_small_config_has_four_sources_at_strides_16_to_128():
    cfg = SSDConfig.ssdlite_small(num_classes=7)
    assert cfg.backbone == "mobilenet_v3_large" and cfg.image_size == 256
    assert cfg.feature_sizes() == (16, 8, 4, 2)
    assert cfg.source_steps() == (16.0, 32.0, 64.0, 128.0)
    # 6 default boxes per cell (two aspect-ratio pairs, as ssdlite320)
    assert cfg.num_anchors() == 6 * (256 + 64 + 16 + 4)
    assert SSDConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="2 to 6 sources"):
        SSDConfig.ssdlite_small(num_classes=7, num_sources=7)


def test_build_detector_picks_the_module_by_backbone():
    assert type(build_detector(SSDConfig.small(num_classes=7))).__name__ == "SSD"
    m = build_detector(TINY)
    assert isinstance(m, SSDLite) and not m.batchnorm
    assert build_detector(TINY, batchnorm=True).batchnorm


def _capture(model, variables, x, path):
    """``(input, output)`` of the submodule at ``path`` (a tuple of names)."""
    seen = {}

    def hook(next_fun, args, kwargs, ctx):
        out = next_fun(*args, **kwargs)
        if ctx.method_name == "__call__" and tuple(ctx.module.path) == path:
            seen["in"], seen["out"] = args[0], out
        return out

    with nn.intercept_methods(hook):
        model.apply(variables, x)
    return seen["in"], seen["out"]


def test_initialiser_starts_residual_blocks_as_the_identity_and_keeps_activations_of_order_one():
    model = build_detector(TINY)
    variables = init_variables(model, seed=3)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    # block_2 is 24 -> 24 channels with stride 1 (scaled by the width): it has a residual add
    x_in, (y, _expansion) = _capture(model, variables, x, ("block_2",))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x_in))
    # a block without a residual (stride 2) is not the identity
    x_in, (y, _) = _capture(model, variables, x, ("block_3",))
    assert y.shape != x_in.shape
    # He scaling: activations neither vanish nor explode through the 15 blocks
    outs = [_capture(model, variables, x, (name,))[1] for name in ("block_12", "last", "extra_1")]
    stds = [float(np.std(np.asarray(o[0] if isinstance(o, tuple) else o))) for o in outs]
    assert all(0.05 < s < 20.0 for s in stds), stds
    # depthwise kernels: fan-in is kh * kw (one input channel per group)
    k = np.asarray(variables["params"]["block_3"]["dw"]["conv"]["kernel"])
    assert k.shape[2] == 1
    assert 0.7 < k.std() / np.sqrt(2.0 / (k.shape[0] * k.shape[1])) < 1.3
    # same seed, same numbers; the initialiser refuses the BatchNorm form
    again = init_variables(model, seed=3)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, again)
    with pytest.raises(ConfigError, match="folded"):
        init_variables(build_detector(TINY, batchnorm=True), seed=0)


def test_training_preset_ssdlite_and_result_dict():
    cfg = TrainConfig.preset("ssdlite")
    assert cfg.backbone == "mobilenet_v3_large"
    assert cfg.model_config().backbone == "mobilenet_v3_large"
    assert cfg.meta().config == cfg.model_config()
    assert cfg.result_dict()["backbone"] == "mobilenet_v3_large"
    # VGG runs keep the settings dict (and so the default checkpoint folder) of before
    assert "backbone" not in TrainConfig().result_dict()
    assert TrainConfig.preset("default") == TrainConfig()
    assert TrainConfig.preset("ssdlite", steps=7).steps == 7
    with pytest.raises(ConfigError, match="unknown training preset 'resnet'"):
        TrainConfig.preset("resnet")
    with pytest.raises(ConfigError, match="backbone"):
        TrainConfig(backbone="resnet")


def test_a_few_ssdlite_steps_lower_the_loss_and_the_result_saves_and_loads(tmp_path):
    cfg = TrainConfig.preset(
        "ssdlite", image_size=64, width=0.25, steps=12, warmup_steps=2, batch_size=4, progress=False, log_interval=1
    )
    history: list = []
    model, variables, meta = train(cfg, history=history, log=lambda s: None)
    losses = [h["step_loss"] for h in history if "step_loss" in h]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < losses[0], losses
    path = save_weights(tmp_path / "lite", variables, meta)
    for loaded in (load_weights(path), load_pretrained(path)):
        m2, v2, meta2 = loaded
        assert isinstance(m2, SSDLite) and not m2.batchnorm and meta2 == meta
        x = cj.preprocess(np.full((1, 40, 40, 3), 128, np.uint8), meta)
        a, b = model.apply(variables, x), m2.apply(v2, x)
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_saving_an_unfolded_ssdlite_says_to_fold_it_first(tmp_path):
    cfg = dataclasses.replace(TINY, num_classes=3)
    model = SSDLite(cfg, batchnorm=True)
    variables = random_variables(model)
    meta = Meta(cfg, ("background", "a", "b"), mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(CheckpointError, match="fold_batchnorm"):
        save_weights(tmp_path / "w", variables, meta)
    folded_model, folded = cj.fold_batchnorm(model, variables)
    path = save_weights(tmp_path / "w", folded, meta)
    m2, v2, _ = load_weights(path)
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(m2.apply(v2, x)[0]), np.asarray(model.apply(variables, x)[0]), rtol=1e-4, atol=1e-4
    )


def test_load_pretrained_by_name_and_its_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("CRP_JAX_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match="crp-jax train --model ssdlite"):
        load_pretrained("ssdlite")
    with pytest.raises(CheckpointError, match="no shipped model named 'yolo'.*'ssdlite'"):
        load_pretrained("yolo")
    # a name that is a file is a path
    cfg = TrainConfig.preset("ssdlite", image_size=64, width=0.25)
    model = build_detector(cfg.model_config())
    save_weights(tmp_path / "ssdlite", init_variables(model, 0), cfg.meta())
    m, _, meta = load_pretrained("ssdlite")
    assert isinstance(m, SSDLite) and meta.config.image_size == 64


def test_every_shipped_model_name_has_a_training_preset_and_a_file():
    # ssd.io may not import training, so the names live in two places: keep them equal
    from crp_jax.ssd.io import SHIPPED_MODELS, default_weights_dir
    from crp_jax.training import TRAIN_PRESETS

    assert set(SHIPPED_MODELS) == set(TRAIN_PRESETS)
    for name in SHIPPED_MODELS:
        assert (default_weights_dir() / f"{name}.msgpack").is_file(), name
