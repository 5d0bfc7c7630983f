"""What a set of weights needs beside its arrays: class names, preprocessing, pixel bounds.

``Meta`` travels with ``(model, variables)`` everywhere (``load_pretrained``, converters,
``crp_jax.ssd.io``) and is stored as JSON, never pickled.

Preprocessing maps an RGB image with values ``v`` in [0, 1] (``uint8 / 255``) to the model
input ``(v - mean) / std`` per channel. The z^B rule needs the bounds of that input, which
follow: ``low = (0 - mean) / std``, ``high = (1 - mean) / std``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from crp_jax.errors import ConfigError
from crp_jax.ssd.config import SSDConfig

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
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.class_names) != self.config.num_classes:
            raise ConfigError(
                f"meta has {len(self.class_names)} class names but the config has num_classes={self.config.num_classes}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(f"mean and std need 3 entries each, std > 0; got {self.mean}, {self.std}")

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


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """VOC names at 21 classes, torchvision's COCO names at 91, else ``class_1`` ...
    (index 0 background)."""
    if num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    return ("__background__",) + tuple(f"class_{i}" for i in range(1, num_classes))
