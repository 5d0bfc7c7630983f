"""``crp-jax convert``: a PyTorch SSD300 or SSDlite320 checkpoint to crp-jax weights (the
converters are crp_jax/ssd/convert/; this module parses, reports and exits)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from crp_jax.cli.app import PROG
from crp_jax.errors import CRPError
from crp_jax.ssd import convert as converters

__all__ = ["convert_main"]


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
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
        choices=("auto",) + converters.CONVERT_FORMATS,
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


def convert_main(argv: Sequence[str] | None = None, prog: str = f"{PROG} convert") -> int:
    """``crp-jax convert SRC.pth OUT.msgpack [--format ...] [--classes NAME ...]``.

    Returns 0 on success, 2 on a usage error (argparse prints it), 1 on a runtime error
    (one line on stderr, no traceback); an interrupt or an unexpected error is handled by the
    caller, :func:`crp_jax.cli.app.run_command`.
    """
    parser = _parser(prog)
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
        sd = converters.load_torch_state_dict(args.src)
        try:
            model, variables, meta = converters.convert_state_dict(sd, args.format, args.classes)
            check_finite(variables, where=None)  # before save_weights, which would name OUT
        except CRPError as e:  # what is wrong is in SRC: say so
            raise type(e)(str(e) if str(e).startswith(str(args.src)) else f"{args.src}: {e}") from None
        out = save_weights(args.out, variables, meta)
    except (CRPError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
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
