"""Measured parity with torchvision's ssdlite320_mobilenet_v3_large (converted random weights
with random BatchNorm statistics, one image). Setup and figures come from
``benchmarks/parity_ssdlite.py`` (see its docstring)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

pytestmark = [pytest.mark.slow, pytest.mark.torch]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "parity_ssdlite.py"


def _script():
    spec = importlib.util.spec_from_file_location("parity_ssdlite", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def parity():
    return _script().run_parity(seed=0)


def test_preprocess_equals_torchvision_transform(parity):
    assert parity["input_max_abs_diff"] <= 1e-5


def test_raw_outputs_within_2e_4_of_their_largest_value(parity):
    # outputs of a useful size (random BN statistics keep the signal from vanishing)
    assert parity["cls_max_abs"] > 1.0 and parity["loc_max_abs"] > 1.0
    # Both sides are float32 through ~60 layers, summed in different orders (torch's CPU
    # kernels vs XLA's fusions): the same code measured 6.6e-5 on one machine and 1.27e-4 on
    # another (2026-12-07, unchanged since 8c2a376), so the bound is 2e-4, not 1e-4.
    assert parity["cls_max_rel_diff"] <= 2e-4, parity["cls_max_rel_diff"]
    assert parity["loc_max_rel_diff"] <= 2e-4, parity["loc_max_rel_diff"]


def test_default_boxes_are_torchvisions_3234(parity):
    assert parity["anchors_shape"] == (3234, 4)
    assert parity["anchors_max_abs_diff_px"] <= 1e-3


def test_top20_detections_agree(parity):
    ours, tv = parity["arrays"]["ours"], parity["arrays"]["torchvision"]
    assert parity["top"] == 20 and len(set(tv["labels"].tolist())) >= 2
    # no near-tie among the top 20, so the order is well defined
    assert parity["top_min_neighbour_score_gap"] > 1e-5
    np.testing.assert_array_equal(ours["labels"], tv["labels"])
    np.testing.assert_allclose(ours["scores"], tv["scores"], atol=1e-5)
    np.testing.assert_allclose(ours["boxes"], tv["boxes"], atol=5e-3)  # pixels at 320


def test_crp_jax_convert_writes_a_folded_ssdlite_that_loads_and_matches_torchvision(tmp_path, capsys):
    import torch

    import crp_jax as cj
    from crp_jax.cli import main
    from crp_jax.ssd.ssdlite import SSDLite

    net = _script().make_torch_model(seed=1)
    src = tmp_path / "ssdlite.pth"
    torch.save(net.state_dict(), src)
    assert main(["convert", str(src), str(tmp_path / "lite")]) == 0, capsys.readouterr().err
    assert "SSDlite320-MobileNetV3 (BatchNorm folded)" in capsys.readouterr().out
    model, variables, meta = cj.load_weights(tmp_path / "lite.msgpack")
    assert isinstance(model, SSDLite) and not model.batchnorm and "batch_stats" not in variables
    x = np.random.default_rng(0).uniform(-1, 1, size=(1, 320, 320, 3)).astype(np.float32)
    with torch.no_grad():
        head = net.head(list(net.backbone(torch.from_numpy(x.transpose(0, 3, 1, 2))).values()))
    cls, loc = (np.asarray(a) for a in model.apply(variables, x))
    for ours, theirs in ((cls, head["cls_logits"].numpy()), (loc, head["bbox_regression"].numpy())):
        assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
