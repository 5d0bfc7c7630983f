"""``crp-jax convert`` on broken checkpoints names the right thing: the checkpoint family a
state dict with missing keys belongs to, the INPUT file (not the output) when an array holds
NaN, and none of torch's own warnings ("please file an issue") reaches the user."""

from __future__ import annotations

import warnings

import pytest

from crp_jax.cli.convert import convert_main

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def lite_sd():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).state_dict()


def test_an_ssdlite_without_its_stem_is_named_ssdlite_with_its_missing_keys(tmp_path, capsys, lite_sd):
    import torch

    src = tmp_path / "lite.pth"
    torch.save({k: v for k, v in lite_sd.items() if not k.startswith("backbone.features.0.")}, src)
    assert convert_main([str(src), str(tmp_path / "out.msgpack")]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "ssdlite320_mobilenet_v3_large" in err and "backbone.features.0.0.0.weight" in err
    assert "neither" not in err
    assert not (tmp_path / "out.msgpack").exists()


def test_nan_in_the_checkpoint_names_the_input_file_not_the_output(tmp_path, capsys, lite_sd):
    import torch

    sd = dict(lite_sd)
    key = "head.classification_head.module_list.0.1.weight"
    sd[key] = sd[key].clone()
    sd[key][0, 0, 0, 0] = float("nan")
    src, out = tmp_path / "nan.pth", tmp_path / "converted.msgpack"
    torch.save(sd, src)
    assert convert_main([str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {src}: " in err and "NaN" in err, err
    assert str(out) not in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_torchs_own_warnings_do_not_reach_the_user(tmp_path, capsys, monkeypatch, lite_sd):
    import torch

    src = tmp_path / "lite.pth"
    torch.save(lite_sd, src)
    real = torch.load

    def noisy(*a, **kw):
        warnings.warn("This is an internal torch problem, please file an issue", UserWarning, stacklevel=2)
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", noisy)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert convert_main([str(src), str(tmp_path / "out.msgpack")]) == 0
    assert not [w for w in seen if "file an issue" in str(w.message)]
    assert "file an issue" not in capsys.readouterr().err
