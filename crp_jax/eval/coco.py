"""Ground truth from COCO-format annotation files, and COCO's mAP@[.5:.95].

COCO's JSON (``images``, ``annotations``, ``categories``; a box is ``[x, y, width, height]``
in the image's pixels) is the format every detection tool reads and writes, so it is how
ground truth for a user's own images reaches ``crp-jax report --annotations FILE.json``.
:func:`load_coco` checks the file against the images and the model's classes and refuses,
naming the file, the field and the value (:class:`crp_jax.errors.AnnotationError`): an
empty file, an annotation of an image id the file does not list, a box outside its image,
a category whose name is not a class of the model. Categories are matched to the model's
classes by name (``meta.class_names``), never by id, since ids differ between tools.

An image that the file does not list, or lists without annotations, is *not annotated*
(:meth:`CocoAnnotations.for_image` says which): the report says so instead of reading it as
"no objects here" and calling every detection a false alarm.

COCO's mAP@[.5:.95] comes from pycocotools (``pip install 'crp-jax[coco]'``), the reference
implementation that every published COCO number is computed with; writing it again would give
numbers that are not comparable (its 101-point interpolation, its crowd and area rules).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crp_jax.errors import AnnotationError, MissingExtraError

__all__ = ["ImageAnnotations", "CocoAnnotations", "load_coco", "coco_map"]


@dataclass(frozen=True, eq=False)
class ImageAnnotations:
    """One image of an annotation file: ``boxes [G, 4]`` xyxy in its pixels, ``labels [G]``
    class indices of the model (1..K-1)."""

    file_name: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True, eq=False)
class CocoAnnotations:
    """A checked annotation file: its images by file name (and base name)."""

    path: str
    images: dict[str, ImageAnnotations]

    def for_image(self, path) -> tuple[ImageAnnotations | None, str]:
        """``(annotations, "")`` for an image file with annotations, else ``(None, why)``:
        the file does not list it, or lists it without annotations."""
        name = Path(path).name
        ann = self.images.get(str(path)) or self.images.get(name)
        if ann is None:
            return None, f"{self.path} does not list {name}"
        if len(ann.labels) == 0:
            return None, f"{self.path} lists {name} (image id {ann.image_id}) without annotations"
        return ann, ""


def _fail(path, field: str, value, why: str) -> AnnotationError:
    return AnnotationError(f"{path}: {field} {value!r}: {why}")


def load_coco(path, class_names: Sequence[str]) -> CocoAnnotations:
    """Read and check a COCO annotation file against the model's ``class_names`` (index 0 =
    background). Raises :class:`AnnotationError` naming file, field and value."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise AnnotationError(f"{path}: empty file (expected COCO JSON with images, annotations, categories)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _fail(path, "top level", type(doc).__name__, "must be an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise _fail(path, key, doc.get(key), "must be a list (COCO format)")
    if not doc["images"]:
        raise _fail(path, "images", [], "lists no image")
    names = {str(n): k for k, n in enumerate(class_names) if k > 0}
    cat_class = {}
    for i, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise _fail(path, f"categories[{i}]", c, "needs an id and a name")
        if str(c["name"]) not in names:
            raise _fail(path, f"categories[{i}].name", c["name"], f"is not a class of the model ({', '.join(names)})")
        cat_class[c["id"]] = names[str(c["name"])]
    by_id: dict = {}
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "width", "height")):
            raise _fail(path, f"images[{i}]", im, "needs id, file_name, width and height")
        w, h = im["width"], im["height"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
            raise _fail(path, f"images[{i}].width/height", [w, h], "must be positive integers")
        if im["id"] in by_id:
            raise _fail(path, f"images[{i}].id", im["id"], "repeats an earlier image's id")
        by_id[im["id"]] = (str(im["file_name"]), int(w), int(h), [], [])
    for i, a in enumerate(doc["annotations"]):
        if not isinstance(a, dict) or not all(k in a for k in ("image_id", "category_id", "bbox")):
            raise _fail(path, f"annotations[{i}]", a, "needs image_id, category_id and bbox")
        if a["image_id"] not in by_id:
            raise _fail(path, f"annotations[{i}].image_id", a["image_id"], "is not the id of an image in the file")
        if a["category_id"] not in cat_class:
            raise _fail(path, f"annotations[{i}].category_id", a["category_id"], "is not the id of a category")
        name, w, h, boxes, labels = by_id[a["image_id"]]
        bb = a["bbox"]
        ok = isinstance(bb, list) and len(bb) == 4 and all(_is_number(v) for v in bb)
        if not ok or bb[2] <= 0 or bb[3] <= 0:
            raise _fail(path, f"annotations[{i}].bbox", bb, "must be [x, y, width, height] with width, height > 0")
        x1, y1, x2, y2 = bb[0], bb[1], bb[0] + bb[2], bb[1] + bb[3]
        if x1 < 0 or y1 < 0 or x2 > w + 1e-6 or y2 > h + 1e-6:
            raise _fail(path, f"annotations[{i}].bbox", bb, f"lies outside its {w}x{h} image {name}")
        boxes.append((x1, y1, min(x2, w), min(y2, h)))
        labels.append(cat_class[a["category_id"]])
    images = {}
    for image_id, (name, w, h, boxes, labels) in by_id.items():
        ann = ImageAnnotations(
            name, image_id, w, h, np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels, np.int64)
        )
        images[name] = ann
    return CocoAnnotations(str(path), images)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def coco_map(detections: Sequence, ground_truths: Sequence, class_names: Sequence[str], sizes=None) -> dict:
    """COCO box AP by pycocotools: ``{"map": AP@[.5:.95], "map50": AP@.5, "map75": AP@.75}``.

    Args:
      detections: per image ``(boxes [D, 4] xyxy, scores [D], labels [D])`` or objects with
        those attributes (``crp_jax.detect``'s).
      ground_truths: per image ``(boxes [G, 4] xyxy, labels [G])`` or objects with ``boxes``
        and ``labels`` (a generated ``Scene``).
      class_names: index 0 is background (never evaluated).
      sizes: per image ``(H, W)`` (default: the extent of its boxes; only COCO's area
        ranges, which these numbers do not report, depend on it).

    Raises :class:`MissingExtraError` when pycocotools is not installed.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MissingExtraError("COCO mAP needs pycocotools: pip install 'crp-jax[coco]'") from None
    from crp_jax.eval.voc import detection_fields, truth_fields

    images, anns, dets = [], [], []
    for i, (det, gt) in enumerate(zip(detections, ground_truths, strict=True)):
        g_boxes, g_labels = truth_fields(gt)
        d_boxes, d_scores, d_labels = detection_fields(det)
        if sizes is not None:
            H, W = sizes[i]
        else:
            extent = np.concatenate([g_boxes, d_boxes]) if len(g_boxes) + len(d_boxes) else np.ones((1, 4))
            H, W = float(extent[:, 3].max()), float(extent[:, 2].max())
        images.append({"id": i, "width": W, "height": H})
        for b, k in zip(g_boxes, g_labels):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {"id": len(anns) + 1, "image_id": i, "category_id": int(k), "bbox": [float(b[0]), float(b[1]), w, h],
                 "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        for b, s, k in zip(d_boxes, d_scores, d_labels):
            dets.append(
                {"image_id": i, "category_id": int(k), "score": float(s),
                 "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            )  # fmt: skip
    cats = [{"id": k, "name": str(n)} for k, n in enumerate(class_names) if k > 0]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": cats}
        gt.createIndex()
        if not dets or not anns:  # pycocotools cannot load an empty result list
            v = 0.0 if anns else float("nan")
            return {"map": v, "map50": v, "map75": v}
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"map": float(s[0]), "map50": float(s[1]), "map75": float(s[2])}
