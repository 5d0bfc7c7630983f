"""``crp-jax report IMAGE... --annotations FILE.json``: the errors view from a COCO file.

A held-out scene enlarged 2x (256 px, so boxes must be mapped to the 128 px model input), the
same scene's ground truth written as COCO (in the enlarged pixels), an image the file lists
without annotations and one it does not list. The page's ``data-error`` sections must equal
``cj.diagnose`` on the same model input with the boxes halved by hand; the other two images
are reported as not annotated; a file that does not fit is refused naming field and value.
"""

from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image

import crp_jax as cj
from crp_jax.cli import main
from crp_jax.data import CLASS_NAMES, generate_scene
from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.eval import ERROR_KINDS


def _coco(scene, images, scale: float) -> dict:
    cats = [{"id": 100 + k, "name": n} for k, n in enumerate(CLASS_NAMES) if k > 0]
    anns = [
        {"id": j + 1, "image_id": 1, "category_id": 100 + int(k), "bbox": [float(v) * scale for v in (*b[:2], *(b[2:] - b[:2]))]}
        for j, (b, k) in enumerate(zip(scene.boxes, scene.labels))
    ]  # fmt: skip
    return {"images": images, "annotations": anns, "categories": cats}


def test_report_with_coco_annotations(tmp_path, capsys):
    scene = generate_scene(HELDOUT_SEED, 5)  # a false alarm and a wrong label at 128 px
    big = Image.fromarray(scene.image).resize((256, 256), Image.Resampling.NEAREST)
    paths = [tmp_path / "five.png", tmp_path / "listed.png", tmp_path / "unlisted.png"]
    big.save(paths[0])
    Image.fromarray(scene.image).save(paths[1])
    Image.fromarray(scene.image).save(paths[2])
    images = [
        {"id": 1, "file_name": "five.png", "width": 256, "height": 256},
        {"id": 2, "file_name": "listed.png", "width": 128, "height": 128},
    ]
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(_coco(scene, images, 2.0)))
    out = tmp_path / "report"
    argv = ["report", *map(str, paths), "--annotations", str(ann), "--methods", "crp", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    doc = json.loads((out / "report.json").read_text())
    by_name = {e["name"]: e for e in doc["images"]}

    model, variables, meta = cj.load_pretrained()
    x = cj.preprocess(np.asarray(big), meta)
    (want,) = cj.diagnose(model, variables, x, [scene.boxes * 0.5 * 2.0], [scene.labels], meta=meta)
    page = (out / by_name["five.png"]["page"]).read_text()
    found = re.findall(r'<section[^>]*\sdata-error="([a-z_]+)"', page)
    assert {k: found.count(k) for k in ERROR_KINDS} == want.counts()
    assert want.counts()["false_alarm"] >= 1 and want.counts()["wrong_label"] >= 1  # not vacuous
    assert (
        by_name["listed.png"]["annotated"] is False
        and "without annotations" in by_name["listed.png"]["annotation_note"]
    )
    assert (
        by_name["unlisted.png"]["annotated"] is False and "does not list" in by_name["unlisted.png"]["annotation_note"]
    )
    for name in ("listed.png", "unlisted.png"):
        assert "data-error" not in (out / by_name[name]["page"]).read_text()

    # a file that does not fit the images: refused, naming file, field and value
    bad = _coco(scene, images, 2.0)
    bad["annotations"][0]["image_id"] = 7
    ann.write_text(json.dumps(bad))
    capsys.readouterr()
    assert main([*argv, "--no-progress", "--force"]) == 1
    assert re.search(r"gt\.json: annotations\[0\]\.image_id 7: is not the id of an image", capsys.readouterr().err)
