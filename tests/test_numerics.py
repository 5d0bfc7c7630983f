"""Forward passes that overflow: ``first_nonfinite_layer`` on any Flax model, and ``detect``
(library and command line) naming the first layer whose output is not finite instead of
reporting "0 detections". References are hand-computed overflows and a float64 numpy
replica of the first two convolutions."""

from __future__ import annotations

import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from PIL import Image

import crp_jax as cj
from crp_jax.errors import CRPError, NumericsError
from crp_jax.numerics import INPUT_PATH, OUTPUT_PATH, NonFiniteLayer, check_finite_forward, first_nonfinite_layer
from crp_jax.ssd import io

REPO = Path(__file__).resolve().parents[1]
F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------
# a tiny model whose overflow is known by hand
# ---------------------------------------------------------------------------------------
class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(3, name="first")(x)
        return nn.Dense(2, name="second")(x)

    def double(self, x):
        return 2.0 * x


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        block = Block(name="block")
        return nn.Dense(5, name="head")(block.double(block(x)))


def _net_variables(k_first: float, k_second: float, k_head: float = 1.0):
    shapes = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
    p = jax.tree_util.tree_map(np.zeros_like, shapes)["params"]
    p["block"]["first"]["kernel"] = np.full((4, 3), k_first, np.float32)
    p["block"]["second"]["kernel"] = np.full((3, 2), k_second, np.float32)
    p["head"]["kernel"] = np.full((2, 5), k_head, np.float32)
    return {"params": p}


def test_a_finite_forward_has_no_nonfinite_layer():
    assert first_nonfinite_layer(Net(), _net_variables(1.0, 1.0), jnp.ones((2, 4))) is None


def test_the_first_layer_to_overflow_is_named_with_its_count():
    # x = 1: first = 4 * 1e20 = 4e20 (finite); second = 3 * 4e20 * 1e20 = 1.2e41 > float32 max.
    assert 4e20 < F32_MAX < 1.2e41
    got = first_nonfinite_layer(Net(), _net_variables(1e20, 1e20), jnp.ones((2, 4)))
    assert got == NonFiniteLayer("block/second", 2 * 2)  # every value of the [2, 2] output
    path, count = got  # a plain (path, count) pair
    assert (path, count) == ("block/second", 4)


def test_an_overflow_in_a_module_method_other_than_call_is_labelled_with_the_method():
    # first = 4 * 0.25 = 1; second = 3 * 1 * 1e38 = 3e38 (finite); double = 6e38 -> Inf.
    assert 3e38 < F32_MAX < 6e38
    got = first_nonfinite_layer(Net(), _net_variables(0.25, 1e38), jnp.ones((1, 4)))
    assert got == NonFiniteLayer("block.double", 2)


def test_nan_input_and_overflow_outside_any_module_are_reported_as_such():
    v = _net_variables(1.0, 1.0)
    x = np.ones((2, 4), np.float32)
    x[1, 2] = np.nan
    assert first_nonfinite_layer(Net(), v, jnp.asarray(x)) == NonFiniteLayer(INPUT_PATH, 1)

    def apply_then_exp(variables, x):  # first 4, second 12, double 24, head 48; exp(480) = Inf; exp(48 * 10) = Inf
        return jnp.exp(10.0 * Net().apply(variables, x))

    assert first_nonfinite_layer(apply_then_exp, v, jnp.ones((1, 4))) == NonFiniteLayer(OUTPUT_PATH, 5)


def test_check_finite_forward_raises_a_numerics_error_naming_the_layer():
    check_finite_forward(Net(), _net_variables(1.0, 1.0), jnp.ones((1, 4)))  # finite: no error
    with pytest.raises(NumericsError) as e:
        check_finite_forward(Net(), _net_variables(1e20, 1e20), jnp.ones((1, 4)), where="image 0")
    msg = str(e.value)
    assert msg.startswith("image 0: ") and "block/second" in msg and "\n" not in msg
    assert isinstance(e.value, CRPError) and isinstance(e.value, ArithmeticError)


def test_the_function_and_error_are_exported_at_top_level():
    assert cj.first_nonfinite_layer is first_nonfinite_layer
    assert cj.NumericsError is NumericsError


# ---------------------------------------------------------------------------------------
# the shipped model
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    return io.load_weights(REPO / "weights" / "default.msgpack")


def _scene(meta, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(meta.image_size, meta.image_size, 3), dtype=np.uint8)


def _scaled(variables, factor: float) -> dict:
    v = jax.tree_util.tree_map(np.array, variables)
    for layer in v["params"].values():
        if "kernel" in layer:
            layer["kernel"] = (layer["kernel"] * np.float32(factor)).astype(np.float32)
    return v


def test_an_inf_bias_is_found_at_its_layer_with_one_value_per_position(shipped):
    model, variables, meta = shipped
    v = jax.tree_util.tree_map(np.array, variables)
    v["params"]["conv4_1"]["bias"][0] = np.inf  # channel 0 of conv4_1 is Inf at every position
    x = cj.preprocess([_scene(meta, 0), _scene(meta, 1)], meta)
    cells = model.config.feature_sizes()[0]  # conv4_x runs at the first source's size
    assert first_nonfinite_layer(model, v, x) == NonFiniteLayer("conv4_1", 2 * cells * cells)


def _conv3x3_same_f64(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[H, W, I] x [3, 3, I, O] -> [H, W, O], zero padding 1, in float64."""
    h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, k.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += xp[dy : dy + h, dx : dx + w] @ k[dy, dx].astype(np.float64)
    return out + b.astype(np.float64)


def test_kernels_times_1e30_make_detect_name_conv1_2(shipped):
    model, variables, meta = shipped
    big = _scaled(variables, 1e30)
    x = cj.preprocess(_scene(meta), meta)
    # Reference in float64: conv1_1 stays below float32's max, conv1_2 goes above it.
    p = big["params"]
    y1 = np.maximum(_conv3x3_same_f64(np.asarray(x[0]), p["conv1_1"]["kernel"], p["conv1_1"]["bias"]), 0)
    y2 = _conv3x3_same_f64(y1, p["conv1_2"]["kernel"], p["conv1_2"]["bias"])
    assert np.abs(y1).max() < F32_MAX < np.abs(y2).max()
    with pytest.raises(NumericsError) as e:
        cj.detect(model, big, x, meta)
    msg = str(e.value)
    assert "conv1_2" in msg and "image 0" in msg and "\n" not in msg
    # the healthy model on the same input is unaffected
    assert isinstance(cj.detect(model, variables, x, meta), list)


def test_crp_jax_detect_with_overflowing_weights_prints_one_line_and_exits_1(shipped, tmp_path, capsys):
    from crp_jax.cli import main

    model, variables, meta = shipped
    # finite weights (so they load) whose forward overflows: written as raw msgpack
    wpath = tmp_path / "big.msgpack"
    wpath.write_bytes(serialization.msgpack_serialize(_scaled(variables, 1e30)))
    shutil.copy(REPO / "weights" / "default.json", tmp_path / "big.json")
    img = tmp_path / "scene.png"
    Image.fromarray(_scene(meta)).save(img)
    capsys.readouterr()
    assert main(["detect", str(img), "--weights", str(wpath)]) == 1
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1, captured.err
    assert "conv1_2" in err_lines[0] and "Traceback" not in captured.err
    assert "detection" not in captured.out


def test_explain_names_the_first_overflowing_layer_instead_of_returning_nan():
    import jax  # noqa: F811

    model, variables, meta = cj.load_pretrained()
    big = {"params": jax.tree.map(lambda a: a * 1e30 if a.ndim == 4 else a, variables["params"])}
    x = np.full((1, 128, 128, 3), 0.5, np.float32)
    with pytest.raises(cj.NumericsError, match="conv1_2"):
        cj.explain(model, big, x, [cj.ClassTarget(0, 5, 1)], method="crp", meta=meta)
    R = cj.explain(model, variables, x, [cj.ClassTarget(0, 5, 1)], method="crp", meta=meta)
    assert np.isfinite(R).all()
