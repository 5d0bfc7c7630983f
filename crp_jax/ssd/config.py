"""Architecture configuration of the SSD detector.

An :class:`SSDConfig` is a frozen description of the network (VGG-style backbone, extra
layers, sources, default boxes). ``SSDConfig.ssd300_vgg16(num_classes)`` is the paper's
SSD300 exactly; smaller variants (channel width multiplier, input size, fewer sources,
fewer anchors per cell) come from the same fields, so every CRP layer type exists in all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from crp_jax.errors import ConfigError

ANCHOR_CONVENTIONS = ("torchvision", "ssd.pytorch")
# "vgg16": SSD300's VGG backbone (crp_jax.ssd.model.SSD); "mobilenet_v3_large": SSDlite's
# MobileNetV3-Large with torchvision's reduced tail (crp_jax.ssd.ssdlite.SSDLite).
BACKBONES = ("vgg16", "mobilenet_v3_large")

# VGG16 up to conv4_3: ints are 3x3 convs (padding 1), "M" a 2x2/2 max-pool, "C" the same
# pool in ceil mode (torchvision patches pool3 to ceil mode so that 300 -> 38).
VGG16_TO_CONV4_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512)


@dataclass(frozen=True)
class SSDConfig:
    """Frozen architecture description; see the class methods for presets.

    Attributes:
      num_classes: number of classes K *including* background at index 0.
      image_size: square input side S; the model takes ``[B, S, S, 3]`` NHWC float32.
      width: channel multiplier applied to every feature conv (1.0 = SSD300).
      vgg: backbone up to the first source (conv4_3): channel counts and pools.
      conv5: channels of conv5_1..conv5_n (after pool4); pool5 is 3x3/1/1 after them.
      fc: channels of conv6 (3x3, dilation ``fc_dilation``) and conv7 (1x1).
      extras: one ``(mid, out, stride, padding)`` per extra source: conv{n}_1 is a 1x1 conv
        to ``mid`` channels, conv{n}_2 a 3x3 conv to ``out`` with that stride and padding.
      aspect_ratios: per source, the ratios beyond 1; anchors per cell = 2 + 2 * len(ratios).
      anchor_convention: "torchvision" (relative ``scales``) or "ssd.pytorch" (pixel
        ``min_sizes``/``max_sizes``).
      scales: torchvision convention, one per source plus one (s'_k = sqrt(s_k s_{k+1})).
      min_sizes, max_sizes: ssd.pytorch convention, pixels, one per source.
      steps: pixel stride of each source's cells; ``None`` derives ``image_size / cells``.
      clip_anchors: clamp default-box width/height to [0, 1] (both conventions do).
      l2norm_init: initial per-channel scale of the L2Norm on the first source.
      backbone: "vgg16" (the fields vgg ... fc_dilation, l2norm_init describe it) or
        "mobilenet_v3_large" (SSDlite: those fields are unused; ``width`` is MobileNetV3's
        width multiplier; ``extras`` are torchvision's SSDlite extra blocks, 1x1 to ``mid``
        = ``out // 2``, depthwise 3x3 with that stride and padding, 1x1 to ``out``).
    """

    num_classes: int = 21
    image_size: int = 300
    width: float = 1.0
    vgg: tuple = VGG16_TO_CONV4_3
    conv5: tuple[int, ...] = (512, 512, 512)
    fc: tuple[int, int] = (1024, 1024)
    fc_dilation: int = 6
    extras: tuple[tuple[int, int, int, int], ...] = (
        (256, 512, 2, 1),
        (128, 256, 2, 1),
        (128, 256, 1, 0),
        (128, 256, 1, 0),
    )
    aspect_ratios: tuple[tuple[float, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    anchor_convention: str = "torchvision"
    scales: tuple[float, ...] | None = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
    min_sizes: tuple[float, ...] | None = None
    max_sizes: tuple[float, ...] | None = None
    steps: tuple[float, ...] | None = (8, 16, 32, 64, 100, 300)
    clip_anchors: bool = True
    l2norm_init: float = 20.0
    backbone: str = "vgg16"

    def __post_init__(self):
        # Normalise lists (e.g. from JSON) to tuples so the config stays hashable.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, nested_tuple(v))
        self.validate()

    # ---- presets -------------------------------------------------------------------
    @classmethod
    def ssd300_vgg16(cls, num_classes: int = 21) -> SSDConfig:
        """The paper's SSD300-VGG16 with torchvision's default boxes (8732 anchors)."""
        return cls(num_classes=num_classes)

    @classmethod
    def ssd300_vgg16_ssdpytorch(cls, num_classes: int = 21) -> SSDConfig:
        """SSD300-VGG16 with ssd.pytorch's (amdegroot) VOC prior boxes."""
        return cls(
            num_classes=num_classes,
            anchor_convention="ssd.pytorch",
            scales=None,
            min_sizes=(30, 60, 111, 162, 213, 264),
            max_sizes=(60, 111, 162, 213, 264, 315),
        )

    @classmethod
    def small(
        cls,
        num_classes: int,
        image_size: int = 128,
        width: float = 0.25,
        num_sources: int = 4,
        aspect_ratios: tuple[tuple[float, ...], ...] | None = None,
        fc_dilation: int = 2,
        scales: tuple[float, ...] | None = None,
    ) -> SSDConfig:
        """A reduced SSD keeping every CRP layer type (input conv, VGG convs, L2Norm source,
        dilated conv6, extras, cls/loc heads) at a fraction of the cost."""
        base = cls()
        extras = base.extras[: num_sources - 2]
        ars = aspect_ratios or base.aspect_ratios[:num_sources]
        if scales is None:
            # SSD paper's linear spread of scales over the sources, plus one.
            lo, hi = 0.1, 0.9
            scales = tuple(round(lo + (hi - lo) * k / max(num_sources - 1, 1), 4) for k in range(num_sources)) + (1.05,)
        return cls(
            num_classes=num_classes,
            image_size=image_size,
            width=width,
            extras=extras,
            aspect_ratios=tuple(tuple(a) for a in ars),
            fc_dilation=fc_dilation,
            scales=tuple(scales),
            steps=None,
        )

    @classmethod
    def ssdlite320_mobilenet_v3_large(cls, num_classes: int = 91) -> SSDConfig:
        """torchvision's ``ssdlite320_mobilenet_v3_large``: MobileNetV3-Large (reduced tail,
        as torchvision builds it whenever no ImageNet backbone is given, its COCO weights
        included), four extra blocks, sources at 20, 10, 5, 3, 2, 1 cells, six default
        boxes per cell (3234 at 320 px) from ``DefaultBoxGenerator([[2, 3]] * 6,
        min_ratio=0.2, max_ratio=0.95)``."""
        n = 6
        # torchvision's float arithmetic, so that the anchors match to the last bit
        scales = tuple(0.2 + (0.95 - 0.2) * k / (n - 1.0) for k in range(n)) + (1.0,)
        return cls(
            num_classes=num_classes,
            image_size=320,
            backbone="mobilenet_v3_large",
            extras=((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 2, 1), (64, 128, 2, 1)),
            aspect_ratios=((2, 3),) * n,
            scales=scales,
            steps=None,
        )

    @classmethod
    def ssdlite_small(
        cls,
        num_classes: int,
        image_size: int = 256,
        width: float = 0.5,
        num_sources: int = 4,
        aspect_ratios: tuple[tuple[float, ...], ...] | None = None,
        scales: tuple[float, ...] | None = None,
    ) -> SSDConfig:
        """A reduced SSDlite: MobileNetV3-Large at width multiplier ``width`` (every layer
        type of ssdlite320: hardswish, SE, inverted residuals, depthwise convs), the first
        ``num_sources - 2`` of its extra blocks, and :meth:`small`'s linear default scales.
        At 256 px its sources have 16, 8, 4, 2 cells (strides 16 .. 128)."""
        if not isinstance(num_sources, int) or not 2 <= num_sources <= 6:
            raise ConfigError(f"SSDlite has 2 to 6 sources, got num_sources={num_sources!r}")
        base = cls.ssdlite320_mobilenet_v3_large(num_classes)
        if scales is None:
            lo, hi = 0.1, 0.9
            scales = tuple(round(lo + (hi - lo) * k / max(num_sources - 1, 1), 4) for k in range(num_sources)) + (1.05,)
        return dataclasses.replace(
            base,
            image_size=image_size,
            width=width,
            extras=base.extras[: num_sources - 2],
            aspect_ratios=tuple(tuple(a) for a in (aspect_ratios or base.aspect_ratios[:num_sources])),
            scales=tuple(scales),
        )

    @classmethod
    def from_name(cls, name: str, num_classes: int = 21) -> SSDConfig:
        presets = {
            "ssd300_vgg16": cls.ssd300_vgg16,
            "ssd300_vgg16_ssdpytorch": cls.ssd300_vgg16_ssdpytorch,
            "ssdlite320_mobilenet_v3_large": cls.ssdlite320_mobilenet_v3_large,
        }
        if name not in presets:
            raise ConfigError(f"unknown config name {name!r}; known: {sorted(presets)}")
        return presets[name](num_classes)

    # ---- derived quantities ---------------------------------------------------------
    @property
    def num_sources(self) -> int:
        return 2 + len(self.extras)

    @property
    def anchors_per_cell(self) -> tuple[int, ...]:
        return tuple(2 + 2 * len(a) for a in self.aspect_ratios)

    def channels(self, c: int) -> int:
        """Width-scaled channel count (at least 4)."""
        return max(4, int(round(c * self.width)))

    def feature_sizes(self) -> tuple[int, ...]:
        """Side length (cells) of each source feature map."""
        n = self.image_size
        if self.backbone == "mobilenet_v3_large":
            for _ in range(4):  # stem and the C1..C3 blocks: stride 2, "same" padding
                n = (n - 1) // 2 + 1
            sizes = [n]  # C4's expansion; its stride-2 depthwise conv follows
            n = (n - 1) // 2 + 1
            sizes.append(n)
            for _mid, _out, stride, pad in self.extras:
                n = (n + 2 * pad - 3) // stride + 1
                sizes.append(n)
            return tuple(sizes)
        for v in self.vgg:
            if v == "M":
                n = n // 2
            elif v == "C":
                n = math.ceil(n / 2)
        sizes = [n]
        n = n // 2  # pool4; pool5 (3x3/1/1), conv6 (dilated, same padding), conv7 keep size
        sizes.append(n)
        for _mid, _out, stride, pad in self.extras:
            n = (n + 2 * pad - 3) // stride + 1
            sizes.append(n)
        return tuple(sizes)

    def source_steps(self) -> tuple[float, ...]:
        if self.steps is not None:
            return tuple(self.steps)
        return tuple(self.image_size / f for f in self.feature_sizes())

    def num_anchors(self) -> int:
        return sum(f * f * a for f, a in zip(self.feature_sizes(), self.anchors_per_cell))

    def validate(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ConfigError(f"num_classes must be an int >= 2 (background + 1), got {self.num_classes!r}")
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ConfigError(f"image_size must be an int >= 16, got {self.image_size!r}")
        if not self.width > 0:
            raise ConfigError(f"width must be > 0, got {self.width!r}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone {self.backbone!r} unknown; use one of {BACKBONES}")
        if self.backbone == "mobilenet_v3_large":
            for mid, out, _stride, _pad in self.extras:
                if mid != out // 2:
                    raise ConfigError(f"SSDlite extra blocks need mid == out // 2, got (mid, out) = ({mid}, {out})")
        if self.anchor_convention not in ANCHOR_CONVENTIONS:
            raise ConfigError(f"anchor_convention {self.anchor_convention!r} unknown; use one of {ANCHOR_CONVENTIONS}")
        ns = self.num_sources
        if len(self.aspect_ratios) != ns:
            raise ConfigError(f"aspect_ratios has {len(self.aspect_ratios)} entries, need one per source ({ns})")
        if self.anchor_convention == "torchvision":
            if self.scales is None or len(self.scales) != ns + 1:
                raise ConfigError(f"scales must have num_sources + 1 = {ns + 1} entries, got {self.scales!r}")
        else:
            if (
                self.min_sizes is None
                or self.max_sizes is None
                or len(self.min_sizes) != ns
                or len(self.max_sizes) != ns
            ):
                raise ConfigError(
                    f"ssd.pytorch convention needs {ns} min_sizes and max_sizes, got {self.min_sizes!r}, {self.max_sizes!r}"
                )
        if self.steps is not None and len(self.steps) != ns:
            raise ConfigError(f"steps has {len(self.steps)} entries, need {ns}")
        sizes = self.feature_sizes()
        if min(sizes) < 1:
            raise ConfigError(f"image_size {self.image_size} is too small for {ns} sources (feature sizes {sizes})")

    # ---- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSDConfig:
        reject_unknown_fields(cls, d)
        return cls(**{k: nested_tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def nested_tuple(v):
    """Lists (e.g. from JSON) -> tuples, recursively, so that frozen configs stay hashable."""
    if isinstance(v, (list, tuple)):
        return tuple(nested_tuple(x) for x in v)
    return v


def reject_unknown_fields(cls, d: dict[str, Any]) -> None:
    """``ConfigError`` naming the keys of ``d`` that are not fields of the dataclass ``cls``
    (e.g. a JSON config written by another version)."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)}")
