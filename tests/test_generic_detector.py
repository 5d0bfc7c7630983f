"""``cj.explain`` on a detector that is not SSD: a two-layer Flax detector written here,
with its own layer names, explained with a custom composite and checked against explicit
float64 matrices of the rules (docs/design.md §2, §3 "Any single-shot detector")."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import crp_jax as cj
from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.relevance import INPUT_LAYER, Composite, rules

H = W = 5
CIN, MID, A_CELL, K = 2, 3, 2, 3
LOW, HIGH = -1.0, 1.5


class TinyDetector(nn.Module):
    """``[B, 5, 5, 2] -> (cls [B, 50, 3], loc [B, 50, 4])``: a 3x3 stem (padding 1) with
    ReLU, then 1x1 class and box heads, two boxes per cell (row, column, box order)."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(MID, (3, 3), padding=((1, 1), (1, 1)), name="stem")(x))
        c = nn.Conv(A_CELL * K, (1, 1), name="head_cls")(h)
        b = nn.Conv(A_CELL * 4, (1, 1), name="head_box")(h)
        B = x.shape[0]
        return c.reshape(B, -1, K), b.reshape(B, -1, 4)


COMPOSITE = Composite(
    rules=(
        (INPUT_LAYER, rules.ZBox(LOW, HIGH)),
        ("head_cls", rules.WPlus()),
        ("head_box", rules.AlphaBeta(1.0, 1.0)),
        (nn.Conv, rules.WPlus()),
    ),
    contrast="others",
    name="tiny",
)


@pytest.fixture(scope="module")
def tiny():
    model = TinyDetector()
    rng = np.random.default_rng(0)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, H, W, CIN)))
    # non-zero biases everywhere, to check that the rules leave them out
    variables = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32)), variables)
    x = rng.uniform(LOW, HIGH, size=(2, H, W, CIN)).astype(np.float32)
    return model, variables, x


def stem_matrix(kernel: np.ndarray) -> np.ndarray:
    """The 3x3, padding-1 convolution as a matrix ``[H*W*CIN, H*W*MID]`` built by loops."""
    M = np.zeros((H * W * CIN, H * W * MID))
    for i in range(H):
        for j in range(W):
            for di in range(3):
                for dj in range(3):
                    si, sj = i + di - 1, j + dj - 1
                    if 0 <= si < H and 0 <= sj < W:
                        for ci in range(CIN):
                            for co in range(MID):
                                M[(si * W + sj) * CIN + ci, (i * W + j) * MID + co] += kernel[di, dj, ci, co]
    return M


def reference(variables, x, anchor: int, cls_coef, loc_coef) -> np.ndarray:
    """Relevance at the input of image ``x`` ``[H, W, CIN]`` in float64, rule by rule."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    xv = x.astype(np.float64).reshape(-1)
    M = stem_matrix(p["stem"]["kernel"])
    h = np.maximum(xv @ M + np.tile(p["stem"]["bias"], H * W), 0)  # [H*W*MID]
    cell, box = divmod(anchor, A_CELL)
    hc = h.reshape(H * W, MID)[cell]  # the head input at the anchor's cell
    eps = 1e-9

    def stab(z):
        return z + np.where(z >= 0, eps, -eps)

    # heads (1x1 convs): relevance at the anchor's K logits / 4 offsets -> the cell's MID units
    wc = p["head_cls"]["kernel"][0, 0][:, box * K : (box + 1) * K]  # [MID, K]
    wl = p["head_box"]["kernel"][0, 0][:, box * 4 : (box + 1) * 4]  # [MID, 4]
    wcp = np.maximum(wc, 0)
    r_cell = hc * (wcp @ (cls_coef / stab(hc @ wcp)))
    wlp, wln = np.maximum(wl, 0), np.minimum(wl, 0)
    r_cell += hc * (wlp @ (loc_coef / stab(hc @ wlp)) - wln @ (loc_coef / stab(hc @ wln)))
    r_mid = np.zeros((H * W, MID))
    r_mid[cell] = r_cell
    r_mid = r_mid.reshape(-1)
    # stem: z^B with bounds LOW/HIGH on every real (unpadded) input
    Mp, Mn = np.maximum(M, 0), np.minimum(M, 0)
    zb = xv @ M - LOW * Mp.sum(0) - HIGH * Mn.sum(0)
    s = r_mid / stab(zb)
    R = xv * (M @ s) - LOW * (Mp @ s) - HIGH * (Mn @ s)
    return R.reshape(H, W, CIN)


def test_explain_on_a_non_ssd_detector_matches_explicit_rule_matrices(tiny):
    model, variables, x = tiny
    targets = [
        cj.ClassTarget(1, 17, 2),  # contrast "others" (the composite's default)
        cj.ClassTarget(0, 3, 0, (1,)),
        cj.LocTarget(0, 49, "w", -1),
        cj.LocTarget(1, 0, "cx", 1),
    ]
    R = cj.explain(model, variables, x, targets, method=COMPOSITE, chunk_size=2)
    assert R.shape == (4, H, W, CIN)
    coefs = [
        (np.array([-0.5, -0.5, 1.0]), np.zeros(4)),
        (np.array([1.0, -1.0, 0.0]), np.zeros(4)),
        (np.zeros(3), np.array([0, 0, -1.0, 0])),
        (np.zeros(3), np.array([1.0, 0, 0, 0])),
    ]
    for t, (tg, (cc, lc)) in enumerate(zip(targets, coefs)):
        ref = reference(variables, x[tg.image], tg.anchor, cc, lc)
        np.testing.assert_allclose(R[t], ref, atol=1e-5 * max(1.0, np.abs(ref).max()), rtol=1e-4)
    # conservation: bias-free rules, so the contrast against all others sums to ~0
    assert np.abs(R[0]).sum() > 1e-3 and abs(R[0].sum()) < 1e-4 * np.abs(R[0]).sum()


def test_box_and_class_counts_come_from_the_outputs(tiny):
    model, variables, x = tiny
    with pytest.raises(cj.TargetError, match="anchor 50 out of range"):
        cj.explain(model, variables, x, [cj.ClassTarget(0, 50, 1)], method=COMPOSITE)
    with pytest.raises(cj.TargetError, match="cls 3 out of range"):
        cj.explain(model, variables, x, [cj.ClassTarget(0, 0, 3)], method=COMPOSITE)


def test_a_model_with_other_outputs_or_wrong_variables_is_refused_by_name(tiny):
    model, variables, x = tiny

    class OneOutput(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(4, (1, 1))(x).reshape(x.shape[0], -1, 4)

    m1 = OneOutput()
    v1 = m1.init(jax.random.PRNGKey(0), x[:1])
    with pytest.raises(ConfigError, match=r"\(cls \[B, A, K\], loc \[B, A, R\]\)"):
        cj.explain(m1, v1, x, [cj.ClassTarget(0, 0, 1)], method=COMPOSITE)
    with pytest.raises(CheckpointError, match="'params'"):
        cj.explain(model, {}, x, [cj.ClassTarget(0, 0, 1)], method=COMPOSITE)
    bad = {"params": {k: v for k, v in variables["params"].items() if k != "head_box"}}
    with pytest.raises(CheckpointError, match="do not fit the model"):
        cj.explain(model, bad, x, [cj.ClassTarget(0, 0, 1)], method=COMPOSITE)
