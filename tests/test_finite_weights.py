"""Weights holding NaN or Inf are refused by every loader (``load_weights``,
``load_pretrained``, the converters, ``crp-jax convert``) and by ``save_weights``, with a
``CheckpointError`` naming each bad array and its counts. The bad values are placed by hand,
so the expected counts are known without running the code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import serialization

import crp_jax as cj
from crp_jax.errors import CheckpointError
from crp_jax.ssd import convert, io
from crp_jax.ssd.config import SSDConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    return io.load_weights(REPO / "weights" / "default.msgpack")


def _corrupted(variables) -> dict:
    """conv3_1/kernel: 2 NaN, 1 Inf; conv7/bias: 1 -Inf; everything else untouched."""
    v = jax.tree_util.tree_map(np.array, variables)
    k = v["params"]["conv3_1"]["kernel"]
    k[0, 0, 0, 0] = np.nan
    k[1, 2, 3, 0] = np.nan
    k[2, 2, 0, 1] = np.inf
    v["params"]["conv7"]["bias"][5] = -np.inf
    return v


def _write_raw(folder: Path, variables, name: str = "default") -> Path:
    """The checkpoint pair as save_weights writes it, bypassing its checks."""
    folder.mkdir(parents=True, exist_ok=True)
    wpath = folder / f"{name}.msgpack"
    wpath.write_bytes(serialization.msgpack_serialize(variables))
    shutil.copy(REPO / "weights" / "default.json", folder / f"{name}.json")
    return wpath


def _assert_names_bad_arrays(msg: str, prefix: str = "params/"):
    assert f"{prefix}conv3_1/kernel: 2 NaN, 1 Inf values" in msg
    assert f"{prefix}conv7/bias: 0 NaN, 1 Inf values" in msg
    assert "2 arrays" in msg and "\n" not in msg
    assert "conv1_1" not in msg  # finite arrays are not listed


def test_load_weights_refuses_nan_and_inf_naming_each_array(shipped, tmp_path):
    _, variables, _ = shipped
    wpath = _write_raw(tmp_path, _corrupted(variables))
    with pytest.raises(CheckpointError) as e:
        io.load_weights(wpath)
    assert str(wpath) in str(e.value)
    _assert_names_bad_arrays(str(e.value))


def test_load_pretrained_refuses_them_by_path_and_as_the_default(shipped, tmp_path, monkeypatch):
    _, variables, _ = shipped
    wpath = _write_raw(tmp_path, _corrupted(variables))
    with pytest.raises(CheckpointError) as e:
        cj.load_pretrained(wpath)
    _assert_names_bad_arrays(str(e.value))
    monkeypatch.setenv(io.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        cj.load_pretrained()
    _assert_names_bad_arrays(str(e.value))


def test_a_float64_value_beyond_float32_range_counts_as_inf(shipped, tmp_path):
    _, variables, _ = shipped
    v = jax.tree_util.tree_map(np.array, variables)
    v["params"]["loc_0"]["bias"] = v["params"]["loc_0"]["bias"].astype(np.float64)
    v["params"]["loc_0"]["bias"][0] = 1e300  # finite in float64, Inf once loaded as float32
    with pytest.raises(CheckpointError, match=re.escape("params/loc_0/bias: 0 NaN, 1 Inf values")):
        io.load_weights(_write_raw(tmp_path, v))


def test_save_weights_refuses_them_so_a_saved_file_always_loads(shipped, tmp_path):
    _, variables, meta = shipped
    with pytest.raises(CheckpointError) as e:
        io.save_weights(tmp_path / "w.msgpack", _corrupted(variables), meta)
    _assert_names_bad_arrays(str(e.value))
    assert not (tmp_path / "w.msgpack").exists()


def test_check_finite_accepts_the_shipped_model(shipped):
    io.check_finite(shipped[1])  # no error


# ---------------------------------------------------------------------------------------
# converters: the message names the torch key and ours
# ---------------------------------------------------------------------------------------
def _state_dict(fmt: str, num_classes: int = 2) -> dict[str, np.ndarray]:
    """A finite state dict of the right torch shapes: our HWIO kernel shape (h, w, i, o) is
    torch's OIHW (o, i, h, w)."""
    config = (
        SSDConfig.ssd300_vgg16(num_classes) if fmt == "torchvision" else SSDConfig.ssd300_vgg16_ssdpytorch(num_classes)
    )
    shapes = io.expected_shapes(config)
    sd = {}
    for tkey, okey in convert.torch_key_map(fmt).items():
        s = shapes[okey]
        sd[tkey] = np.full((s[3], s[2], s[0], s[1]) if len(s) == 4 else s, 0.01, np.float32)
    return sd


@pytest.mark.parametrize(
    ("fmt", "fn", "conv3_1", "conv7"),
    [
        ("torchvision", convert.convert_torchvision_ssd, "backbone.features.10.weight", "backbone.extra.0.7.3.bias"),
        ("ssd.pytorch", convert.convert_ssdpytorch, "vgg.10.weight", "vgg.33.bias"),
    ],
)
def test_converters_refuse_nan_and_inf_naming_the_torch_key(fmt, fn, conv3_1, conv7):
    sd = _state_dict(fmt)
    sd[conv3_1][0, 0, 0, 0] = np.nan
    sd[conv3_1][0, 1, 0, 0] = np.nan
    sd[conv3_1][1, 0, 2, 2] = np.inf
    sd[conv7][3] = -np.inf
    for convert_fn in (fn, lambda s: convert.convert_state_dict(s, "auto")):
        with pytest.raises(CheckpointError) as e:
            convert_fn(sd)
        msg = str(e.value)
        assert f"{conv3_1} (conv3_1/kernel): 2 NaN, 1 Inf values" in msg
        assert f"{conv7} (conv7/bias): 0 NaN, 1 Inf values" in msg
        assert msg.startswith(f"{fmt} state dict: ")


def test_crp_jax_convert_refuses_a_pth_with_nan_in_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from crp_jax.cli import main

    sd = _state_dict("torchvision")
    sd["head.regression_head.module_list.2.bias"][0] = np.nan
    src = tmp_path / "nan.pth"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, src)
    out = tmp_path / "out.msgpack"
    capsys.readouterr()
    assert main(["convert", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "head.regression_head.module_list.2.bias (loc_2/bias): 1 NaN, 0 Inf values" in err
    assert not out.exists()
