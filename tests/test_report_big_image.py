"""``crp-jax report`` on an image over the CLI's reading bound (2048 px): boxes, sizes and
in-box shares refer to the original pixels, as ``crp-jax detect`` prints them.

The big image is a held-out scene magnified 28 times (nearest), 3584 px. The CLI reduces
it by 2 while reading (1792 px, the scene magnified 14 times) and the model's resize to
128 samples inside each 14-pixel block, so the model sees exactly the scene: every box of
the big image must be the scene's box times 28 (the scene's boxes come from ``cj.detect``
on the scene itself), and the share of positive relevance inside the box must be the
scene's.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

import crp_jax as cj
from crp_jax.cli import main
from crp_jax.cli.common import MAX_SIDE
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED

MAGNIFY = 28


def test_report_of_an_image_over_2048_px_keeps_boxes_and_shares_in_original_pixels(tmp_path):
    scene = generate_scene(HELDOUT_SEED, 0)
    S = scene.image.shape[0]
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.fromarray(scene.image).save(small)
    Image.fromarray(scene.image).resize((S * MAGNIFY, S * MAGNIFY), Image.Resampling.NEAREST).save(big)
    assert S * MAGNIFY > MAX_SIDE
    out = tmp_path / "report"
    assert main(["report", str(small), str(big), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "report.json").read_text())
    ref, on_big = doc["images"]
    assert (on_big["width"], on_big["height"]) == (S * MAGNIFY, S * MAGNIFY)

    # the reference boxes: the library on the scene itself
    model, variables, meta = cj.load_pretrained()
    det = cj.detect(model, variables, cj.preprocess([scene.image], meta), meta=meta, score_threshold=0.5)[0]
    expected = np.asarray(det.boxes[:20], np.float64) * MAGNIFY
    assert len(on_big["detections"]) == len(expected) > 0
    got = np.array([d["box"] for d in on_big["detections"]])
    np.testing.assert_allclose(got, expected, atol=0.5 * MAGNIFY)
    for d_small, d_big in zip(ref["detections"], on_big["detections"]):
        for name, share in d_small["positive_share_in_box"].items():
            assert abs(d_big["positive_share_in_box"][name] - share) < 0.02, (name, share, d_big)
