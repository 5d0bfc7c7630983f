"""Model-randomization test (crp_jax.metrics, _randomization.py) on the shipped model and on a hand-built module.

References are independent of the code under test: Adebayo et al.'s control (an edge map of
the input, which cannot depend on the weights) must stay at similarity 1.0 through every
step; the plain gradient, which is a function of the weights, must not; the block order of a
hand-built module is written down by hand.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import crp_jax as cj
from crp_jax.errors import ConfigError, InputError
from crp_jax.metrics import randomization_blocks


@pytest.fixture(scope="module")
def shipped():
    from crp_jax.data import generate_scene
    from crp_jax.data.splits import HELDOUT_SEED

    model, variables, meta = cj.load_pretrained()
    scene = generate_scene(HELDOUT_SEED, 0)
    x = np.asarray(cj.preprocess(scene.image[None], meta))
    dets = cj.detect(model, variables, x, meta)
    targets = cj.targets_from_detections(dets, "cls")[:2]
    assert len(targets) == 2
    return model, variables, meta, x, targets


def edge_map(model, variables, x, targets):
    """Adebayo's control: gradient magnitude of the grey image, the same for every target."""
    g = np.asarray(x, np.float64)[0].mean(-1)
    e = np.abs(np.diff(g, axis=0, prepend=g[:1])) + np.abs(np.diff(g, axis=1, prepend=g[:, :1]))
    return np.repeat(e[None, :, :, None], len(targets), 0)


def test_the_edge_map_control_stays_at_one_through_every_cascade_step(shipped):
    model, variables, meta, x, targets = shipped
    res = cj.model_randomization(model, variables, x, targets, method=edge_map, meta=meta)
    blocks = randomization_blocks(model, variables, x)
    assert [name for name, _ in res] == ["trained"] + [name for name, _ in blocks]
    for name, sims in res:
        assert set(sims) == {"spearman_abs", "spearman", "ssim"}
        for k, v in sims.items():
            assert v == pytest.approx(1.0, abs=1e-12), (name, k)


def test_the_plain_gradient_drops_well_below_one_by_the_last_step(shipped):
    model, variables, meta, x, targets = shipped
    res = cj.model_randomization(model, variables, x, targets, method="gradient", meta=meta, seed=0)
    first, last = res[0][1], res[-1][1]
    assert res[-1][0] == "conv1_1"
    for k in ("spearman_abs", "spearman", "ssim"):
        assert first[k] == pytest.approx(1.0, abs=1e-9)
    # fully random network: the signed gradient's ranking is unrelated to the trained one
    assert abs(last["spearman"]) < 0.3
    assert last["spearman_abs"] < 0.8
    assert last["ssim"] < 0.7


def test_independent_mode_randomizes_one_block_and_its_heads_step_equals_the_cascade_first_step(shipped):
    model, variables, meta, x, targets = shipped
    casc = cj.model_randomization(model, variables, x, targets, method="gradient", per_target=True)
    ind = cj.model_randomization(model, variables, x, targets, method="gradient", mode="independent", per_target=True)
    assert [n for n, _ in casc] == [n for n, _ in ind]
    # the first block is randomized alone in both modes
    for k in ("spearman_abs", "spearman", "ssim"):
        np.testing.assert_allclose(casc[1][1][k], ind[1][1][k], rtol=0, atol=1e-12)
        assert casc[1][1][k].shape == (2,)
    # the last independent step randomizes only the input layer, the cascade all of them
    assert not np.allclose(ind[-1][1]["spearman_abs"], casc[-1][1]["spearman_abs"], atol=1e-3)


def test_randomize_takes_exactly_the_blocks_arrays_from_the_fresh_variables(shipped):
    from crp_jax.metrics import randomize

    model, variables, _, _, _ = shipped
    fresh = cj.init_variables(model, 3)
    v = randomize(variables, fresh, ["conv4_3", "l2norm"])
    for name in variables["params"]:
        for leaf in variables["params"][name]:
            want = fresh if name in ("conv4_3", "l2norm") else variables
            np.testing.assert_array_equal(v["params"][name][leaf], want["params"][name][leaf])


class _Scale(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))


class _TwoHeads(nn.Module):
    """c1 -> scale -> c2 -> head_a; head_b reads c1's output directly (called in between)."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), name="c1")(x))
        h = _Scale(name="scale")(h)
        b = nn.Dense(2, name="head_b")(h.mean((1, 2)))
        h = nn.relu(nn.Conv(4, (3, 3), name="c2")(h))
        a = nn.Conv(2, (1, 1), name="head_a")(h)
        return a, b


def test_blocks_are_found_from_the_data_flow_not_from_names():
    model = _TwoHeads()
    x = jnp.zeros((1, 8, 8, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    blocks = randomization_blocks(model, variables, x)
    assert blocks == [("heads", ("head_b", "head_a")), ("c2", ("c2",)), ("c1+scale", ("c1", "scale"))]


def test_bad_arguments_raise_the_packages_errors(shipped):
    model, variables, meta, x, targets = shipped
    with pytest.raises(ConfigError, match="bogus"):
        cj.model_randomization(model, variables, x, targets, mode="bogus")
    with pytest.raises(ConfigError, match="no_such_method"):
        cj.model_randomization(model, variables, x, targets, method="no_such_method", meta=meta)
    with pytest.raises(InputError, match="seed"):
        cj.model_randomization(model, variables, x, targets, method=edge_map, seed="0")
    with pytest.raises(InputError, match="empty"):
        cj.model_randomization(model, variables, x, [], method=edge_map)
    with pytest.raises(InputError, match=r"shape \(3, 5\)"):
        cj.model_randomization(model, variables, x, targets, method=lambda *a: np.zeros((3, 5)))
