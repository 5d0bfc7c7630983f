"""Evaluation of detectors: VOC-style AP and mAP on held-out generated scenes and the
detection-to-ground-truth matching they use (:mod:`crp_jax.eval.voc`); the error cases, with
the targets that explain them, that ``diagnose`` derives from that matching
(:mod:`crp_jax.eval.diagnose`). The command line is ``crp-jax evaluate``
(:mod:`crp_jax.cli.evaluate`)."""

from crp_jax.eval.diagnose import ERROR_KINDS, ImageDiagnosis, diagnose
from crp_jax.eval.voc import (
    average_precision,
    evaluate,
    evaluate_detections,
    format_table,
    match_detections,
    match_to_ground_truth,
)

__all__ = [
    "ERROR_KINDS",
    "ImageDiagnosis",
    "diagnose",
    "average_precision",
    "evaluate",
    "evaluate_detections",
    "format_table",
    "match_detections",
    "match_to_ground_truth",
]
