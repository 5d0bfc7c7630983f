"""Evaluation of detectors: VOC-style AP and mAP on held-out generated scenes, and the
detection-to-ground-truth matching they use (:mod:`crp_jax.eval.voc`). The command line is
``crp-jax evaluate`` (:mod:`crp_jax.cli.evaluate`)."""

from crp_jax.eval.voc import (
    average_precision,
    evaluate,
    evaluate_detections,
    format_table,
    match_detections,
    match_to_ground_truth,
)

__all__ = [
    "average_precision",
    "evaluate",
    "evaluate_detections",
    "format_table",
    "match_detections",
    "match_to_ground_truth",
]
