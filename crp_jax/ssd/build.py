"""One place that maps an :class:`SSDConfig` to its Flax module and initial variables.

``config.backbone`` picks the module: "vgg16" -> :class:`~crp_jax.ssd.model.SSD`,
"mobilenet_v3_large" -> :class:`~crp_jax.ssd.ssdlite.SSDLite`. Saved checkpoints, training
and the CLI hold SSDlite in its folded form (``batchnorm=False``: BatchNorm folded into the
convs, docs/ssdlite.md), which is what relevance rules see; ``batchnorm=True`` is the form
torchvision's state dicts convert to before :func:`crp_jax.ssd.fold.fold_batchnorm`.
"""

from __future__ import annotations

from crp_jax.errors import ConfigError
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.model import SSD, init_vgg_variables
from crp_jax.ssd.ssdlite import SSDLite, init_folded_variables

__all__ = ["build_detector", "init_variables", "Detector"]

Detector = SSD | SSDLite


def build_detector(config: SSDConfig, *, batchnorm: bool = False) -> Detector:
    """The module for ``config``: ``SSD(config)`` or ``SSDLite(config, batchnorm)``
    (``batchnorm`` only matters for SSDlite)."""
    if config.backbone == "mobilenet_v3_large":
        return SSDLite(config, batchnorm=batchnorm)
    return SSD(config)


def init_variables(model: Detector, seed: int = 0) -> dict:
    """Initial ``{"params": ...}`` of ``model``, drawn with numpy from ``seed`` (no JAX
    random graph, which on XLA CPU compiles for longer than the network runs): Xavier-uniform
    for SSD (:func:`crp_jax.ssd.model.init_vgg_variables`), activation-aware He-normal for a
    folded SSDlite (:func:`crp_jax.ssd.ssdlite.init_folded_variables`). The one entry point
    (``cj.init_variables``)."""
    if isinstance(model, SSDLite):
        return init_folded_variables(model, seed)
    if isinstance(model, SSD):
        return init_vgg_variables(model, seed)
    raise ConfigError(f"init_variables initialises an SSD or SSDLite, got a {type(model).__name__}")
