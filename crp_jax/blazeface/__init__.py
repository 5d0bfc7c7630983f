"""MediaPipe's BlazeFace as a crp-jax detector (issue 23): an imported TFLite graph
(crp_jax/tflite) plus what MediaPipe wraps around it.

- ``anchors.py``: ``SsdAnchorsCalculator`` from its options;
- ``preprocess.py``: letterbox, Pillow bilinear resize, ``x * 2 / 255 - 1``, and the way back
  to original pixels;
- ``postprocess.py``: box + keypoint decoding, clipped sigmoid scores, weighted NMS;
- ``meta.py``: :class:`BlazeFaceMeta` (regressor names, pipeline hooks for ``cj.detect``);
- ``presets.py``: the two shipped models (short and full range) and :func:`load_blazeface`;
- ``detect.py``: :func:`detect` -> :class:`FaceDetections` (with keypoints).

Nothing here imports the relevance engine.
"""

from crp_jax.blazeface.anchors import SsdAnchorOptions, ssd_anchors
from crp_jax.blazeface.detect import FaceDetections, detect
from crp_jax.blazeface.meta import KEYPOINT_NAMES, REGRESSOR_NAMES, BlazeFaceMeta
from crp_jax.blazeface.preprocess import letterbox_padding, preprocess_with_sizes, to_original
from crp_jax.blazeface.presets import FULL_RANGE, PRESETS, SHORT_RANGE, BlazeFacePreset, load_blazeface

__all__ = [
    "SsdAnchorOptions",
    "ssd_anchors",
    "FaceDetections",
    "detect",
    "BlazeFaceMeta",
    "KEYPOINT_NAMES",
    "REGRESSOR_NAMES",
    "BlazeFacePreset",
    "SHORT_RANGE",
    "FULL_RANGE",
    "PRESETS",
    "load_blazeface",
    "letterbox_padding",
    "preprocess_with_sizes",
    "to_original",
]
