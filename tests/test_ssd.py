"""The detector module: SSD300's exact architecture, smaller variants, names, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax.errors import ConfigError, InputError
from crp_jax.ssd import SSD, L2Norm, SSDConfig
from crp_jax.ssd.build import init_variables


def _param_shapes(cfg):
    S = cfg.image_size
    shapes = jax.eval_shape(SSD(cfg).init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, S, S, 3), jnp.float32))
    return {"/".join(k.key for k in p[1:]): v.shape for p, v in jax.tree_util.tree_leaves_with_path(shapes)}


def _conv(cin, cout, k=3):
    return k * k * cin * cout + cout


def test_ssd300_parameter_count_by_hand():
    """26,285,486 parameters at 21 classes (the torchvision ssd300_vgg16 count), rebuilt
    layer by layer from the paper's architecture."""
    vgg = [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    n = sum(_conv(a, b) for a, b in vgg)
    n += 512  # L2Norm scale
    n += _conv(512, 1024) + _conv(1024, 1024, 1)  # conv6 (dilated 3x3), conv7 (1x1)
    for cin, mid, out in [(1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)]:
        n += _conv(cin, mid, 1) + _conv(mid, out)
    src_ch, per = [512, 1024, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4]
    n += sum(_conv(c, a * 21) + _conv(c, a * 4) for c, a in zip(src_ch, per))
    assert n == 26_285_486
    shapes = _param_shapes(SSDConfig.ssd300_vgg16(21))
    assert sum(int(np.prod(s)) for s in shapes.values()) == n


def test_ssd300_layers_shapes_and_names():
    cfg = SSDConfig.ssd300_vgg16(21)
    shapes = _param_shapes(cfg)
    assert shapes["conv1_1/kernel"] == (3, 3, 3, 64)
    assert shapes["conv6/kernel"] == (3, 3, 512, 1024) and shapes["conv7/kernel"] == (1, 1, 1024, 1024)
    assert shapes["l2norm/scale"] == (512,)
    assert shapes["cls_0/kernel"] == (3, 3, 512, 4 * 21) and shapes["loc_5/kernel"] == (3, 3, 256, 16)
    assert cfg.feature_sizes() == (38, 19, 10, 5, 3, 1)
    assert cfg.num_anchors() == 8732


def test_ssd300_output_shapes():
    cfg = SSDConfig.ssd300_vgg16(21)
    model = SSD(cfg)
    S = jax.ShapeDtypeStruct((2, 300, 300, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), S)
    cls, loc = jax.eval_shape(model.apply, variables, S)
    assert cls.shape == (2, 8732, 21) and loc.shape == (2, 8732, 4)


def test_small_variant_runs_and_keeps_every_layer_type():
    cfg = SSDConfig.small(num_classes=7, image_size=64, width=0.125)
    model = SSD(cfg)
    v = init_variables(model, 0)
    names = set(v["params"])
    assert {"conv1_1", "conv6", "conv7", "l2norm", "conv8_2", "cls_0", "loc_3"} <= names
    assert float(v["params"]["l2norm"]["scale"][0]) == 20.0
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32))
    cls, loc = jax.jit(model.apply)(v, x)
    assert cls.shape == (2, cfg.num_anchors(), 7) and loc.shape == (2, cfg.num_anchors(), 4)
    assert np.isfinite(np.asarray(cls)).all()


def test_l2norm_by_hand_and_zero_position():
    x = np.zeros((1, 1, 2, 3), np.float32)
    x[0, 0, 0] = [3.0, 0.0, 4.0]  # norm 5; position 1 is all zero
    m = L2Norm(3, scale_init=20.0)
    v = m.init(jax.random.PRNGKey(0), x)
    y = np.asarray(m.apply(v, x))
    np.testing.assert_allclose(y[0, 0, 0], [12.0, 0.0, 16.0], rtol=1e-6)
    assert np.all(y[0, 0, 1] == 0)
    g = jax.grad(lambda x: m.apply(v, x).sum())(jnp.asarray(x))
    assert np.isfinite(np.asarray(g)).all()


def test_config_errors_and_round_trip():
    with pytest.raises(ConfigError, match="unknown config name 'ssd512'"):
        SSDConfig.from_name("ssd512")
    with pytest.raises(ConfigError, match="num_classes"):
        SSDConfig(num_classes=1)
    with pytest.raises(ConfigError, match="too small"):
        SSDConfig.small(num_classes=3, image_size=64, num_sources=5)
    with pytest.raises(ConfigError, match="aspect_ratios"):
        SSDConfig(aspect_ratios=((2,),))
    cfg = SSDConfig.ssd300_vgg16_ssdpytorch(5)
    assert SSDConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown SSDConfig fields \['widht'\]"):
        SSDConfig.from_dict({**cfg.to_dict(), "widht": 0.5})
    assert SSDConfig.from_name("ssd300_vgg16", 4) == SSDConfig.ssd300_vgg16(4)


@pytest.mark.parametrize(
    "shape,dtype,match",
    [
        ((300, 300, 3), np.float32, "rank 4"),
        ((1, 300, 300, 4), np.float32, "3 channels"),
        ((1, 299, 300, 3), np.float32, "300x300"),
        ((0, 300, 300, 3), np.float32, "empty batch"),
        ((1, 300, 300, 3), np.uint8, "floating point"),
    ],
)
def test_model_rejects_bad_images(shape, dtype, match):
    cfg = SSDConfig.ssd300_vgg16(21)
    model = SSD(cfg)
    S = jax.ShapeDtypeStruct((1, 300, 300, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), S)
    with pytest.raises(InputError, match=match):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(shape, dtype))
