"""``crp-jax evaluate``: VOC-style AP per class and mAP of a detector on held-out generated
scenes (:func:`crp_jax.eval.evaluate`), printed as a table."""

from __future__ import annotations

import argparse

from crp_jax.cli.app import PROG, UsageError, run_parsed
from crp_jax.data.splits import HELDOUT_SEED

__all__ = ["build_evaluate_parser", "run_evaluate", "evaluate_main"]


def build_evaluate_parser(prog: str = f"{PROG} evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="VOC-style AP per class and mAP@0.5 of a detector on held-out generated glyph scenes.",
    )
    p.add_argument(
        "--weights",
        metavar="NAME|FILE",
        default=None,
        help="a shipped model (default, ssdlite) or a weights file NAME.msgpack + NAME.json; default: the "
        "shipped default model",
    )
    p.add_argument("--n", type=int, default=500, help="number of held-out scenes (default 500)")
    p.add_argument(
        "--seed",
        type=int,
        default=HELDOUT_SEED,
        help=f"data-set seed of the scenes (default {HELDOUT_SEED}, never trained on)",
    )
    p.add_argument("--batch-size", type=int, default=50, help="scenes per forward pass (default 50)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold for a true positive (default 0.5)")
    return p


def run_evaluate(args) -> int:
    for ok, msg in (
        (args.n >= 1, f"--n must be >= 1, got {args.n}"),
        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (0.0 < args.iou <= 1.0, f"--iou must be in (0, 1], got {args.iou}"),
    ):
        if not ok:
            raise UsageError(msg, show_usage=False)
    from crp_jax.cli.common import load_model
    from crp_jax.eval import evaluate, format_table

    model, variables, meta = load_model(args)
    res = evaluate(model, variables, meta, seed=args.seed, n=args.n, batch_size=args.batch_size, iou_threshold=args.iou)
    print(format_table(res))
    return 0


def evaluate_main(argv=None, prog: str = f"{PROG} evaluate") -> int:
    """``crp-jax evaluate``: 0 on success, 2 on a usage error, 1 on a runtime error (one
    line), 130 when interrupted."""
    return run_parsed(prog, build_evaluate_parser(prog), run_evaluate, argv)
