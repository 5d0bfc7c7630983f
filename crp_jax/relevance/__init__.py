"""The relevance engine: rules as custom_vjp functions, composites, relevance_vjp, explain."""

from crp_jax.relevance import rules
from crp_jax.relevance.composite import (
    INPUT_LAYER,
    LAYER_KINDS,
    PRESETS,
    Composite,
    Kind,
    composite_names,
    get_composite,
    register_composite,
)
from crp_jax.relevance.cones import anchor_cone, cone_geometry, cone_sizes
from crp_jax.relevance.core import relevance_vjp
from crp_jax.relevance.cropped import CropGroup, compiled_cropped, crop_groups
from crp_jax.relevance.dense import compiled_functions
from crp_jax.relevance.explain import (
    CROP_MODES,
    explain,
    explain_windows,
    heatmap,
    output_dims,
    output_sizes,
    relevance_flow,
)
from crp_jax.relevance.pairs import AnchorContrastTarget, expand_pairs
from crp_jax.relevance.targets import COORDS, ClassTarget, LocTarget, regressor_names, targets_from_detections
from crp_jax.relevance.windows import RelevanceWindows

__all__ = [
    "rules",
    "Composite",
    "Kind",
    "INPUT_LAYER",
    "LAYER_KINDS",
    "PRESETS",
    "composite_names",
    "get_composite",
    "register_composite",
    "relevance_vjp",
    "explain",
    "explain_windows",
    "relevance_flow",
    "CROP_MODES",
    "compiled_functions",
    "output_sizes",
    "output_dims",
    "heatmap",
    "anchor_cone",
    "cone_geometry",
    "cone_sizes",
    "CropGroup",
    "crop_groups",
    "compiled_cropped",
    "RelevanceWindows",
    "COORDS",
    "regressor_names",
    "ClassTarget",
    "LocTarget",
    "AnchorContrastTarget",
    "expand_pairs",
    "targets_from_detections",
]
