"""Converter from torchvision's ``ssdlite320_mobilenet_v3_large`` state dict.

Keys verified against ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
num_classes=K).state_dict()`` (torchvision 0.29). torchvision splits the backbone at C4's
expansion (SSDlite's first source), which is why block 12 is spread over two prefixes::

    backbone.features.0.0                         stem (ConvBNActivation: .0 conv, .1 BN)
    backbone.features.0.{1..12}.block.{n}         block_0 ... block_11 ([expand,] dw, [se,] project)
    backbone.features.0.13                        block_12/expand
    backbone.features.1.0.{1,2,3}                 block_12/dw, block_12/se, block_12/project
    backbone.features.1.{1,2}.block.{n}           block_13, block_14
    backbone.features.1.3                         last
    backbone.extra.{j}.{0,1,2}                    extra_j/pw1, extra_j/dw, extra_j/pw2
    head.classification_head.module_list.{k}.0    dw_cls_k (depthwise + BN + ReLU6)
    head.classification_head.module_list.{k}.1    cls_k (1x1 conv with bias)
    head.regression_head.module_list.{k}.{0,1}    dw_loc_k, loc_k

A ``<prefix>.0.weight`` is the conv (OIHW -> HWIO, depthwise ``(C, 1, k, k)`` ->
``(k, k, 1, C)``), ``<prefix>.1.{weight, bias, running_mean, running_var}`` the BN's
``scale``/``bias`` (params) and ``mean``/``var`` (batch_stats); ``num_batches_tracked`` is
ignored. The heads order output channels (anchor, class) like :class:`SSDLite`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from crp_jax.errors import CheckpointError
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.convert._common import check_mapping, class_names_for, read_state_dict, strip_module_prefix
from crp_jax.ssd.io import expected_shapes, format_problems, unflatten_variables
from crp_jax.ssd.meta import SSDLITE_POSTPROCESS, Meta
from crp_jax.ssd.ssdlite import MOBILENET_V3_LARGE_BLOCKS, SSDLite

# torchvision's ssdlite transform: (x - 0.5) / 0.5 on [0, 1] pixels
SSDLITE_MEAN = (0.5, 0.5, 0.5)
SSDLITE_STD = (0.5, 0.5, 0.5)
_NUM_SOURCES = 6
_ANCHORS_PER_CELL = 6
_IGNORED_SUFFIX = ".num_batches_tracked"
# a key only an SSD300-VGG16 state dict (torchvision or ssd.pytorch) has
_VGG_MARKERS = ("backbone.features.0.weight", "backbone.scale_weight", "vgg.0.weight", "L2Norm.weight")


def _conv_bn(prefix: str, path: str) -> dict[str, str]:
    return {
        f"{prefix}.0.weight": f"params/{path}/conv/kernel",
        f"{prefix}.1.weight": f"params/{path}/bn/scale",
        f"{prefix}.1.bias": f"params/{path}/bn/bias",
        f"{prefix}.1.running_mean": f"batch_stats/{path}/bn/mean",
        f"{prefix}.1.running_var": f"batch_stats/{path}/bn/var",
    }


def _se(prefix: str, path: str) -> dict[str, str]:
    return {f"{prefix}.{fc}.{p}": f"params/{path}/{fc}/{q}" for fc in ("fc1", "fc2") for p, q in _WB}


_WB = (("weight", "kernel"), ("bias", "bias"))


def _block(prefixes: dict[str, str], path: str) -> dict[str, str]:
    out = {}
    for part, prefix in prefixes.items():
        out.update(_se(prefix, f"{path}/se") if part == "se" else _conv_bn(prefix, f"{path}/{part}"))
    return out


@functools.cache
def ssdlite_key_map() -> dict[str, str]:
    """Every torch key of torchvision's SSDlite -> our flattened variable key
    (``"params/stem/conv/kernel"``, ``"batch_stats/stem/bn/mean"``), in a stable order."""
    keys = _conv_bn("backbone.features.0.0", "stem")
    for i, (_k, _exp, _out, se, _hs, _s) in enumerate(MOBILENET_V3_LARGE_BLOCKS):
        has_expand = i > 0  # only the first block has expanded == input channels
        parts = (["expand"] if has_expand else []) + ["dw"] + (["se"] if se else []) + ["project"]
        if i < 12:
            prefixes = {p: f"backbone.features.0.{i + 1}.block.{n}" for n, p in enumerate(parts)}
        elif i == 12:
            prefixes = {"expand": "backbone.features.0.13"}
            prefixes.update({p: f"backbone.features.1.0.{n}" for n, p in enumerate(parts) if p != "expand"})
        else:
            prefixes = {p: f"backbone.features.1.{i - 12}.block.{n}" for n, p in enumerate(parts)}
        keys.update(_block(prefixes, f"block_{i}"))
    keys.update(_conv_bn("backbone.features.1.3", "last"))
    for j in range(4):
        for n, part in enumerate(("pw1", "dw", "pw2")):
            keys.update(_conv_bn(f"backbone.extra.{j}.{n}", f"extra_{j}/{part}"))
    for head, name in (("classification_head", "cls"), ("regression_head", "loc")):
        for k in range(_NUM_SOURCES):
            keys.update(_conv_bn(f"head.{head}.module_list.{k}.0", f"dw_{name}_{k}"))
            for p, q in _WB:
                keys[f"head.{head}.module_list.{k}.1.{p}"] = f"params/{name}_{k}/{q}"
    return keys


def looks_like_ssdlite(keys) -> bool:
    """Whether torch state-dict keys are torchvision SSDlite's (for other converters' errors)."""
    return "backbone.features.0.0.0.weight" in keys or "backbone.extra.0.0.0.weight" in keys


def convert_torchvision_ssdlite(
    state_dict: Mapping, class_names: Sequence[str] | None = None, fold: bool = False
) -> tuple[SSDLite, dict, Meta]:
    """torchvision ``ssdlite320_mobilenet_v3_large`` state dict -> ``(model, variables, meta)``.

    Any number of classes (read from the first classification head). Preprocessing is
    torchvision's (mean = std = 0.5). ``fold=True`` returns the BatchNorm-folded model
    (:func:`crp_jax.ssd.fold.fold_batchnorm`), the form relevance rules should see; the
    default keeps BN (``batchnorm=True``), equal to torchvision's eval forward.

    Raises CheckpointError listing missing, unexpected and mis-shaped torch keys, and saying
    so when the state dict is an SSD300-VGG16 one (use ``convert_torchvision_ssd``).
    """
    sd = strip_module_prefix(check_mapping(state_dict))
    if any(k in sd for k in _VGG_MARKERS) and not looks_like_ssdlite(sd):
        raise CheckpointError(
            "this state dict looks like an SSD300-VGG16 checkpoint (torchvision ssd300_vgg16 or ssd.pytorch), "
            "not torchvision's ssdlite320_mobilenet_v3_large: use crp_jax.convert_torchvision_ssd "
            "(or convert_ssdpytorch)"
        )
    keymap = ssdlite_key_map()
    head = "head.classification_head.module_list.0.1.weight"
    num_classes = 91
    if head in sd:
        shape = getattr(sd[head], "shape", None)
        if shape is None or len(shape) != 4 or shape[0] % _ANCHORS_PER_CELL or shape[0] // _ANCHORS_PER_CELL < 2:
            raise CheckpointError(
                f"ssdlite state dict: {head} has shape {tuple(shape) if shape is not None else None}; "
                f"expected ({_ANCHORS_PER_CELL}*K, C, 1, 1) with K >= 2 classes"
            )
        num_classes = int(shape[0]) // _ANCHORS_PER_CELL
    config = SSDConfig.ssdlite320_mobilenet_v3_large(num_classes)
    expected = expected_shapes(config, batchnorm=True)
    flat, missing, unexpected, misshaped = read_state_dict(
        sd, keymap, expected, ignore=lambda k: k.endswith(_IGNORED_SUFFIX)
    )
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"not a torchvision ssdlite320_mobilenet_v3_large state dict ({num_classes} classes): "
            + format_problems(missing, unexpected, misshaped)
        )
    model = SSDLite(config)
    variables = unflatten_variables(flat)
    if fold:
        from crp_jax.ssd.fold import fold_batchnorm

        model, variables = fold_batchnorm(model, variables)
    meta = Meta(
        config=config,
        class_names=class_names_for(class_names, num_classes),
        mean=SSDLITE_MEAN,
        std=SSDLITE_STD,
        source="torchvision",
        postprocess=SSDLITE_POSTPROCESS,  # torchvision's ssdlite320 settings, not SSD300's
    )
    return model, variables, meta
