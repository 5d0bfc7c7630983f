"""Old name of :mod:`crp_jax.eval` (kept while ``benchmarks/quality.py`` imports
``crp_jax.evaluate.HELDOUT_SEED``; new code imports :mod:`crp_jax.eval` and
:mod:`crp_jax.data.splits`)."""

from crp_jax.data.splits import HELDOUT_SEED, VALIDATION_SEED
from crp_jax.eval import evaluate, evaluate_detections, match_to_ground_truth

__all__ = ["HELDOUT_SEED", "VALIDATION_SEED", "evaluate", "evaluate_detections", "match_to_ground_truth"]
