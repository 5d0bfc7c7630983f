"""crp-jax: Contrastive Relevance Propagation (Tsunakawa et al., IJCNN 2019) for SSD in JAX.

Public API (docs/design.md §3)::

    import crp_jax as cj
    model, variables, meta = cj.load_pretrained()
    x = cj.preprocess(images, meta)
    cls_logits, loc = model.apply(variables, x)
    dets = cj.detect(model, variables, x, meta=meta)
    R = cj.explain(model, variables, x, targets, method="crp", meta=meta)
    outputs, explain_fn = cj.relevance_vjp(model.apply, variables, x, composite)
    model, variables, meta = cj.convert_torchvision_ssd(state_dict)

Also at the top: loading and saving weights, converters, the targets, heatmaps, composites
(``cj.rules``, ``cj.Composite``, ``cj.register_composite``), the model-randomization check and
the errors. Architectures, canonizers, converter helpers and diagnostics live one level down
(``crp_jax.ssd``, ``crp_jax.relevance``, ``crp_jax.numerics``, ``crp_jax.metrics``). Names are
resolved lazily so that ``import crp_jax`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The story, in the order of the docstring: load, preprocess, detect, ask, explain, measure.
_LAZY = {
    # models
    "load_pretrained": "crp_jax.ssd.io",
    "load_weights": "crp_jax.ssd.io",
    "save_weights": "crp_jax.ssd.io",
    "load_tflite": "crp_jax.tflite.load",
    "convert_torchvision_ssd": "crp_jax.ssd.convert",
    "convert_torchvision_ssdlite": "crp_jax.ssd.convert",
    "init_variables": "crp_jax.ssd.build",
    "Meta": "crp_jax.ssd.meta",
    # detection
    "preprocess": "crp_jax.ssd.detect",
    "preprocess_with_sizes": "crp_jax.ssd.detect",
    "detect": "crp_jax.ssd.detect",
    "Detections": "crp_jax.ssd.detect",
    # what is asked
    "ClassTarget": "crp_jax.relevance.targets",
    "LocTarget": "crp_jax.relevance.targets",
    "AnchorContrastTarget": "crp_jax.relevance.pairs",
    "targets_from_detections": "crp_jax.relevance.targets",
    # explaining
    "explain": "crp_jax.relevance.explain",
    "heatmap": "crp_jax.relevance.explain",
    "explain_windows": "crp_jax.relevance.explain",
    "relevance_flow": "crp_jax.relevance.explain",
    "RelevanceWindows": "crp_jax.relevance.windows",
    "relevance_vjp": "crp_jax.relevance.core",
    "Composite": "crp_jax.relevance.composite",
    "register_composite": "crp_jax.relevance.composite",
    # measuring
    "diagnose": "crp_jax.eval.diagnose",
    "model_randomization": "crp_jax.metrics",
    # errors
    "CRPError": "crp_jax.errors",
    "InputError": "crp_jax.errors",
    "ConfigError": "crp_jax.errors",
    "CheckpointError": "crp_jax.errors",
    "TargetError": "crp_jax.errors",
    "NumericsError": "crp_jax.errors",
}

# One level down, where they live (architectures, converters' helpers, canonizers, engine
# internals, diagnostics); still reachable as ``crp_jax.NAME`` for code written before, but
# not part of the top level's story (not in ``__all__``).
_BELOW = {
    "SSD": "crp_jax.ssd.model",
    "SSDLite": "crp_jax.ssd.ssdlite",
    "SSDConfig": "crp_jax.ssd.config",
    "default_boxes": "crp_jax.ssd.anchors",
    "default_boxes_xyxy": "crp_jax.ssd.anchors",
    "check_variables": "crp_jax.ssd.io",
    "convert_ssdpytorch": "crp_jax.ssd.convert",
    "load_torch_state_dict": "crp_jax.ssd.convert",
    "fold_batchnorm": "crp_jax.ssd.fold",
    "Kind": "crp_jax.relevance.composite",
    "INPUT_LAYER": "crp_jax.relevance.composite",
    "get_composite": "crp_jax.relevance.composite",
    "composite_names": "crp_jax.relevance.composite",
    "crop_groups": "crp_jax.relevance.cropped",
    "first_nonfinite_layer": "crp_jax.numerics",
    "check_finite_forward": "crp_jax.numerics",
    "NonFiniteLayer": "crp_jax.numerics",
}

__all__ = sorted([*_LAZY, "rules"])


_SUBMODULES = (
    "ssd",
    "relevance",
    "metrics",
    "data",
    "viz",
    "cli",
    "training",
    "eval",
    "apps",
    "errors",
    "numerics",
    "report",
    "progress",
    "tflite",
    "blazeface",
)


def __getattr__(name: str):
    if name == "rules":  # the rules module, as ``cj.rules.WPlus()``
        return importlib.import_module("crp_jax.relevance.rules")
    if name in _SUBMODULES:
        return importlib.import_module(f"crp_jax.{name}")
    home = _LAZY.get(name) or _BELOW.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crp_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
