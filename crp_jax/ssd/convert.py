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
tensors or numpy arrays; torch is imported only by :func:`load_torch_state_dict`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crp_jax.errors import CheckpointError, ConfigError, CRPError
from crp_jax.ssd.config import SSDConfig
from crp_jax.ssd.meta import (
    SSDPYTORCH_MEAN,
    SSDPYTORCH_STD,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    Meta,
    default_class_names,
)
from crp_jax.ssd.model import SSD

FORMATS = ("torchvision", "ssd.pytorch")  # SSD300-VGG16 layouts (torch_key_map)
#: What convert_state_dict and `crp-jax convert` take: the VGG layouts and torchvision's SSDlite.
CONVERT_FORMATS = FORMATS + ("ssdlite",)

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


# ---------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------
def to_numpy(value: Any, key: str = "?") -> np.ndarray:
    """A torch tensor (duck-typed: ``.detach().cpu()``) or array-like -> float32 numpy."""
    v = value
    if hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "numpy"):
        v = v.detach().cpu()
        if hasattr(v, "is_floating_point") and v.is_floating_point() and hasattr(v, "float"):
            v = v.float()  # bfloat16/float16 tensors have no .numpy() path of their own
        v = v.numpy()
    try:
        arr = np.asarray(v)
    except Exception as e:
        raise CheckpointError(f"state dict entry {key!r} is not an array ({type(value).__name__}): {e}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CheckpointError(f"state dict entry {key!r} is not a numeric array (dtype {arr.dtype})")
    return arr.astype(np.float32, copy=False)


def _strip_module_prefix(state_dict: Mapping) -> dict:
    keys = list(state_dict)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def detect_format(state_dict: Mapping) -> str:
    """ "torchvision" / "ssd.pytorch" (SSD300-VGG16) or "ssdlite" (torchvision's
    ssdlite320_mobilenet_v3_large) from the key names (CheckpointError if none): the family
    with the largest share of its keys present, so that a checkpoint with keys missing is
    still named by its own family (and the converter lists what is missing)."""
    from crp_jax.ssd.convert_ssdlite import ssdlite_key_map

    keys = set(_strip_module_prefix(_check_mapping(state_dict)))
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


_SSDLITE_STEM = "backbone.features.0.0.0.weight"  # MobileNetV3's stem: torchvision's SSDlite


def _reject_ssdlite(sd: Mapping) -> None:
    if _SSDLITE_STEM in sd:
        raise CheckpointError(
            "this state dict looks like torchvision's ssdlite320_mobilenet_v3_large, not an SSD300-VGG16 "
            "checkpoint: use crp_jax.convert_torchvision_ssdlite"
        )


def _check_mapping(state_dict) -> Mapping:
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"a state dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    return state_dict


# ---------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------
def _class_names(class_names, num_classes: int) -> tuple[str, ...]:
    if class_names is None:
        return default_class_names(num_classes)
    names = tuple(str(c) for c in class_names)
    if len(names) == num_classes - 1:  # foreground names only: add the background
        names = ("__background__",) + names
    if len(names) != num_classes:
        raise ConfigError(
            f"the checkpoint has {num_classes} classes (background included) but {len(names)} class "
            f"names were given; give {num_classes} names (index 0 = background) or {num_classes - 1} "
            "foreground names"
        )
    return names


def read_state_dict(sd: Mapping, keymap: Mapping[str, str], expected: Mapping, *, fix=None, ignore=None):
    """Torch tensors -> our flat float32 arrays: ``(flat, missing, unexpected, misshaped)``.

    ``keymap``: torch key -> our ``path/kernel|bias|...``; ``expected``: our key -> our shape
    (conv kernels ``[kh, kw, Cin, Cout]``, read from torch's ``[Cout, Cin, kh, kw]``);
    ``fix(our_key, array)`` edits an array after the layout change (e.g. BGR -> RGB);
    ``ignore(torch_key)`` marks extra keys that are not unexpected (e.g. BN counters).
    Every key is checked before anything is reported, so one error lists all problems.
    """
    missing = [k for k in keymap if k not in sd]
    unexpected = sorted(str(k) for k in sd if k not in keymap and not (ignore and ignore(str(k))))
    misshaped = []
    flat = {}
    for tkey, okey in keymap.items():
        if tkey not in sd:
            continue
        want = _expected_torch_shape(okey, expected[okey])
        found = getattr(sd[tkey], "shape", None)
        found = tuple(int(s) for s in found) if found is not None else None
        if found != want:
            misshaped.append((tkey, want, found))
            continue
        arr = to_numpy(sd[tkey], tkey)
        if okey.endswith("/kernel"):
            arr = np.transpose(arr, (2, 3, 1, 0))
        if fix is not None:
            arr = fix(okey, arr)
        flat[okey] = np.ascontiguousarray(arr, dtype=np.float32)
    return flat, missing, unexpected, misshaped


def _expected_torch_shape(our_key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if our_key.endswith("/kernel"):
        h, w, i, o = shape
        return (o, i, h, w)
    return tuple(shape)


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

    sd = _strip_module_prefix(_check_mapping(state_dict))
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
        class_names=_class_names(class_names, num_classes),
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


def convert_state_dict(state_dict: Mapping, fmt: str = "auto", class_names: Sequence[str] | None = None):
    """Dispatch on ``fmt`` ("auto" detects the layout from the key names)."""
    if fmt == "auto":
        fmt = detect_format(state_dict)
    if fmt == "torchvision":
        return convert_torchvision_ssd(state_dict, class_names)
    if fmt == "ssd.pytorch":
        return convert_ssdpytorch(state_dict, class_names)
    if fmt == "ssdlite":  # folded: the form rules see and the one save_weights writes
        from crp_jax.ssd.convert_ssdlite import convert_torchvision_ssdlite

        return convert_torchvision_ssdlite(state_dict, class_names, fold=True)
    raise ConfigError(f"unknown checkpoint format {fmt!r}; use one of {('auto',) + CONVERT_FORMATS}")


# ---------------------------------------------------------------------------------------
# reading .pth files
# ---------------------------------------------------------------------------------------
def load_torch_state_dict(path) -> dict:
    """Read a ``.pth``/``.pt`` file with ``torch.load(weights_only=True)`` (no arbitrary
    unpickling). Accepts a raw state dict or a dict holding one under ``"model"`` or
    ``"state_dict"``. Needs torch (``pip install 'crp-jax[convert]'``)."""
    p = Path(os.fspath(path))
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        import torch
    except ImportError:
        raise CheckpointError("reading .pth files needs torch: pip install 'crp-jax[convert]'") from None
    try:
        with warnings.catch_warnings():  # torch's own warnings ("please file an issue") are not ours
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{p}: not a torch checkpoint that can be read safely (torch.load with weights_only=True): "
            f"{torch_load_reason(e)}"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(
            f"{p}: holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to "
            "tensors, possibly under 'model' or 'state_dict')"
        )
    return dict(obj)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Sentences of torch's advice that must not reach our users: loading with
# weights_only=False (or allow-listing globals) runs arbitrary code from the file.
_UNSAFE_ADVICE = re.compile(r"weights_only|re-?run|safe_globals|trust|file an issue|documentation", re.I)


def torch_load_reason(e: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed, without torch's ANSI
    codes and without its advice to re-run with ``weights_only=False`` (unsafe: it unpickles
    arbitrary code). Keeps torch's own diagnosis (e.g. "Unsupported global: GLOBAL
    foo.Bar ...") and adds safe advice when the file holds more than tensors."""
    text = _ANSI.sub("", str(e))
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text)
    kept = [t.strip() for t in sentences if t.strip() and not _UNSAFE_ADVICE.search(t)]
    reason = " ".join(" ".join(kept).split())[:200] or type(e).__name__
    if "Unsupported global" in reason:
        reason += (
            " (the file holds Python objects besides tensors; re-save only the weights with "
            "torch.save(model.state_dict(), path) where the model's code is trusted)"
        )
    return reason


# ---------------------------------------------------------------------------------------
# command line body (wired as `crp-jax convert` by crp_jax.cli)
# ---------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crp-jax convert",
        description=(
            "Convert a PyTorch SSD checkpoint (torchvision ssd300_vgg16, amdegroot/ssd.pytorch, or "
            "torchvision ssdlite320_mobilenet_v3_large, saved BatchNorm-folded) to crp-jax weights: "
            "OUT.msgpack + OUT.json."
        ),
    )
    p.add_argument("src", metavar="SRC.pth", help="torch checkpoint (read with weights_only=True)")
    p.add_argument(
        "out",
        metavar="OUT.msgpack",
        help="output weights, NAME.msgpack or NAME (.msgpack is added); the JSON sidecar NAME.json "
        "goes next to it. Any other suffix (e.g. .json, the sidecar's) is refused",
    )
    p.add_argument(
        "--format",
        choices=("auto",) + CONVERT_FORMATS,
        default="auto",
        help="checkpoint layout (default: detect from the key names)",
    )
    p.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        default=None,
        help="class names: K names with background first, or the K-1 foreground names "
        "(default: VOC names at 21 classes, else class_1 ...)",
    )
    return p


def convert_main(argv: Sequence[str] | None = None) -> int:
    """``crp-jax convert SRC.pth OUT.msgpack [--format ...] [--classes NAME ...]``.

    Returns 0 on success, 2 on a usage error (argparse prints it), 1 on a runtime error
    (one line on stderr, no traceback).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        suffix = Path(args.out).suffix
        if suffix not in ("", ".msgpack"):
            # "X.json" used to write X.msgpack silently; a suffix we would not write is a typo.
            stem = Path(args.out).with_suffix("")
            parser.error(
                f"OUT must be NAME.msgpack or NAME, got {args.out} (suffix {suffix}); crp-jax weights are "
                f"written as {stem}.msgpack with the sidecar {stem}.json"
            )
    except SystemExit as e:  # argparse: --help -> 0, bad usage -> 2
        return int(e.code) if isinstance(e.code, int) else 2
    from crp_jax.ssd.io import check_finite, save_weights

    try:
        sd = load_torch_state_dict(args.src)
        try:
            model, variables, meta = convert_state_dict(sd, args.format, args.classes)
            check_finite(variables, where=None)  # before save_weights, which would name OUT
        except CRPError as e:  # what is wrong is in SRC: say so
            raise type(e)(str(e) if str(e).startswith(str(args.src)) else f"{args.src}: {e}") from None
        out = save_weights(args.out, variables, meta)
    except (CRPError, OSError) as e:
        print(f"crp-jax convert: error: {e}", file=sys.stderr)
        return 1
    n = sum(int(np.prod(a.shape)) for a in _leaves(variables))
    print(
        f"converted {meta.source} {_ARCH[meta.config.backbone]} ({meta.num_classes} classes, {n:,} parameters) -> "
        f"{out} + {out.with_suffix('.json')}"
    )
    return 0


_ARCH = {"vgg16": "SSD300-VGG16", "mobilenet_v3_large": "SSDlite320-MobileNetV3 (BatchNorm folded)"}


def _leaves(tree):
    if isinstance(tree, Mapping):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(convert_main())
