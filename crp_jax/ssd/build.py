"""One place that maps an :class:`SSDConfig` to its Flax module and initial variables.

``config.backbone`` picks the module: "vgg16" -> :class:`~crp_jax.ssd.model.SSD`,
"mobilenet_v3_large" -> :class:`~crp_jax.ssd.ssdlite.SSDLite`. Saved checkpoints, training
and the CLI hold SSDlite in its folded form (``batchnorm=False``: BatchNorm folded into the
convs, docs/ssdlite.md), which is what relevance rules see; ``batchnorm=True`` is the form
torchvision's state dicts convert to before :func:`crp_jax.ssd.fold.fold_batchnorm`.
"""

from __future__ import annotations

from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.model import SSD
from crp_jax.ssd.model import init_variables as _init_vgg
from crp_jax.ssd.ssdlite import SSDLite
from crp_jax.ssd.ssdlite import init_variables as _init_ssdlite

__all__ = ["build_detector", "init_detector", "Detector"]

Detector = SSD | SSDLite


def build_detector(config: SSDConfig, *, batchnorm: bool = False) -> Detector:
    """The module for ``config``: ``SSD(config)`` or ``SSDLite(config, batchnorm)``
    (``batchnorm`` only matters for SSDlite)."""
    if config.backbone == "mobilenet_v3_large":
        return SSDLite(config, batchnorm=batchnorm)
    return SSD(config)


def init_detector(model: Detector, seed: int = 0) -> dict:
    """Initial ``{"params": ...}`` of ``model``, drawn with numpy from ``seed`` (no JAX
    random graph): :func:`crp_jax.ssd.model.init_variables` for SSD,
    :func:`crp_jax.ssd.ssdlite.init_variables` for a folded SSDlite."""
    if isinstance(model, SSDLite):
        return _init_ssdlite(model, seed)
    return _init_vgg(model, seed)
