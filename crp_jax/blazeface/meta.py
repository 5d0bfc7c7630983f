"""What a BlazeFace model is beside its graph: :class:`BlazeFaceMeta`.

It plays the part :class:`crp_jax.ssd.meta.Meta` plays for SSDs (it travels with ``(model,
variables)``) and carries the detector's own pipeline: ``cj.preprocess_with_sizes`` and
``cj.detect`` hand a meta that has ``preprocess_with_sizes`` / ``detect`` methods its images
and raw outputs (crp_jax/ssd/detect.py), which is how letterboxing and MediaPipe's
post-processing replace SSD's.

The output contract (issue 23, for the relevance engine): ``model.apply(variables, x)`` with
``x [B, S, S, 3]`` in [-1, 1] returns ``(cls [B, A, 1], loc [B, A, 16])`` raw: one face
logit per anchor (sigmoid, no background column; ``class_names = ("face",)`` and a
detection's label is the logit column, 0) and :data:`REGRESSOR_NAMES` per anchor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from crp_jax.blazeface.anchors import SsdAnchorOptions, ssd_anchors
from crp_jax.blazeface.preprocess import PIXEL_BOUNDS

#: MediaPipe's keypoint order (the subject's right eye first: image left on a frontal face).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
#: The 16 regressors per anchor, in the order of the model's ``loc`` output.
REGRESSOR_NAMES = ("cx", "cy", "w", "h") + tuple(f"{k}_{c}" for k in KEYPOINT_NAMES for c in ("x", "y"))


@functools.lru_cache(maxsize=8)
def _anchors(opts: SsdAnchorOptions) -> np.ndarray:
    a = ssd_anchors(opts)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class BlazeFaceMeta:
    """A BlazeFace model's description.

    Attributes:
      name: "blazeface" (short range) or "blazeface_full" (full range).
      image_size: the square input side S (128 or 192).
      anchor_options: MediaPipe's ``SsdAnchorsCalculatorOptions`` for the model.
      min_score: ``min_score_thresh`` of MediaPipe's graph (0.5 short, 0.6 full range).
      iou_threshold: weighted NMS ``min_suppression_threshold`` (0.3).
      score_clip: ``score_clipping_thresh`` (100).
      source, sha256: the ``.tflite`` file and its hash.
    """

    name: str
    image_size: int
    anchor_options: SsdAnchorOptions
    min_score: float = 0.5
    iou_threshold: float = 0.3
    score_clip: float = 100.0
    source: str = ""
    sha256: str = ""
    class_names: tuple[str, ...] = ("face",)
    regressor_names: tuple[str, ...] = REGRESSOR_NAMES
    keypoint_names: tuple[str, ...] = KEYPOINT_NAMES
    #: ``(v - mean) / std`` with v = pixel / 255 is the model's ``2 v - 1``.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def pixel_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(low, high) per channel of the model input, for the z^B rule: [-1, 1]."""
        return PIXEL_BOUNDS

    @property
    def anchors(self) -> np.ndarray:
        """``[A, 4]`` (cx, cy, w, h) in [0, 1] input units (read-only, cached)."""
        return _anchors(self.anchor_options)

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    def preprocess_with_sizes(self, images):
        """Letterboxed model input and original sizes (crp_jax/blazeface/preprocess.py)."""
        from crp_jax.blazeface.preprocess import preprocess_with_sizes

        return preprocess_with_sizes(images, self.image_size)

    def heatmap_to_original(self, heatmap, image_size):
        """The part of a model-input heatmap ``[S, S]`` that covers the original image of
        ``image_size`` ``(h, w)`` (letterbox bands cut off; crp_jax/blazeface/preprocess.py)."""
        from crp_jax.blazeface.preprocess import heatmap_to_original

        return heatmap_to_original(heatmap, image_size)

    def detect(self, model, variables, x, **kwargs):
        """Faces per image (:func:`crp_jax.blazeface.detect.detect`)."""
        from crp_jax.blazeface.detect import detect

        return detect(model, variables, x, self, **kwargs)
