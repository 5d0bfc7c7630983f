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
- one ``str`` class name per class (``len(class_names) == config.num_classes``).

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


@dataclass(frozen=True)
class Meta:
    """Everything about a set of weights that is not an array.

    Attributes:
      config: the architecture.
      class_names: one per class, index 0 is background (len == config.num_classes).
      mean, std: per-channel RGB preprocessing on [0, 1] pixel values (see module doc).
      source: where the weights came from ("crp-jax", "torchvision", "ssd.pytorch", ...).
    """

    config: SSDConfig
    class_names: tuple[str, ...]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = "crp-jax"

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
        if not isinstance(self.source, str):
            raise ConfigError(f"meta field 'source' must be a string, got {self.source!r}")

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

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
            d["config"] = SSDConfig.from_dict(d["config"])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a crp-jax meta record: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> Meta:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"meta is not valid JSON: {e}") from None


def _is_number(v) -> bool:
    # bool is an int to Python, and a string would be float()-ed silently: refuse both.
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


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
