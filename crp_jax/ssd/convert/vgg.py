"""Converters from public PyTorch SSD300-VGG16 checkpoints to ``(model, variables, meta)``.

Two layouts are supported (docs/design.md §3, "Converters read public checkpoints"):

**torchvision** ``ssd300_vgg16`` (``torchvision.models.detection``), keys verified against
``ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).state_dict()``::

    backbone.features.{0,2,5,7,10,12,14,17,19,21}.{weight,bias}  conv1_1 ... conv4_3
    backbone.scale_weight                                        l2norm/scale
    backbone.extra.0.{1,3,5}.{weight,bias}                       conv5_1 ... conv5_3
    backbone.extra.0.7.1.{weight,bias}                           conv6 (3x3, dilation 6)
    backbone.extra.0.7.3.{weight,bias}                           conv7 (1x1)
    backbone.extra.{1,2,3,4}.{0,2}.{weight,bias}                 conv8_1/8_2 ... conv11_1/11_2
    head.classification_head.module_list.{0..5}.{weight,bias}    cls_0 ... cls_5
    head.regression_head.module_list.{0..5}.{weight,bias}        loc_0 ... loc_5

**ssd.pytorch** (amdegroot) ``SSD300``::

    vgg.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}      conv1_1 ... conv5_3
    vgg.31 / vgg.33                                              conv6 (dilation 6) / conv7
    L2Norm.weight                                                l2norm/scale
    extras.{0..7}.{weight,bias}                                  conv8_1, conv8_2, ... conv11_2
    loc.{0..5} / conf.{0..5}                                     loc_0 ... / cls_0 ...

Torch conv weights are OIHW and become flax HWIO kernels (transpose ``(2, 3, 1, 0)``). Both
head layouts order output channels (anchor, class) exactly as :class:`crp_jax.ssd.model.SSD`
(channel ``a * K + k``), so heads are copied as they are. ssd.pytorch takes BGR input; its
``conv1_1`` is flipped along the input channels so that the converted model takes RGB like
every other model here (``meta.mean`` is then the RGB order of its (104, 117, 123) means).

ssd.pytorch's L2Norm divides by ``norm + 1e-10`` where ours (and torchvision's) divides by
``max(norm, 1e-12)``; the two differ by a relative 1e-10 at most, far below float32 noise.

A ``module.`` prefix on every key (``nn.DataParallel``) is stripped. Values may be torch
tensors or numpy arrays (crp_jax/ssd/convert/_common.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from crp_jax.errors import CheckpointError, ConfigError
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.convert._common import check_mapping, class_names_for, read_state_dict, strip_module_prefix
from crp_jax.ssd.meta import (
    SSDPYTORCH_MEAN,
    SSDPYTORCH_STD,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    Meta,
)
from crp_jax.ssd.model import SSD

FORMATS = ("torchvision", "ssd.pytorch")  # SSD300-VGG16 layouts (torch_key_map)

# ---------------------------------------------------------------------------------------
# key layouts: (torch module prefix, our module name); "weight"/"bias" map to kernel/bias.
# ---------------------------------------------------------------------------------------
_VGG_NAMES = (
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
)
_EXTRA_NAMES = tuple(f"conv{n}_{i}" for n in (8, 9, 10, 11) for i in (1, 2))
_NUM_SOURCES = 6

TORCHVISION_L2NORM_KEY = "backbone.scale_weight"
SSDPYTORCH_L2NORM_KEY = "L2Norm.weight"


def torchvision_layout() -> list[tuple[str, str]]:
    """``[(torch module prefix, our module name), ...]`` for torchvision's ``ssd300_vgg16``."""
    conv = [f"backbone.features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)]
    conv += [f"backbone.extra.0.{i}" for i in (1, 3, 5)]
    pairs = list(zip(conv, _VGG_NAMES))
    pairs += [("backbone.extra.0.7.1", "conv6"), ("backbone.extra.0.7.3", "conv7")]
    extra = [f"backbone.extra.{j}.{i}" for j in (1, 2, 3, 4) for i in (0, 2)]
    pairs += list(zip(extra, _EXTRA_NAMES))
    pairs += [(f"head.classification_head.module_list.{k}", f"cls_{k}") for k in range(_NUM_SOURCES)]
    pairs += [(f"head.regression_head.module_list.{k}", f"loc_{k}") for k in range(_NUM_SOURCES)]
    return pairs


def ssdpytorch_layout() -> list[tuple[str, str]]:
    """``[(torch module prefix, our module name), ...]`` for amdegroot/ssd.pytorch SSD300."""
    vgg = [f"vgg.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
    pairs = list(zip(vgg, _VGG_NAMES))
    pairs += [("vgg.31", "conv6"), ("vgg.33", "conv7")]
    pairs += [(f"extras.{i}", name) for i, name in enumerate(_EXTRA_NAMES)]
    pairs += [(f"conf.{k}", f"cls_{k}") for k in range(_NUM_SOURCES)]
    pairs += [(f"loc.{k}", f"loc_{k}") for k in range(_NUM_SOURCES)]
    return pairs


def torch_key_map(fmt: str) -> dict[str, str]:
    """Every torch state-dict key of a format -> our flattened variable key
    (``"params/conv1_1/kernel"``), in a stable order."""
    layout, l2key = _layout(fmt)
    out = {}
    for prefix, name in layout:
        out[f"{prefix}.weight"] = f"params/{name}/kernel"
        out[f"{prefix}.bias"] = f"params/{name}/bias"
    out[l2key] = "params/l2norm/scale"
    return out


def _layout(fmt: str):
    if fmt == "torchvision":
        return torchvision_layout(), TORCHVISION_L2NORM_KEY
    if fmt == "ssd.pytorch":
        return ssdpytorch_layout(), SSDPYTORCH_L2NORM_KEY
    raise ConfigError(f"unknown checkpoint format {fmt!r}; use one of {FORMATS}")


_SSDLITE_STEM = "backbone.features.0.0.0.weight"  # MobileNetV3's stem: torchvision's SSDlite


def _reject_ssdlite(sd: Mapping) -> None:
    if _SSDLITE_STEM in sd:
        raise CheckpointError(
            "this state dict looks like torchvision's ssdlite320_mobilenet_v3_large, not an SSD300-VGG16 "
            "checkpoint: use crp_jax.convert_torchvision_ssdlite"
        )


def _convert(
    state_dict: Mapping,
    fmt: str,
    make_config: Callable[[int], SSDConfig],
    class_names,
    mean,
    std,
    source: str,
    fix: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> tuple[SSD, dict, Meta]:
    from crp_jax.ssd.io import check_finite, check_variables, expected_shapes, format_problems, unflatten_variables

    sd = strip_module_prefix(check_mapping(state_dict))
    _reject_ssdlite(sd)
    keymap = torch_key_map(fmt)
    layout, _ = _layout(fmt)
    # Number of classes from the first classification head present: out channels = A_k * K.
    anchors = SSDConfig.ssd300_vgg16().anchors_per_cell
    num_classes = None
    for k in range(_NUM_SOURCES):
        key = f"{[p for p, n in layout if n == f'cls_{k}'][0]}.weight"
        if key not in sd:
            continue
        shape = getattr(sd[key], "shape", None)
        if shape is None or len(shape) != 4 or shape[0] % anchors[k] or shape[0] // anchors[k] < 2:
            raise CheckpointError(
                f"{fmt} state dict: {key} has shape {tuple(shape) if shape is not None else None}; "
                f"expected (A*K, C, 3, 3) with A={anchors[k]} anchors per cell and K >= 2 classes"
            )
        num_classes = int(shape[0]) // anchors[k]
        break
    if num_classes is None:
        num_classes = 21  # no classification head at all: only used to phrase the error below
    config = make_config(num_classes)
    expected = expected_shapes(config)

    flat, missing, unexpected, misshaped = read_state_dict(sd, keymap, expected, fix=fix)
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"not a {fmt} SSD300-VGG16 state dict ({num_classes} classes): "
            + format_problems(missing, unexpected, misshaped)
        )
    # Name NaN/Inf arrays by the torch key the user knows (check_variables would name ours).
    ours_to_torch = {okey: tkey for tkey, okey in keymap.items()}
    check_finite(
        {f"{ours_to_torch[k]} ({k.removeprefix('params/')})": v for k, v in flat.items()},
        where=f"{fmt} state dict",
    )
    model = SSD(config)
    variables = check_variables(model, unflatten_variables(flat), where=f"converted {fmt} state dict")
    meta = Meta(
        config=config,
        class_names=class_names_for(class_names, num_classes),
        mean=mean,
        std=std,
        source=source,
    )
    return model, variables, meta


def convert_torchvision_ssd(state_dict: Mapping, class_names: Sequence[str] | None = None):
    """torchvision ``ssd300_vgg16`` state dict -> ``(model, variables, meta)``.

    Any number of classes (read from the head shapes). ``class_names``: K names with
    index 0 the background, or the K-1 foreground names; default VOC names at 21 classes,
    else ``class_1`` .... Preprocessing is torchvision's (``TORCHVISION_MEAN/STD``).
    Raises CheckpointError listing missing, unexpected and mis-shaped torch keys.
    """
    return _convert(
        state_dict,
        "torchvision",
        SSDConfig.ssd300_vgg16,
        class_names,
        TORCHVISION_MEAN,
        TORCHVISION_STD,
        "torchvision",
    )


def _flip_bgr(okey: str, arr: np.ndarray) -> np.ndarray:
    # HWIO: reverse the input channels of the first conv so the model takes RGB.
    if okey == "params/conv1_1/kernel":
        return arr[:, :, ::-1, :]
    return arr


def convert_ssdpytorch(state_dict: Mapping, class_names: Sequence[str] | None = None):
    """amdegroot/ssd.pytorch SSD300 state dict -> ``(model, variables, meta)``.

    ssd.pytorch takes BGR pixels minus (104, 117, 123); the converted model takes RGB with
    ``SSDPYTORCH_MEAN/STD`` (conv1_1's input channels flipped) and ssd.pytorch's prior boxes
    (``SSDConfig.ssd300_vgg16_ssdpytorch``). ``class_names`` as in :func:`convert_torchvision_ssd`.
    """
    return _convert(
        state_dict,
        "ssd.pytorch",
        SSDConfig.ssd300_vgg16_ssdpytorch,
        class_names,
        SSDPYTORCH_MEAN,
        SSDPYTORCH_STD,
        "ssd.pytorch",
        fix=_flip_bgr,
    )
