"""Ground truth from COCO annotation files (crp_jax/eval/coco.py) and COCO mAP by pycocotools,
on hand-built files and boxes whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crp_jax.errors import AnnotationError
from crp_jax.eval.coco import coco_map, load_coco

NAMES = ("__background__", "E", "F", "O")


def _write(tmp_path, doc, name="ann.json"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _doc(**changes):
    doc = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 9, "file_name": "b.png", "width": 50, "height": 50},
        ],
        "categories": [{"id": 1, "name": "O"}, {"id": 5, "name": "E"}],  # ids are not the model's
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [60.5, 0, 39.5, 80]},
        ],
    }
    doc.update(changes)
    return doc


def test_boxes_become_xyxy_and_categories_map_to_classes_by_name(tmp_path):
    ann = load_coco(_write(tmp_path, _doc()), NAMES)
    a, why = ann.for_image("/somewhere/a.png")
    assert why == ""
    np.testing.assert_array_equal(a.boxes, [[10, 20, 40, 60], [60.5, 0, 100, 80]])
    np.testing.assert_array_equal(a.labels, [1, 3])  # E is class 1, O class 3
    assert (a.width, a.height, a.image_id) == (100, 80, 7)


def test_images_without_annotations_are_reported_as_such(tmp_path):
    ann = load_coco(_write(tmp_path, _doc()), NAMES)
    a, why = ann.for_image("b.png")
    assert a is None and "lists b.png (image id 9) without annotations" in why
    a, why = ann.for_image("c.png")
    assert a is None and "does not list c.png" in why


@pytest.mark.parametrize(
    "doc,match",
    [
        ("", r"ann\.json: empty file"),
        ("  \n", r"empty file"),
        ("{not json", r"not JSON"),
        (_doc(images=[]), r"ann\.json: images \[\]: lists no image"),
        (_doc(annotations=None), r"annotations None: must be a list"),
        (
            _doc(annotations=[{"id": 1, "image_id": 8, "category_id": 5, "bbox": [1, 1, 2, 2]}]),
            r"ann\.json: annotations\[0\]\.image_id 8: is not the id of an image",
        ),
        (
            _doc(annotations=[{"id": 1, "image_id": 9, "category_id": 5, "bbox": [40, 10, 20, 5]}]),
            r"annotations\[0\]\.bbox \[40, 10, 20, 5\]: lies outside its 50x50 image b\.png",
        ),
        (
            _doc(annotations=[{"id": 1, "image_id": 9, "category_id": 5, "bbox": [-1, 10, 20, 5]}]),
            r"annotations\[0\]\.bbox \[-1, 10, 20, 5\]: lies outside",
        ),
        (
            _doc(annotations=[{"id": 1, "image_id": 9, "category_id": 5, "bbox": [1, 1, 0, 5]}]),
            r"bbox \[1, 1, 0, 5\]: must be \[x, y, width, height\]",
        ),
        (_doc(categories=[{"id": 5, "name": "dog"}]), r"categories\[0\]\.name 'dog': is not a class of the model"),
        (
            _doc(annotations=[{"id": 1, "image_id": 9, "category_id": 2, "bbox": [1, 1, 2, 2]}]),
            r"annotations\[0\]\.category_id 2: is not the id of a category",
        ),
    ],
)
def test_annotations_that_do_not_fit_name_file_field_and_value(tmp_path, doc, match):
    with pytest.raises(AnnotationError, match=match):
        load_coco(_write(tmp_path, doc), NAMES)


def test_coco_map_by_hand():
    gt = [(np.array([[0.0, 0, 10, 10]]), np.array([1]))]
    # an exact box: AP 1 at every IoU threshold .50 .. .95
    exact = [(np.array([[0.0, 0, 10, 10]]), np.array([0.9]), np.array([1]))]
    res = coco_map(exact, gt, NAMES)
    assert res["map"] == pytest.approx(1.0) and res["map50"] == pytest.approx(1.0)
    # IoU 62 / 100 = 0.62: a true positive at .50, .55 and .60 only -> 3 of 10 thresholds
    loose = [(np.array([[0.0, 0, 10, 6.2]]), np.array([0.9]), np.array([1]))]
    res = coco_map(loose, gt, NAMES)
    assert res["map"] == pytest.approx(0.3) and res["map50"] == pytest.approx(1.0) and res["map75"] == 0.0
    # the wrong class finds nothing
    wrong = [(np.array([[0.0, 0, 10, 10]]), np.array([0.9]), np.array([2]))]
    assert coco_map(wrong, gt, NAMES)["map"] == pytest.approx(0.0)


def test_evaluate_reports_coco_map_beside_voc():
    import crp_jax as cj
    from crp_jax.eval import evaluate, format_table

    model, variables, meta = cj.load_pretrained()
    res = evaluate(model, variables, meta, n=3, batch_size=3)
    coco = res["coco"]
    # a stricter average over IoU thresholds .5 .. .95 cannot exceed its own AP@.5
    assert 0.0 < coco["map"] <= coco["map50"] <= 1.0 and coco["map75"] <= coco["map50"]
    assert f"COCO mAP@[.5:.95] {coco['map']:.4f}" in format_table(res)
