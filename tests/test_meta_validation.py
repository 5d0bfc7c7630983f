"""Bad metadata sidecars are refused on load with a ``CheckpointError`` naming the field and
its value, and ``preprocess`` never turns finite pixels into NaN/Inf (checked against the
formula ``(v / 255 - mean) / std`` in float64)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import crp_jax as cj
from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd import io
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.meta import IMAGE_SIZE_RANGE, MEAN_LIMIT, STD_RANGE, Meta, default_class_names

REPO = Path(__file__).resolve().parents[1]
SIDECAR = json.loads((REPO / "weights" / "default.json").read_text())


def _with(field: str, value) -> dict:
    d = json.loads(json.dumps(SIDECAR))
    if field == "image_size":
        d["config"]["image_size"] = value
    elif field is not None:
        d[field] = value
    return d


def _checkpoint(tmp_path: Path, sidecar_text: str) -> Path:
    shutil.copy(REPO / "weights" / "default.msgpack", tmp_path / "m.msgpack")
    (tmp_path / "m.json").write_text(sidecar_text)
    return tmp_path / "m.msgpack"


BAD = [
    # (field, value written to JSON, text the message must contain)
    ("std", [float("nan"), 0.25, 0.25], "nan"),
    ("std", [0.25, float("inf"), 0.25], "inf"),
    ("std", [0.25, 0.25, 1e-45], "1e-45"),
    ("std", [0.25, 0.25, 0.0], "0.0"),
    ("std", [0.25, -0.25, 0.25], "-0.25"),
    ("std", [0.25, 0.25, 1e4], "10000.0"),
    ("mean", [1e300, 0.5, 0.5], "1e+300"),
    ("mean", [0.5, float("nan"), 0.5], "nan"),
    ("mean", [0.5, -float("inf"), 0.5], "-inf"),
    ("mean", [0.5, 0.5], "[0.5, 0.5]"),
    ("mean", ["0.5", 0.5, 0.5], "'0.5'"),
    ("std", [True, 0.25, 0.25], "True"),
    ("image_size", 100000, "100000"),
    ("image_size", 4097, "4097"),
    ("class_names", ["__background__", "a"], "2 class names"),
    ("class_names", ["__background__", 1, 2, 3, 4, 5, 6], "1"),
    ("source", 3, "3"),
]


@pytest.mark.parametrize(("field", "value", "shown"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_a_bad_sidecar_field_is_refused_on_load_naming_field_and_value(tmp_path, field, value, shown):
    path = _checkpoint(tmp_path, json.dumps(_with(field, value)))  # json writes NaN/Infinity
    with pytest.raises(CheckpointError) as e:
        io.load_weights(path)
    msg = str(e.value)
    field_named = "class names" if field == "class_names" and "class names" in msg else field
    assert str(tmp_path / "m.json") in msg and field_named in msg and shown in msg, msg
    with pytest.raises(CheckpointError):
        io.read_meta(path)


def test_an_unknown_sidecar_field_is_named(tmp_path):
    path = _checkpoint(tmp_path, json.dumps(_with("image_sizes", 128)))
    with pytest.raises(CheckpointError, match="image_sizes"):
        io.load_weights(path)


def test_the_shipped_sidecar_and_the_converters_presets_are_inside_the_ranges():
    io.read_meta(REPO / "weights" / "default.msgpack")
    from crp_jax.ssd.meta import SSDPYTORCH_MEAN, SSDPYTORCH_STD, TORCHVISION_MEAN, TORCHVISION_STD

    for mean, std in ((TORCHVISION_MEAN, TORCHVISION_STD), (SSDPYTORCH_MEAN, SSDPYTORCH_STD)):
        Meta(SSDConfig.ssd300_vgg16(), default_class_names(21), mean, std)


def test_meta_made_in_code_gets_a_config_error_at_the_range_edges():
    cfg = SSDConfig.small(3, image_size=16)
    names = default_class_names(3)
    lo, hi = STD_RANGE
    Meta(cfg, names, (MEAN_LIMIT, -MEAN_LIMIT, 0.0), (lo, hi, 1.0))  # the edges are allowed
    for mean, std in [((np.nextafter(MEAN_LIMIT, 2e3), 0, 0), (1, 1, 1)), ((0, 0, 0), (np.nextafter(lo, 0), 1, 1))]:
        with pytest.raises(ConfigError):
            Meta(cfg, names, mean, std)
    assert IMAGE_SIZE_RANGE[0] == 16  # SSDConfig's own lower bound
    with pytest.raises(ConfigError, match="image_size"):
        Meta(SSDConfig.small(3, image_size=IMAGE_SIZE_RANGE[1] + 1), names)


# ---------------------------------------------------------------------------------------
# preprocess
# ---------------------------------------------------------------------------------------
EXTREME = [
    ((MEAN_LIMIT, -MEAN_LIMIT, 0.0), (STD_RANGE[0], STD_RANGE[0], STD_RANGE[0])),  # ~1e6 out
    ((-MEAN_LIMIT, 0.5, MEAN_LIMIT), (STD_RANGE[1], STD_RANGE[0], STD_RANGE[1])),
]


@pytest.mark.parametrize(("mean", "std"), EXTREME)
def test_preprocess_of_uint8_is_finite_and_exact_for_extreme_valid_meta(mean, std):
    meta = Meta(SSDConfig.small(3, image_size=16), default_class_names(3), mean, std)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    img[0, 0] = 0
    img[0, 1] = 255
    x = np.asarray(cj.preprocess(img, meta))  # same size: no resize, the formula exactly
    ref = (img.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x[0], ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    big = rng.integers(0, 256, size=(97, 41, 3), dtype=np.uint8)  # resized: still finite
    assert np.all(np.isfinite(np.asarray(cj.preprocess(big, meta))))


@pytest.mark.parametrize("std", [(1e-45, 1.0, 1.0), (float("nan"), 1.0, 1.0), (0.0, 1.0, 1.0)])
def test_preprocess_refuses_a_duck_typed_meta_that_would_make_nan(std):
    meta = SimpleNamespace(image_size=16, mean=(0.5, 0.5, 0.5), std=std)
    with pytest.raises(ConfigError, match="std"):
        cj.preprocess(np.zeros((16, 16, 3), np.uint8), meta)
