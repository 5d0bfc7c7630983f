"""``explain`` against references that share no code with it.

tests/test_engine.py checks ``explain`` against other paths through the same engine (contrast
vs one-hot passes, chunked vs ``relevance_vjp``, device vs host output); a bug shared by both
paths would pass there. Here:

- a two-layer detector written in this file, explained with the "crp" preset, against the
  rules' formulas on explicit float64 matrices (``dense_matrix`` / ``reference_rule`` of
  tests/test_rules.py: no JAX convolution, no autodiff);
- conservation on the shipped model with its biases zeroed: every bias-free rule hands on
  exactly the relevance it receives (up to the stabiliser), so the input relevance sums to
  the initial relevance (1 for one-hot, 0 for a contrast or alpha1beta1);
- ``to_host=False``'s reordering of chunks against each target explained alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_rules import dense_matrix, reference_rule

import crp_jax as cj
from crp_jax.relevance.composite import get_composite

# ---- a detector small enough for explicit matrices ----------------------------------------

S, K, CIN, MID = 6, 3, 3, 4  # 6x6x3 input, 3 classes, 4 channels after the first conv
# (H, W, kernel, strides, padding, dilation) as tests/test_rules.py's CASES
FIRST = (S, S, 3, (1, 1), ((1, 1), (1, 1)), (1, 1))  # conv1_1: 3x3, padding 1
HEAD = (S, S, 3, (2, 2), ((1, 1), (1, 1)), (1, 1))  # heads: 3x3, stride 2 -> 3x3 cells
CELLS = 9  # one default box per cell


@dataclass(frozen=True)
class TinyConfig:
    image_size: int = S
    num_classes: int = K

    def num_anchors(self) -> int:
        return CELLS


class TinyDetector(nn.Module):
    """conv1_1 -> ReLU -> (cls_0, loc_0): ``[B, 6, 6, 3] -> ([B, 9, 3], [B, 9, 4])``."""

    config: TinyConfig

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(MID, (3, 3), padding=1, name="conv1_1")(x))
        cls = nn.Conv(K, (3, 3), strides=2, padding=1, name="cls_0")(h)
        loc = nn.Conv(4, (3, 3), strides=2, padding=1, name="loc_0")(h)
        return cls.reshape(x.shape[0], CELLS, K), loc.reshape(x.shape[0], CELLS, 4)


LOW = np.array([-2.0, -1.5, -1.8])  # pixel bounds per channel, as a Meta would give them
HIGH = np.array([2.2, 2.5, 1.9])


def _tiny():
    rng = np.random.default_rng(4)
    model = TinyDetector(TinyConfig())
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, S, S, CIN), jnp.float32))
    variables = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)
    x = (LOW + rng.uniform(size=(2, S, S, CIN)) * (HIGH - LOW)).astype(np.float32)
    return model, variables, x


def _reference(variables, x_img, cls_vec=None, loc_vec=None, anchor=0):
    """Relevance at the input of one image by the crp preset's rules in float64, the initial
    relevance ``cls_vec`` / ``loc_vec`` at box ``anchor`` (see :func:`reference_from_heads`)."""
    heads = {}
    for head, vec in (("cls_0", cls_vec), ("loc_0", loc_vec)):
        if vec is not None:
            n = len(vec)
            heads[head] = np.zeros(CELLS * n)
            heads[head][anchor * n : (anchor + 1) * n] = vec
    return reference_from_heads(variables, x_img, heads)


def reference_from_heads(variables, x_img, heads: dict):
    """Relevance at the input of one image by the crp preset's rules in float64: w+ at cls_0,
    alpha1beta1 at loc_0, the ReLU's gradient, z^B at conv1_1; ``heads`` maps a head to its
    whole initial relevance ``[CELLS * n]`` (cell-major, as the head's output)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    M1 = dense_matrix(FIRST, p["conv1_1"]["kernel"])
    z1 = x_img.astype(np.float64).ravel() @ M1 + np.tile(p["conv1_1"]["bias"], S * S)
    h = np.maximum(z1, 0.0)
    R_h = np.zeros_like(h)
    for head, spec in (
        ("cls_0", ("wplus", dict(stabilizer=1e-9))),
        ("loc_0", ("alphabeta", dict(alpha=1.0, beta=1.0, stabilizer=1e-9))),
    ):
        if head not in heads:
            continue
        M = dense_matrix(HEAD, p[head]["kernel"])
        R_h += reference_rule(spec, M, None, h, np.tile(p[head]["bias"], CELLS), heads[head])
    R_z1 = R_h * (z1 > 0)  # ReLU passes relevance as its gradient
    low, high = np.tile(LOW, S * S), np.tile(HIGH, S * S)
    R_x = reference_rule(("zbox", dict(stabilizer=1e-9)), M1, None, x_img.ravel(), None, R_z1, low, high)
    return R_x.reshape(S, S, CIN)


def test_explain_crp_matches_float64_matrices_on_a_two_layer_detector():
    model, variables, x = _tiny()
    comp = get_composite("crp", SimpleNamespace(pixel_bounds=(tuple(LOW), tuple(HIGH))))
    targets = [
        cj.ClassTarget(1, 4, 2),  # default contrast of crp: others
        cj.ClassTarget(0, 7, 1, "none"),
        cj.ClassTarget(1, 0, 1, (2,)),
        cj.LocTarget(0, 4, "w", 1),
        cj.LocTarget(1, 8, "cy", -1),
    ]
    R = cj.explain(model, variables, jnp.asarray(x), targets, method=comp, chunk_size=2)
    R_dev = cj.explain(model, variables, jnp.asarray(x), targets, method=comp, chunk_size=2, to_host=False)
    want = [
        _reference(variables, x[1], cls_vec=[-0.5, -0.5, 1.0], anchor=4),  # e_2 - mean(e_0, e_1)
        _reference(variables, x[0], cls_vec=[0.0, 1.0, 0.0], anchor=7),
        _reference(variables, x[1], cls_vec=[0.0, 1.0, -1.0], anchor=0),
        _reference(variables, x[0], loc_vec=[0.0, 0.0, 1.0, 0.0], anchor=4),
        _reference(variables, x[1], loc_vec=[0.0, -1.0, 0.0, 0.0], anchor=8),
    ]
    for i, w in enumerate(want):
        assert np.abs(w).max() > 1e-3, i  # not vacuous
        np.testing.assert_allclose(R[i], w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=str(targets[i]))
        np.testing.assert_allclose(np.asarray(R_dev[i]), w, rtol=1e-4, atol=1e-5 * np.abs(w).max())


# ---- conservation on the shipped model, biases zeroed -------------------------------------


@pytest.fixture(scope="module")
def shipped_no_bias():
    model, variables, meta = cj.load_pretrained()
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if p[-1].key == "bias" else v, variables
    )
    S_ = model.config.image_size
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (S_, S_, 3), dtype=np.uint8)
    x = cj.preprocess(img, meta)
    return model, variables, meta, x


def test_conservation_on_the_shipped_model_without_biases(shipped_no_bias):
    model, variables, meta, x = shipped_no_bias
    cfg = model.config
    sizes, per = cfg.feature_sizes(), cfg.anchors_per_cell
    starts = np.cumsum([0] + [f * f * a for f, a in zip(sizes, per)])
    # the centre cell's first box of every source
    anchors = [int(starts[k] + ((f // 2) * f + f // 2) * per[k]) for k, f in enumerate(sizes)]
    targets = (
        [cj.ClassTarget(0, a, 1, "none") for a in anchors]  # sums to 1
        + [cj.ClassTarget(0, a, 2, "others") for a in anchors]  # contrast: sums to 0
        + [cj.LocTarget(0, a, "cx", 1) for a in anchors]  # alpha1beta1 in crp: sums to 0
    )
    R = cj.explain(model, variables, x, targets, method="crp", meta=meta)
    sums = R.reshape(len(targets), -1).sum(1)
    scale = np.abs(R).reshape(len(targets), -1).sum(1)
    n = len(anchors)
    assert np.all(scale > 0), "every target must reach the input"
    # Without biases the top layers' activations are small (z+ ~ 1e-5 at source 3's class
    # head), so the stabiliser 1e-9 keeps ~1e-4 of the unit: the tolerance of SSD300's test.
    np.testing.assert_allclose(sums[:n], 1.0, rtol=1e-3)
    np.testing.assert_allclose(sums[n:], 0.0, atol=1e-3 * scale[n:].max())
    # lrp_ab (w+ on the loc heads too): the same loc targets now carry their unit
    R_ab = cj.explain(model, variables, x, targets[2 * n :], method="lrp_ab", meta=meta)
    np.testing.assert_allclose(R_ab.reshape(n, -1).sum(1), 1.0, rtol=1e-3)


# ---- to_host=False puts chunks back in target order ----------------------------------------


def test_device_output_in_interleaved_order_equals_each_target_alone():
    model, variables, x = _tiny()
    comp = get_composite("crp", SimpleNamespace(pixel_bounds=(tuple(LOW), tuple(HIGH))))
    x = jnp.asarray(np.concatenate([x, x[::-1] * 0.5]))  # four images
    images = [3, 1, 0, 2, 1, 3, 0, 0, 2]  # interleaved: chunks come back grouped by image
    targets = [cj.ClassTarget(b, (3 * i) % CELLS, 1 + i % 2) for i, b in enumerate(images)]
    dev = cj.explain(model, variables, x, targets, method=comp, chunk_size=2, to_host=False)
    assert isinstance(dev, jax.Array) and dev.shape == (len(targets), S, S, CIN)
    for i, t in enumerate(targets):
        alone = cj.explain(
            model, variables, x[t.image : t.image + 1], [cj.ClassTarget(0, t.anchor, t.cls)], method=comp
        )
        np.testing.assert_allclose(np.asarray(dev[i]), alone[0], rtol=1e-6, atol=1e-7, err_msg=str(t))
        assert np.abs(alone[0]).max() > 0
