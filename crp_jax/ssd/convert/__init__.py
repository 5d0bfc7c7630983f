"""Converters from public PyTorch checkpoints to ``(model, variables, meta)``: torchvision's
``ssd300_vgg16`` and amdegroot/ssd.pytorch's SSD300 (:mod:`.vgg`), torchvision's
``ssdlite320_mobilenet_v3_large`` (:mod:`.ssdlite`), and the helpers they share
(:mod:`._common`). The command line (``crp-jax convert``) is in crp_jax/cli/convert.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd.convert._common import (
    check_mapping,
    load_torch_state_dict,
    read_state_dict,
    strip_module_prefix,
    to_numpy,
    torch_load_reason,
)
from crp_jax.ssd.convert.ssdlite import (
    SSDLITE_MEAN,
    SSDLITE_STD,
    convert_torchvision_ssdlite,
    looks_like_ssdlite,
    ssdlite_key_map,
)
from crp_jax.ssd.convert.vgg import (
    _SSDLITE_STEM,
    FORMATS,
    convert_ssdpytorch,
    convert_torchvision_ssd,
    ssdpytorch_layout,
    torch_key_map,
    torchvision_layout,
)

#: What convert_state_dict and `crp-jax convert` take: the VGG layouts and torchvision's SSDlite.
CONVERT_FORMATS = FORMATS + ("ssdlite",)

__all__ = [
    "CONVERT_FORMATS",
    "FORMATS",
    "SSDLITE_MEAN",
    "SSDLITE_STD",
    "convert_ssdpytorch",
    "convert_state_dict",
    "convert_torchvision_ssd",
    "convert_torchvision_ssdlite",
    "detect_format",
    "load_torch_state_dict",
    "looks_like_ssdlite",
    "read_state_dict",
    "ssdlite_key_map",
    "ssdpytorch_layout",
    "to_numpy",
    "torch_key_map",
    "torch_load_reason",
    "torchvision_layout",
]


def detect_format(state_dict: Mapping) -> str:
    """ "torchvision" / "ssd.pytorch" (SSD300-VGG16) or "ssdlite" (torchvision's
    ssdlite320_mobilenet_v3_large) from the key names (CheckpointError if none): the family
    with the largest share of its keys present, so that a checkpoint with keys missing is
    still named by its own family (and the converter lists what is missing)."""
    keys = set(strip_module_prefix(check_mapping(state_dict)))
    if _SSDLITE_STEM in keys:
        return "ssdlite"
    share = {}
    for fmt, keymap in (
        ("torchvision", torch_key_map("torchvision")),
        ("ssd.pytorch", torch_key_map("ssd.pytorch")),
        ("ssdlite", ssdlite_key_map()),
    ):
        share[fmt] = sum(k in keys for k in keymap) / max(1, len(keymap))
    if max(share.values()) == 0:
        sample = ", ".join(sorted(map(str, keys))[:8])
        raise CheckpointError(
            "state dict is neither a torchvision ssd300_vgg16, an ssd.pytorch SSD300 nor a torchvision "
            f"ssdlite320_mobilenet_v3_large checkpoint (first keys: {sample or 'none'})"
        )
    return max(share, key=lambda f: (share[f], f == "torchvision"))


def convert_state_dict(state_dict: Mapping, fmt: str = "auto", class_names: Sequence[str] | None = None):
    """Dispatch on ``fmt`` ("auto" detects the layout from the key names)."""
    if fmt == "auto":
        fmt = detect_format(state_dict)
    if fmt == "torchvision":
        return convert_torchvision_ssd(state_dict, class_names)
    if fmt == "ssd.pytorch":
        return convert_ssdpytorch(state_dict, class_names)
    if fmt == "ssdlite":  # folded: the form rules see and the one save_weights writes
        return convert_torchvision_ssdlite(state_dict, class_names, fold=True)
    raise ConfigError(f"unknown checkpoint format {fmt!r}; use one of {('auto',) + CONVERT_FORMATS}")
