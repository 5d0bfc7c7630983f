"""What a set of weights needs beside its arrays: class names, preprocessing, pixel bounds.

``Meta`` travels with ``(model, variables)`` everywhere (``load_pretrained``, converters,
``crp_jax.ssd.io``) and is stored as JSON, never pickled.

Preprocessing maps an RGB image with values ``v`` in [0, 1] (``uint8 / 255``) to the model
input ``(v - mean) / std`` per channel. The z^B rule needs the bounds of that input, which
follow: ``low = (0 - mean) / std``, ``high = (1 - mean) / std``.

Every ``Meta`` is validated when it is made (so also when a JSON sidecar is read, where
``crp_jax.ssd.io.read_meta`` turns the error into a ``CheckpointError`` naming the file):

- ``mean``: 3 finite numbers with ``|mean| <= MEAN_LIMIT`` (1e3);
- ``std``: 3 finite numbers in ``STD_RANGE`` (1e-3 .. 1e3). torchvision's 1/255 = 3.9e-3 is
  inside; a std of 1e-45 (a float32 denormal) would turn every pixel into Inf;
- ``config.image_size`` in ``IMAGE_SIZE_RANGE`` (16 .. 4096): the config alone allows any
  size >= 16, but a sidecar saying 100000 would make ``preprocess`` allocate 112 GiB;
- one ``str`` class name per class (``len(class_names) == config.num_classes``), none empty
  and no two alike (``--contrast E`` must mean one class), except torchvision's COCO
  placeholder ``"N/A"`` for unused ids (which :meth:`Meta.class_index` refuses to look up);
- ``postprocess``: the detection settings of the weights' source (:class:`Postprocess`):
  torchvision's ssd300_vgg16 and ssd.pytorch use NMS IoU 0.45, 400 candidates per class and
  200 detections, torchvision's ssdlite320 0.55, 300 and 300 (score 0.001). ``detect``
  uses them unless told otherwise; a sidecar without them (older files) gets SSD300's.

A JSON record (``from_dict``) must name every field but ``source`` and ``postprocess``:
a sidecar without ``mean`` or ``std`` is refused rather than read as 0 / 1.

With these bounds ``(v - mean) / std`` for pixels ``v`` in [0, 1] is at most
``(1 + 1e3) / 1e-3 ~ 1e6`` in magnitude, so ``preprocess`` cannot return NaN or Inf for
finite pixels. The same check (:func:`check_preprocessing`) runs in ``preprocess`` for
duck-typed meta objects.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crp_jax.errors import ConfigError
from crp_jax.ssd.config import SSDConfig, reject_unknown_fields

#: Largest ``|mean|`` accepted (pixel units: the image is in [0, 1]).
MEAN_LIMIT = 1e3
#: Closed range of accepted ``std`` entries.
STD_RANGE = (1e-3, 1e3)
#: Closed range of accepted input sizes ``config.image_size`` for a Meta (pixels).
IMAGE_SIZE_RANGE = (16, 4096)

# torchvision's ssd300_vgg16 transform: image_mean, image_std = 1/255 (inputs in 0..255 - mean).
TORCHVISION_MEAN = (0.48235, 0.45882, 0.40784)
TORCHVISION_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)
# ssd.pytorch (amdegroot): BGR means (104, 117, 123) on 0..255, no scaling; stored here in RGB
# because its converter flips conv1_1 to take RGB input like every other model here.
SSDPYTORCH_MEAN = (123.0 / 255.0, 117.0 / 255.0, 104.0 / 255.0)
SSDPYTORCH_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)

VOC_CLASSES = (
    "__background__",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# torchvision's COCO_V1 detection categories (91 = the original COCO ids 0..90; ids that
# COCO left unused are "N/A"), the label space of torchvision's ssd300_vgg16 weights.
COCO_CLASSES = (
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def _is_number(v) -> bool:
    # bool is an int to Python, and a string would be float()-ed silently: refuse both.
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Postprocess:
    """Detection settings of a set of weights (torchvision's names: ``score_thresh``,
    ``nms_thresh``, ``detections_per_img``, ``topk_candidates``); ``crp_jax.detect`` uses
    them when its own arguments are not given. Defaults: SSD300's."""

    score_threshold: float = 0.01
    nms_threshold: float = 0.45
    max_detections: int = 200
    topk_candidates: int = 400

    def __post_init__(self):
        for name in ("score_threshold", "nms_threshold"):
            v = getattr(self, name)
            if not _is_number(v) or not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ConfigError(f"meta field 'postprocess.{name}' must be a number in [0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))
        for name, lo in (("max_detections", 0), ("topk_candidates", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ConfigError(f"meta field 'postprocess.{name}' must be an int >= {lo}, got {v!r}")
            object.__setattr__(self, name, int(v))

    @classmethod
    def from_dict(cls, d) -> Postprocess:
        if not isinstance(d, dict):
            raise ConfigError(f"meta field 'postprocess' must be an object, got {d!r}")
        reject_unknown_fields(cls, d)
        return cls(**d)


#: torchvision ``ssd300_vgg16`` (and ssd.pytorch: conf 0.01, NMS 0.45, top 200).
SSD300_POSTPROCESS = Postprocess()
#: torchvision ``ssdlite320_mobilenet_v3_large``.
SSDLITE_POSTPROCESS = Postprocess(score_threshold=0.001, nms_threshold=0.55, max_detections=300, topk_candidates=300)
#: Names that may repeat in ``class_names`` (torchvision's COCO ids that COCO left unused).
PLACEHOLDER_NAMES = ("N/A",)


@dataclass(frozen=True)
class Meta:
    """Everything about a set of weights that is not an array.

    Attributes:
      config: the architecture.
      class_names: one per class, index 0 is background (len == config.num_classes).
      mean, std: per-channel RGB preprocessing on [0, 1] pixel values (see module doc).
      source: where the weights came from ("crp-jax", "torchvision", "ssd.pytorch", ...).
      postprocess: the detection settings of that source (:class:`Postprocess`).
    """

    config: SSDConfig
    class_names: tuple[str, ...]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = "crp-jax"
    postprocess: Postprocess = SSD300_POSTPROCESS

    def __post_init__(self):
        if not isinstance(self.config, SSDConfig):
            raise ConfigError(f"meta field 'config' must be an SSDConfig, got {type(self.config).__name__}")
        if isinstance(self.class_names, str) or not hasattr(self.class_names, "__iter__"):
            raise ConfigError(f"meta field 'class_names' must be a list of strings, got {self.class_names!r}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        mean, std = check_preprocessing(self.mean, self.std, self.config.image_size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if len(self.class_names) != self.config.num_classes:
            raise ConfigError(
                f"meta has {len(self.class_names)} class names but the config has num_classes={self.config.num_classes}"
            )
        not_str = [c for c in self.class_names if not isinstance(c, str)]
        if not_str:
            raise ConfigError(f"meta field 'class_names' must hold strings, got {not_str[0]!r}")
        empty = [i for i, c in enumerate(self.class_names) if not c.strip()]
        if empty:
            raise ConfigError(f"meta field 'class_names' has an empty name at index {empty[0]}")
        seen: dict[str, int] = {}
        for i, c in enumerate(self.class_names):
            if c in seen and c not in PLACEHOLDER_NAMES:
                raise ConfigError(f"meta field 'class_names' names {c!r} twice (indices {seen[c]} and {i})")
            seen.setdefault(c, i)
        if not isinstance(self.postprocess, Postprocess):
            raise ConfigError(f"meta field 'postprocess' must be a Postprocess, got {self.postprocess!r}")
        if not isinstance(self.source, str):
            raise ConfigError(f"meta field 'source' must be a string, got {self.source!r}")

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def regressor_names(self) -> tuple[str, ...]:
        """The names of the ``loc`` output's regressors: SSD's box offsets (cx, cy, w, h).
        A property, not a field: fixed for every SSD, so the JSON does not carry it."""
        return ("cx", "cy", "w", "h")

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def pixel_bounds(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(low, high) per channel of the preprocessed input, for the z^B rule."""
        low = tuple((0.0 - m) / s for m, s in zip(self.mean, self.std))
        high = tuple((1.0 - m) / s for m, s in zip(self.mean, self.std))
        return low, high

    def class_index(self, name: str) -> int:
        if self.class_names.count(name) > 1:
            raise ConfigError(f"class name {name!r} names {self.class_names.count(name)} classes; give an index")
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ConfigError(f"unknown class name {name!r}; known: {list(self.class_names[1:])}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Meta:
        try:
            d = dict(d)
            reject_unknown_fields(cls, d)
            missing = [f for f in ("config", "class_names", "mean", "std") if f not in d]
            if missing:
                raise ConfigError(f"meta record has no {', '.join(repr(f) for f in missing)} field")
            d["config"] = SSDConfig.from_dict(d["config"])
            if "postprocess" in d:
                d["postprocess"] = Postprocess.from_dict(d["postprocess"])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a crp-jax meta record: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> Meta:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"meta is not valid JSON: {e}") from None


def check_preprocessing(mean, std, image_size) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate preprocessing values (see the module doc for the ranges and why) and return
    ``(mean, std)`` as tuples of 3 floats. Raises :class:`ConfigError` naming the field and
    its value."""

    def triple(name, value, ok, want):
        try:
            items = tuple(value)
        except TypeError:
            raise ConfigError(f"meta field {name!r} must be 3 numbers (R, G, B), got {value!r}") from None
        if len(items) != 3 or not all(_is_number(v) for v in items):
            raise ConfigError(f"meta field {name!r} must be 3 numbers (R, G, B), got {value!r}")
        out = tuple(float(v) for v in items)
        bad = [v for v in out if not (math.isfinite(v) and ok(v))]
        if bad:
            raise ConfigError(f"meta field {name!r} = {out} has {bad[0]!r}; every entry must be {want}")
        return out

    mean = triple("mean", mean, lambda v: abs(v) <= MEAN_LIMIT, f"finite with |mean| <= {MEAN_LIMIT:g}")
    lo, hi = STD_RANGE
    std = triple("std", std, lambda v: lo <= v <= hi, f"finite in [{lo:g}, {hi:g}]")
    lo, hi = IMAGE_SIZE_RANGE
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not lo <= image_size <= hi:
        raise ConfigError(f"meta field 'config.image_size' = {image_size!r} must be an int in [{lo}, {hi}]")
    return mean, std


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """VOC names at 21 classes, torchvision's COCO names at 91, else ``class_1`` ...
    (index 0 background)."""
    if num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return ("__background__",) + tuple(f"class_{i}" for i in range(1, num_classes))
