"""Explanation quality metrics (docs/design.md §5), in plain numpy.

Every function accepts numpy or JAX arrays (converted with ``np.asarray``) and computes in
float64. Conventions shared by all of them:

Heatmaps
    A *heatmap* is a signed relevance map of shape ``[H, W]``. A relevance array of shape
    ``[H, W, C]`` with ``C`` in ``(1, 3)`` (relevance at the RGB input, as returned per target
    by ``cj.explain``) is accepted too and reduced to ``[H, W]`` by summing the channels.
    Heatmaps must be finite: a NaN or Inf raises, naming how many (the policy of
    :func:`crp_jax.checks.as_heatmap`, which viz shares with ``nonfinite="zero"``).

Boxes
    Boxes are ``(x0, y0, x1, y1)`` in pixels (xyxy, floats allowed). Pixel ``(r, c)`` (row,
    column) covers ``[c, c + 1) x [r, r + 1)``; it is *inside* a box iff its centre is:
    ``x0 <= c + 0.5 < x1`` and ``y0 <= r + 0.5 < y1`` (half-open, so two boxes that share an
    edge never share a pixel). See :func:`box_mask`.

Masks
    Masks are boolean ``[H, W]`` arrays (0/1 integer or float arrays are accepted).

Errors
    Invalid arguments (wrong rank or shape, empty arrays, non-finite values, bad patch sizes,
    unknown option names) raise :class:`crp_jax.errors.InputError` naming the bad value. No
    function returns NaN or Inf except where its docstring says so.

Modules (private; this file is the public face)
    ``_validation`` argument checks; ``_boxes`` box masks and coordinates; ``_localisation``
    (energy) pointing game, part enrichment; ``_similarity`` Pearson, Spearman, SSIM;
    ``_perturbation`` baselines, AOPC, region perturbation and the one remove-and-rescore
    loop that ``_box_deletion`` shares; ``_direction`` localization direction;
    ``_conservation``; ``_statistics`` bootstrap intervals. The option names and constants
    (``ORDERS``, ``BASELINES``, ``BOX_COORDS``, ...) stay importable from here, outside
    ``__all__`` as before.
"""

from crp_jax.metrics._box_deletion import DELETION_ORDERS as DELETION_ORDERS
from crp_jax.metrics._box_deletion import box_deletion
from crp_jax.metrics._boxes import BOX_COORDS as BOX_COORDS
from crp_jax.metrics._boxes import box_coordinate, box_mask
from crp_jax.metrics._conservation import conservation
from crp_jax.metrics._direction import (
    localization_direction,
    localization_direction_share,
    remove_positive_evidence,
    top_positive_mask,
)
from crp_jax.metrics._localisation import POINTING_REFERENCE_SIZE as POINTING_REFERENCE_SIZE
from crp_jax.metrics._localisation import POINTING_TOLERANCE_PX as POINTING_TOLERANCE_PX
from crp_jax.metrics._localisation import energy_pointing_game, part_enrichment, pointing_game, pointing_tolerance
from crp_jax.metrics._perturbation import BASELINES as BASELINES
from crp_jax.metrics._perturbation import ORDERS as ORDERS
from crp_jax.metrics._perturbation import aopc, region_perturbation
from crp_jax.metrics._randomization import model_randomization, randomization_blocks, randomize
from crp_jax.metrics._similarity import SSIM_K1 as SSIM_K1
from crp_jax.metrics._similarity import SSIM_K2 as SSIM_K2
from crp_jax.metrics._similarity import SSIM_WINDOW as SSIM_WINDOW
from crp_jax.metrics._similarity import class_discriminativeness, spearman, ssim
from crp_jax.metrics._statistics import bootstrap_ci

__all__ = [
    "model_randomization",
    "randomization_blocks",
    "randomize",
    "box_mask",
    "energy_pointing_game",
    "class_discriminativeness",
    "part_enrichment",
    "region_perturbation",
    "aopc",
    "localization_direction",
    "localization_direction_share",
    "top_positive_mask",
    "remove_positive_evidence",
    "conservation",
    "bootstrap_ci",
    "pointing_game",
    "pointing_tolerance",
    "spearman",
    "ssim",
    "box_coordinate",
    "box_deletion",
]
