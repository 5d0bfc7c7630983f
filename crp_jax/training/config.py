"""The settings of a training run (:class:`TrainConfig`): everything that determines the
trained weights, plus bookkeeping fields that do not (checkpoints, logging, validation).

Held-out data: the scenes used to report quality (:data:`crp_jax.data.splits.HELDOUT_SEED`)
and the small validation set watched during training (``VALIDATION_SEED``) are other
data-set seeds; :class:`TrainConfig` refuses to train on either.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crp_jax.data.splits import HELDOUT_SEED, RESERVED_SEEDS, TRAIN_SEED, VALIDATION_SEED
from crp_jax.errors import ConfigError
from crp_jax.ssd.config import (
    SSDConfig,
    nested_tuple,  # one list -> tuple helper for both configs
    reject_unknown_fields,
)
from crp_jax.ssd.meta import Meta

__all__ = ["TrainConfig", "BOOKKEEPING_FIELDS", "TRAIN_PRESETS"]

# Fields of TrainConfig that do not change the trained weights (a resumed run may differ here).
BOOKKEEPING_FIELDS = frozenset(
    {"ckpt_dir", "ckpt_interval", "keep_checkpoints", "eval_interval", "eval_scenes", "progress", "log_interval"}
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (frozen, JSON-serialisable).

    Optimisation: ``steps`` of ``batch_size`` scenes; AdamW with peak learning rate ``lr``,
    linear warm-up over ``warmup_steps``, cosine decay to ``lr * final_lr_frac``; decoupled
    ``weight_decay``; gradients clipped to global norm ``grad_clip`` (0 = off).

    Model: ``backbone`` "vgg16" is ``SSDConfig.small(num_classes=7, image_size, width,
    num_sources, fc_dilation, scales, aspect_ratios)``, "mobilenet_v3_large" is
    ``SSDConfig.ssdlite_small(...)`` with the same fields (``fc_dilation`` unused), trained
    in its folded form (no BatchNorm); None = the preset's default. Preprocessing
    ``(v - mean) / std`` on [0, 1] pixels, the same value for all three channels.
    :meth:`preset` names the settings of the shipped models.

    Targets / loss: IoU ``match_threshold`` for positives, ``neg_pos_ratio`` hard negatives
    per positive.

    Augmentation (off by default: the generator never repeats a scene, so there is nothing
    to over-fit): ``augment_photometric`` jitters brightness, contrast and per-channel gain;
    ``augment_invert`` inverts the colours of half of the images. Horizontal flips are not
    offered: a mirrored E is not an E.

    Bookkeeping (does not change the result): ``ckpt_dir`` (None = no checkpoints),
    ``ckpt_interval`` steps between checkpoints, ``keep_checkpoints`` newest kept,
    ``eval_interval`` steps between validation mAPs on ``eval_scenes`` scenes (0 = never),
    ``log_interval`` steps between printed loss lines, ``progress`` (a progress bar).
    """

    seed: int = TRAIN_SEED
    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 200
    final_lr_frac: float = 0.02
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    # model
    backbone: str = "vgg16"
    image_size: int = 128
    width: float = 0.125
    num_sources: int = 4
    fc_dilation: int = 2
    scales: tuple[float, ...] | None = None
    aspect_ratios: tuple[tuple[float, ...], ...] | None = None
    mean: float = 0.5
    std: float = 0.25
    # targets and loss
    match_threshold: float = 0.5
    neg_pos_ratio: float = 3.0
    # augmentation
    augment_photometric: bool = False
    augment_invert: bool = False
    # bookkeeping
    ckpt_dir: str | None = None
    ckpt_interval: int = 250
    keep_checkpoints: int = 2
    eval_interval: int = 0
    eval_scenes: int = 50
    log_interval: int = 100
    progress: bool = True

    def __post_init__(self):
        for name in ("scales", "aspect_ratios"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, nested_tuple(v))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        need(is_int(self.seed) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        need(
            self.seed not in RESERVED_SEEDS,
            f"seed {self.seed} is reserved for held-out evaluation (test {HELDOUT_SEED}, "
            f"validation {VALIDATION_SEED}); train on another data set",
        )
        need(is_int(self.steps) and self.steps >= 1, f"steps must be an integer >= 1, got {self.steps!r}")
        need(
            is_int(self.batch_size) and self.batch_size >= 1,
            f"batch size must be an integer >= 1, got {self.batch_size!r}",
        )
        need(math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr!r}")
        need(
            is_int(self.warmup_steps) and self.warmup_steps >= 0,
            f"warmup_steps must be >= 0, got {self.warmup_steps!r}",
        )
        need(0.0 <= self.final_lr_frac <= 1.0, f"final_lr_frac must be in [0, 1], got {self.final_lr_frac!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        need(self.std > 0, f"std must be > 0, got {self.std!r}")
        need(0.0 < self.match_threshold <= 1.0, f"match_threshold must be in (0, 1], got {self.match_threshold!r}")
        need(self.neg_pos_ratio >= 0, f"neg_pos_ratio must be >= 0, got {self.neg_pos_ratio!r}")
        need(
            is_int(self.ckpt_interval) and self.ckpt_interval >= 1,
            f"ckpt_interval must be >= 1, got {self.ckpt_interval!r}",
        )
        need(
            is_int(self.keep_checkpoints) and self.keep_checkpoints >= 1,
            f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}",
        )
        need(
            is_int(self.eval_interval) and self.eval_interval >= 0,
            f"eval_interval must be >= 0, got {self.eval_interval!r}",
        )
        need(is_int(self.eval_scenes) and self.eval_scenes >= 1, f"eval_scenes must be >= 1, got {self.eval_scenes!r}")
        need(
            is_int(self.log_interval) and self.log_interval >= 1,
            f"log_interval must be >= 1, got {self.log_interval!r}",
        )
        self.model_config()  # architecture errors surface here, not in the middle of a run

    # ---- derived objects ---------------------------------------------------------------
    def model_config(self) -> SSDConfig:
        from crp_jax.data import NUM_CLASSES

        if self.backbone == "mobilenet_v3_large":
            return SSDConfig.ssdlite_small(
                num_classes=NUM_CLASSES,
                image_size=self.image_size,
                width=self.width,
                num_sources=self.num_sources,
                aspect_ratios=self.aspect_ratios,
                scales=self.scales,
            )
        if self.backbone != "vgg16":
            raise ConfigError(f"backbone must be 'vgg16' or 'mobilenet_v3_large', got {self.backbone!r}")
        return SSDConfig.small(
            num_classes=NUM_CLASSES,
            image_size=self.image_size,
            width=self.width,
            num_sources=self.num_sources,
            aspect_ratios=self.aspect_ratios,
            fc_dilation=self.fc_dilation,
            scales=self.scales,
        )

    def meta(self) -> Meta:
        from crp_jax.data import CLASS_NAMES

        return Meta(
            config=self.model_config(),
            class_names=CLASS_NAMES,
            mean=(self.mean,) * 3,
            std=(self.std,) * 3,
            source="crp-jax",
        )

    def scene_spec(self):
        """The data set: the generator's default scenes (128 px; resized to the model)."""
        from crp_jax.data import SceneSpec

        return SceneSpec()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The fields that determine the trained weights (bookkeeping left out). ``backbone``
        is left out while it is "vgg16", so that the default checkpoint folders (a hash of
        this dict) of runs started before the field existed keep their names."""
        d = {k: v for k, v in self.to_dict().items() if k not in BOOKKEEPING_FIELDS}
        if d["backbone"] == "vgg16":
            del d["backbone"]
        return d

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The settings a shipped model was trained with: "default" (the small VGG SSD,
        ``weights/default.*``) or "ssdlite" (SSDlite-MobileNetV3 at width 0.35, 256 px input,
        four sources; ``weights/ssdlite.*``), with ``overrides`` replacing fields."""
        if name not in TRAIN_PRESETS:
            raise ConfigError(f"unknown training preset {name!r}; known: {sorted(TRAIN_PRESETS)}")
        return cls(**{**TRAIN_PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        reject_unknown_fields(cls, d)
        return cls(**d)


#: Named training settings (:meth:`TrainConfig.preset`): the fields that differ from the defaults.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ssdlite": {
        "backbone": "mobilenet_v3_large",
        "image_size": 256,
        "width": 0.35,
        "num_sources": 4,
        "steps": 1800,
        "lr": 2e-3,
    },
}


def _result_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every bookkeeping field at its default: equal for all runs that train the
    same weights (the key of the compiled-step cache)."""
    d = TrainConfig()
    return dataclasses.replace(cfg, **{k: getattr(d, k) for k in BOOKKEEPING_FIELDS})
