"""Safe weights I/O: msgpack + JSON sidecar round trip, checkpoint validation, no pickle."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import serialization

from crp_jax.errors import CheckpointError
from crp_jax.ssd import io
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.meta import Meta, default_class_names
from crp_jax.ssd.model import SSD

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    config = SSDConfig.small(5)
    model = SSD(config)
    # Random arrays of the shapes model.init would create (no XLA compile: keeps this fast).
    rng = np.random.default_rng(0)
    flat = {k: rng.standard_normal(s).astype(np.float32) for k, s in io.expected_shapes(config).items()}
    variables = io.unflatten_variables(flat)
    meta = Meta(config=config, class_names=default_class_names(5), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25))
    return model, variables, meta


def _flat(v):
    return io.flatten_variables(v)


def _write_raw(path: Path, tree, meta: Meta) -> None:
    """A checkpoint written without save_weights' checks (to test load_weights' checks)."""
    path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, tree)))
    path.with_suffix(".json").write_text(meta.to_json())


def test_round_trip(small, tmp_path):
    model, variables, meta = small
    out = io.save_weights(tmp_path / "m.msgpack", variables, meta)
    assert out == tmp_path / "m.msgpack" and out.is_file()
    assert (tmp_path / "m.json").is_file()
    model2, variables2, meta2 = io.load_weights(out)
    assert meta2 == meta and model2.config == model.config
    a, b = _flat(variables), _flat(variables2)
    assert set(a) == set(b)
    for k in a:
        assert b[k].dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a[k]), b[k])
    # The sidecar or the bare stem name the same checkpoint.
    assert io.load_weights(tmp_path / "m.json")[2] == meta
    assert io.load_weights(tmp_path / "m")[2] == meta
    # load_pretrained(path) is load_weights(path)
    assert io.load_pretrained(out)[2] == meta


def test_save_adds_suffix(small, tmp_path):
    _, variables, meta = small
    out = io.save_weights(tmp_path / "sub" / "w", variables, meta)
    assert out.name == "w.msgpack" and (tmp_path / "sub" / "w.json").is_file()


def _problem_tree(variables, kind):
    flat = {k: np.asarray(v) for k, v in _flat(variables).items()}
    if kind == "missing":
        del flat["params/cls_0/bias"]
    elif kind == "unexpected":
        flat["params/conv99/kernel"] = np.zeros((3,), np.float32)
    elif kind == "misshaped":
        flat["params/loc_1/kernel"] = np.zeros((3, 3, 7, 7), np.float32)
    return io.unflatten_variables(flat)


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "missing keys (1): params/cls_0/bias"),
        ("unexpected", "unexpected keys (1): params/conv99/kernel"),
        ("misshaped", "params/loc_1/kernel expected (3, 3, "),
    ],
)
def test_check_variables_lists_problems(small, tmp_path, kind, needle):
    model, variables, meta = small
    tree = _problem_tree(variables, kind)
    with pytest.raises(CheckpointError) as e:
        io.check_variables(model, tree)
    assert needle in str(e.value)
    if kind == "misshaped":
        assert "found (3, 3, 7, 7)" in str(e.value)
    # The same problems in a file on disk: named with the path.
    path = tmp_path / f"{kind}.msgpack"
    _write_raw(path, tree, meta)
    with pytest.raises(CheckpointError) as e:
        io.load_weights(path)
    assert str(path) in str(e.value) and needle in str(e.value)
    # save_weights refuses to write what could not be loaded.
    with pytest.raises(CheckpointError):
        io.save_weights(tmp_path / "refused.msgpack", tree, meta)
    assert not (tmp_path / "refused.msgpack").exists()


def test_wrong_meta_for_weights(small, tmp_path):
    """Weights of one architecture with the sidecar of another: mis-shaped keys."""
    _, variables, meta = small
    other = Meta(config=SSDConfig.small(7), class_names=default_class_names(7))
    path = tmp_path / "w.msgpack"
    _write_raw(path, variables, other)
    with pytest.raises(CheckpointError, match="mis-shaped keys"):
        io.load_weights(path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(np.random.default_rng(0).bytes(4096), id="random-bytes"),
        pytest.param(b"this is a text file\nnot weights\n", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(serialization.msgpack_serialize([1, 2, 3]), id="msgpack-list"),
        pytest.param(serialization.msgpack_serialize({"params": "oops"}), id="msgpack-no-arrays"),
    ],
)
def test_not_a_checkpoint(small, tmp_path, content):
    _, _, meta = small
    path = tmp_path / "bad.msgpack"
    path.write_bytes(content)
    path.with_suffix(".json").write_text(meta.to_json())
    with pytest.raises(CheckpointError) as e:
        io.load_weights(path)
    assert str(path) in str(e.value)


def test_missing_file_and_sidecar(small, tmp_path):
    _, variables, meta = small
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        io.load_weights(tmp_path / "nothing.msgpack")
    path = io.save_weights(tmp_path / "w.msgpack", variables, meta)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError) as e:
        io.load_weights(path)
    assert "sidecar" in str(e.value) and str(path.with_suffix(".json")) in str(e.value)


@pytest.mark.parametrize(
    "sidecar",
    [
        "{not json",
        '"a string"',
        "[1, 2]",
        '{"config": {"num_classes": 5}}',
        '{"config": {"bogus": 1}, "class_names": []}',
    ],
)
def test_bad_sidecar(small, tmp_path, sidecar):
    _, variables, meta = small
    path = io.save_weights(tmp_path / "w.msgpack", variables, meta)
    path.with_suffix(".json").write_text(sidecar)
    with pytest.raises(CheckpointError) as e:
        io.load_weights(path)
    assert str(path.with_suffix(".json")) in str(e.value)


def test_load_pretrained_missing_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv(io.WEIGHTS_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError) as e:
        io.load_pretrained()
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "default.msgpack") in msg
    assert "crp-jax train" in msg


def test_load_pretrained_reads_default(small, tmp_path, monkeypatch):
    _, variables, meta = small
    io.save_weights(tmp_path / "default.msgpack", variables, meta)
    monkeypatch.setenv(io.WEIGHTS_DIR_ENV, str(tmp_path))
    model, v, m = io.load_pretrained()
    assert m == meta and isinstance(model, SSD)


def test_default_weights_dir_is_repo_weights(monkeypatch):
    monkeypatch.delenv(io.WEIGHTS_DIR_ENV, raising=False)
    assert io.default_weights_dir() == REPO / "weights"


_PICKLE_IMPORT = re.compile(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib|shelve)\b", re.M)
_PICKLE_CALL = re.compile(
    r"\bc?[pP]ickle\.(loads?|dumps?|Unpickler|Pickler)\b"
    r"|allow_pickle\s*=\s*True"
    r"|(__import__|import_module)\(\s*[\"'](c?pickle|dill|cloudpickle|joblib|shelve)[\"']"
)


def _torch_load_calls(text: str) -> list[str]:
    """The argument text of every ``torch.load(...)`` call (balanced parentheses)."""
    calls = []
    for m in re.finditer(r"\btorch\.load\(", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        calls.append(text[m.end() : i - 1])
    return calls


def test_no_pickle_in_package():
    files = sorted((REPO / "crp_jax").rglob("*.py"))
    assert files
    offenders = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        if _PICKLE_IMPORT.search(text) or _PICKLE_CALL.search(text):
            offenders.append(str(f.relative_to(REPO)))
        for call in _torch_load_calls(text):
            if "weights_only=True" not in call:
                offenders.append(f"{f.relative_to(REPO)}: torch.load({call}) without weights_only=True")
    assert not offenders, f"pickle-based loading in: {offenders}"
