"""Explanation quality against the CRP paper's claims (docs/design.md §5), on held-out glyph scenes:
the library behind ``benchmarks/quality.py`` (:func:`run_quality`).

For ``n`` held-out generated scenes (data-set seed ``crp_jax.data.splits.HELDOUT_SEED`` unless
``seed`` says otherwise; training refuses that seed), the detector runs (score threshold
``score_threshold``, default 0.5) and every detection is matched to a ground-truth object
of the same label with IoU >= 0.5 (VOC rule: the ground truth it overlaps most, if still
free; detections visited by descending score). Only matched detections are counted; each
brings its object mask and its discriminative-part mask (``crp_jax.data``).

Per method (``methods``; heatmaps are channel sums of the input relevance at the model
input resolution) and per matched detection:

- **EPG**: energy pointing game, share of positive relevance inside the ground-truth box, for
  the class target (the method's default contrast: "others" for crp, one-hot otherwise).
- **class r**: Pearson correlation, over the whole image, between the heatmaps of the detected
  class and of its confusable partner (E/F, O/Q, P/R) at the same anchor, each with the
  method's default contrast. Lower = more class-discriminative.
- **part enrichment**: ``metrics.part_enrichment`` (share of positive relevance on the
  discriminative part / the part's share of object ∪ part) of the heatmap that answers "why
  the detected class and not its partner": crp with contrast ``(partner,)``; the other
  methods with their default one-hot target (they have no such question). Also split into
  the larger glyph of each pair (E, Q, R: the part is ink of the glyph) and the smaller one
  (F, O, P: the part is where the partner's extra stroke *would* be, outside the ink).
- **AOPC**: region perturbation (Samek et al. 2017) on the model input, ``patch`` x
  ``patch`` regions, ``steps`` of them removed cumulatively, each replaced by uniform
  noise in the preprocessing's pixel bounds (one noise image per detection, shared by all
  orders and methods); score = the target's *logit margin* at the detection's anchor,
  ``logit[cls] - max_{k != cls} logit[k]`` (background included in the max). AOPC for
  most-relevant-first (MoRF, ranked by the row's class heatmap) and for a random order (one
  permutation per detection, the same for every method); ΔAOPC = MoRF − random per detection.
- **loc direction**: for ``LocTarget(cx, +1)`` (and cy), remove the top ``fraction`` (10 %)
  positively relevant pixels (``metrics.remove_positive_evidence``, replaced by the image's
  per-channel mean), re-run the model, decode the box at the same anchor and check that the
  centre moved the other way (left / up); share of boxes. A control removes the same number
  of uniformly random pixels.
- **conservation**: sum of the class target's input relevance against its initial relevance
  (1 for a one-hot target, 0 for a contrast), ``metrics.conservation``.

Rows: each method with its default target, plus "crp (pair)" = crp with contrast
``(partner,)`` (its class r is Pearson of (det vs partner) against (partner vs det), which
is −1 by construction: both are one linear propagation of opposite initial relevance).

Figures (Pillow only): ``class_swap.png`` (for a detection of each confusable pair: rows
LRP-ab and CRP, columns detected class / partner class, same box) and ``relevance_flow.png``
(per-layer absolute and total relevance from the input to the source, LRP-ab one-hot vs
CRP contrasts, and the class-specific share of LRP's relevance per layer).

Every method's explain compiles once: targets are padded per image to a multiple of the
chunk size (``CHUNK``), so the vmapped backward always sees the same shapes. All perturbed
images go through one jitted ``apply`` in fixed batches of ``PROBE_BATCH``.

Modules: :mod:`~crp_jax.eval.quality.cases` (scenes, matching, the probe),
:mod:`~crp_jax.eval.quality.run` (:func:`run_quality`), :mod:`~crp_jax.eval.quality.sanity`
(randomization cascade, box-aware deletion), :mod:`~crp_jax.eval.quality.report` (markdown)
and :mod:`~crp_jax.eval.quality.figures`.
"""

from crp_jax.eval.quality.cases import (
    CHUNK,
    DEFAULT_METHODS,
    FLOW_METHODS,
    METHOD_LABELS,
    Case,
    Probe,
    collect_cases,
    logit_margin,
)
from crp_jax.eval.quality.report import display_path, format_report, format_sanity, format_tables
from crp_jax.eval.quality.run import run_quality, summarise
from crp_jax.eval.quality.sanity import (
    CONTROL,
    LOC_VARIANTS,
    edge_map_explainer,
    run_box_faithfulness,
    run_randomization,
    summarise_sanity,
)

__all__ = [
    "CHUNK",
    "CONTROL",
    "DEFAULT_METHODS",
    "FLOW_METHODS",
    "LOC_VARIANTS",
    "METHOD_LABELS",
    "Case",
    "Probe",
    "collect_cases",
    "display_path",
    "edge_map_explainer",
    "format_report",
    "format_sanity",
    "format_tables",
    "logit_margin",
    "run_box_faithfulness",
    "run_quality",
    "run_randomization",
    "summarise",
    "summarise_sanity",
]
