"""Converted models keep their source's post-processing: torchvision's ssdlite320 uses NMS
IoU 0.55, 300 candidates, 300 detections and score 0.001 (not SSD300's 0.45, 400, 200,
0.01). ``cj.detect`` with no settings must give exactly torchvision's own ``model(images)``
output with its defaults, also after a save/load round trip of the weights.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import crp_jax as cj
from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd.meta import SSD300_POSTPROCESS, SSDLITE_POSTPROCESS, Meta, Postprocess

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "parity_ssdlite.py"


def test_postprocess_travels_through_json_and_bad_values_are_named():
    _, _, meta = cj.load_pretrained()
    assert meta.postprocess == SSD300_POSTPROCESS  # the shipped sidecars keep SSD300's
    lite = Meta(meta.config, meta.class_names, meta.mean, meta.std, "x", SSDLITE_POSTPROCESS)
    assert Meta.from_json(lite.to_json()).postprocess == SSDLITE_POSTPROCESS
    d = json.loads(lite.to_json())
    d["postprocess"]["nms_threshold"] = 1.5
    with pytest.raises(ConfigError, match=r"postprocess.nms_threshold.*1.5"):
        Meta.from_dict(d)
    d["postprocess"] = {"nms": 0.5}
    with pytest.raises(ConfigError, match="nms"):
        Meta.from_dict(d)
    with pytest.raises(ConfigError, match="max_detections.*-1"):
        Postprocess(max_detections=-1)


@pytest.mark.torch
@pytest.mark.slow
def test_converted_ssdlite_detects_like_torchvisions_own_forward_with_its_defaults(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    spec = importlib.util.spec_from_file_location("parity_ssdlite", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    net = script.make_torch_model(0).eval()
    image = script.make_image(320, 0)
    with torch.no_grad():  # torchvision's own forward, its own defaults
        tv = net([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])[0]
    tv = {k: v.numpy() for k, v in tv.items()}
    assert (net.nms_thresh, net.topk_candidates, net.detections_per_img) == (0.55, 300, 300)
    assert len(tv["scores"]) > 200  # more than SSD300's cap: the settings matter

    model, variables, meta = cj.convert_torchvision_ssdlite(net.state_dict())
    fmodel, fvariables = cj.fold_batchnorm(model, variables)
    cj.save_weights(tmp_path / "lite.msgpack", fvariables, meta)
    reloaded = cj.load_weights(tmp_path / "lite.msgpack")
    for m, v, mt in ((model, variables, meta), reloaded):
        x = cj.preprocess(image, mt)
        det = cj.detect(m, v, x, meta=mt)[0]  # no settings: the source's
        assert len(det) == len(tv["scores"])
        # the same detections (pixels at 320; the folded reload differs by float rounding);
        # neighbours with equal scores may come in either order
        np.testing.assert_allclose(det.scores, tv["scores"], atol=1e-4)
        used = np.zeros(len(det), bool)
        for box, score, label in zip(tv["boxes"], tv["scores"], tv["labels"]):
            hit = np.flatnonzero(
                ~used
                & (det.labels == label)
                & (np.abs(det.scores - score) < 1e-3)
                & (np.abs(det.boxes - box).max(-1) < 2e-2)
            )
            assert len(hit), (box, score, label)
            used[hit[0]] = True


def test_a_sidecar_with_bad_postprocess_is_a_checkpoint_error_naming_the_file(tmp_path):
    model, variables, meta = cj.load_pretrained()
    cj.save_weights(tmp_path / "w.msgpack", variables, meta)
    side = tmp_path / "w.json"
    d = json.loads(side.read_text())
    d["postprocess"] = {"score_threshold": "high"}
    side.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"w\.json.*score_threshold"):
        cj.load_weights(tmp_path / "w.msgpack")
