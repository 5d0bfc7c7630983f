"""Composites: which rule each layer gets (first match wins), every preset's layer -> rule map
on SSD300's module paths against a hand-written table, and the stabiliser's sign(0)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crp_jax.relevance import Composite, rules
from crp_jax.relevance.composite import get_composite
from crp_jax.relevance.linear import DenseOp
from crp_jax.relevance.rules import stabilize
from crp_jax.ssd import SSD, Meta, SSDConfig
from crp_jax.ssd.meta import TORCHVISION_MEAN, TORCHVISION_STD, default_class_names
from crp_jax.ssd.model import L2Norm


def _rules_by_path(apply_fn, variables, x, comp: Composite) -> dict[str, tuple[type, object]]:
    """``path -> (module type, comp.rule_for(module))`` for every Conv/Dense/L2Norm the model
    calls, recorded under ``jax.eval_shape`` (traced, never compiled)."""
    seen = {}

    def run(variables, x):
        def record(next_fun, args, kwargs, context):
            m = context.module
            if context.method_name == "__call__" and isinstance(m, (nn.Conv, nn.Dense, L2Norm)):
                # INPUT_LAYER matches the layer that receives the model input itself
                seen["/".join(m.path)] = (type(m), comp.rule_for(m, reads_input=args[0] is x))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            return apply_fn(variables, x)

    jax.eval_shape(run, variables, x)
    return seen


class _Net(nn.Module):
    """One layer per selector kind: names a glob can match, types a class selector can."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(2, (1, 1), name="conv1_1")(x)
        x = L2Norm(2, name="l2norm")(x)
        c = nn.Conv(2, (1, 1), name="cls_0")(x)
        l = nn.Conv(2, (1, 1), name="loc_0")(x)
        d = nn.Dense(2, name="fc")(x)
        return c + l + d


def _net_paths(comp):
    x = jax.ShapeDtypeStruct((1, 3, 3, 2), jnp.float32)
    variables = jax.eval_shape(_Net().init, jax.random.key(0), x)
    return {p: r for p, (_, r) in _rules_by_path(_Net().apply, variables, x, comp).items()}


A, B, C = rules.WPlus(), rules.Epsilon(0.5), rules.Flat()


def test_rule_for_first_match_wins_glob_before_type():
    got = _net_paths(Composite(rules=(("cls_*", A), (nn.Conv, B), ("loc_*", C))))
    # cls_0 matches the glob first; loc_0 reaches nn.Conv before its own glob; Dense and
    # L2Norm match nothing and keep their gradient (None)
    assert got == {"conv1_1": B, "l2norm": None, "cls_0": A, "loc_0": B, "fc": None}


def test_rule_for_first_match_wins_type_before_glob():
    got = _net_paths(Composite(rules=((nn.Conv, B), ("cls_*", A), (nn.Dense, C), ("fc", A))))
    assert got == {"conv1_1": B, "l2norm": None, "cls_0": B, "loc_0": B, "fc": C}


def test_rule_for_glob_matches_whole_path_case_sensitively():
    got = _net_paths(Composite(rules=(("conv1", A), ("CLS_*", B), ("*_0", C), ("l2*", A))))
    # "conv1" is not a prefix match of "conv1_1"; globs are case-sensitive
    assert got == {"conv1_1": None, "l2norm": A, "cls_0": C, "loc_0": C, "fc": None}


# ---- every preset on SSD300's module paths --------------------------------------------------

# SSD300's layers, written out from the architecture (VGG16 to conv5_3, conv6, conv7, the
# extra layers, L2Norm on conv4_3, one cls and one loc head per source).
SSD300_CONVS = (
    ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3"]
    + ["conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "conv6", "conv7"]
    + [f"conv{i}_{j}" for i in (8, 9, 10, 11) for j in (1, 2)]
)
HEADS = [f"{h}_{k}" for k in range(6) for h in ("cls", "loc")]


def _expected(preset: str, meta) -> dict[str, object]:
    """The hand-written layer -> rule table of each preset (None: the layer's gradient)."""
    zbox = rules.ZBox(*meta.pixel_bounds)
    table = {}
    for name in SSD300_CONVS + HEADS:
        if preset == "crp":
            if name == "conv1_1":
                table[name] = zbox
            elif name.startswith("cls_"):
                table[name] = rules.WPlus()
            elif name.startswith("loc_"):
                table[name] = rules.AlphaBeta(1.0, 1.0)
            else:
                table[name] = rules.WPlus()
        elif preset == "lrp_ab":
            table[name] = zbox if name == "conv1_1" else rules.WPlus()
        elif preset == "lrp_eps":
            table[name] = rules.Epsilon
        else:  # gradient, gradient_x_input
            table[name] = None
    table["l2norm"] = None if preset.startswith("gradient") else rules.PassThrough()
    return table


@pytest.fixture(scope="module")
def ssd300():
    cfg = SSDConfig.ssd300_vgg16(21)
    model = SSD(cfg)
    x = jax.ShapeDtypeStruct((1, 300, 300, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    meta = Meta(cfg, default_class_names(21), TORCHVISION_MEAN, TORCHVISION_STD)
    return model, variables, x, meta


@pytest.mark.parametrize("preset", ["crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input"])
def test_preset_layer_rule_map_on_ssd300_paths(ssd300, preset):
    model, variables, x, meta = ssd300
    comp = get_composite(preset, meta)
    got = _rules_by_path(model.apply, variables, x, comp)
    want = _expected(preset, meta)
    assert sorted(got) == sorted(want)  # every layer, no other
    for path, (_, rule) in got.items():
        expected = want[path]
        if isinstance(expected, type):  # lrp_eps: the rule's kind (its epsilon is a setting)
            assert type(rule) is expected, path
        else:
            assert rule == expected, (path, rule, expected)
    assert comp.times_input == (preset == "gradient_x_input")
    assert comp.contrast == ("others" if preset == "crp" else "none")


# ---- the stabiliser: sign(0) = +1 -----------------------------------------------------------


def test_stabilize_by_hand_with_sign_of_zero_positive():
    z = jnp.asarray([0.0, -0.0, 2.0, -2.0, 1e-30, -1e-30], jnp.float32)
    got = np.asarray(stabilize(z, 0.5))
    np.testing.assert_array_equal(got, [0.5, 0.5, 2.5, -2.5, 0.5, -0.5])
    assert got.dtype == np.float32


def test_epsilon_at_a_cancelling_denominator_by_hand():
    # Dense layer, inputs (1, 1), weights (2, -2), no bias: z = 0 exactly, so the denominator
    # is +eps = 0.5 and R_i = x_i w_i / 0.5 * R = (4R, -4R); with sign(0) = -1 it would flip.
    x = jnp.asarray([[1.0, 1.0]], jnp.float32)
    w = jnp.asarray([[2.0], [-2.0]], jnp.float32)
    R_in = jax.vjp(lambda x: rules.Epsilon(0.5)(DenseOp(), x, w), x)[1](jnp.asarray([[3.0]]))[0]
    np.testing.assert_allclose(np.asarray(R_in), [[12.0, -12.0]])
