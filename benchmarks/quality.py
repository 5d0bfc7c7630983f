"""Explanation quality against the CRP paper's claims (docs/design.md §5), on held-out glyph scenes.

The measurement, the tables and the figures live in :mod:`crp_jax.eval.quality` (what each
metric means is described there); this script parses the arguments, loads the weights and
writes ``--md`` and the figures into ``--out``.

Usage::

    python benchmarks/quality.py                       # shipped weights, 40 scenes
    python benchmarks/quality.py --weights /tmp/ckpt_dir --n 10 --methods crp,lrp_ab

Runtime: the default run (40 scenes, 87 matched detections with the shipped weights, five
methods, about 11,400 perturbed images) takes about 6 minutes on the shared 2-core development
machine; most of each method's explain time is its one compilation.

``--weights`` takes a weights file (``NAME.msgpack`` + ``NAME.json``), a training checkpoint
(``ckpt_*.msgpack``) or a checkpoint directory (its newest checkpoint).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:  # run from a checkout without installing: python benchmarks/quality.py
    import crp_jax  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parent))


from crp_jax.data.splits import HELDOUT_SEED
from crp_jax.errors import CheckpointError, CRPError
from crp_jax.eval.quality import DEFAULT_METHODS, display_path, run_quality


def load_model(weights: str | None):
    """``(model, variables, meta, description)`` from a shipped model (None = "default",
    "ssdlite"), a weights file, a training checkpoint ``ckpt_*.msgpack`` or a checkpoint
    directory."""
    from crp_jax.ssd.io import SHIPPED_MODELS, check_variables, default_weights_dir, load_pretrained, load_weights

    if weights is None or weights in SHIPPED_MODELS:
        name = weights or "default"
        model, variables, meta = load_pretrained(name)
        return model, variables, meta, _describe_file(default_weights_dir() / f"{name}.msgpack", "shipped weights")
    p = Path(weights)
    if p.is_dir():
        ckpts = sorted(p.glob("ckpt_*.msgpack"))
        if not ckpts:
            raise CheckpointError(f"{p}: no ckpt_*.msgpack in this directory")
        p = ckpts[-1]
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    if p.with_suffix(".json").is_file():
        model, variables, meta = load_weights(p)
        return model, variables, meta, _describe_file(p, "weights file")
    from crp_jax.ssd.build import build_detector
    from crp_jax.training.checkpoints import read_checkpoint

    try:
        rec = read_checkpoint(p)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (and no .json sidecar: not a weights file either)") from None
    model = build_detector(rec.config.model_config())
    variables = check_variables(model, {"params": rec.params}, where=str(p))
    return (
        model,
        variables,
        rec.config.meta(),
        _describe_file(p, f"training checkpoint, step {rec.step} of {rec.config.steps}"),
    )


def _describe_file(path: Path, kind: str) -> str:
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
        stamp = _dt.datetime.fromtimestamp(Path(path).stat().st_mtime, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"{display_path(path)} ({kind}; sha256 {digest}…, written {stamp})"
    except OSError:
        return f"{display_path(path)} ({kind})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--weights",
        default=None,
        help="shipped model name (default, ssdlite), weights file, training checkpoint or checkpoint dir "
        "(default: the shipped default model)",
    )
    p.add_argument("--n", type=int, default=40, help="held-out scenes (default 40)")
    p.add_argument(
        "--seed", type=int, default=HELDOUT_SEED, help=f"data-set seed (default HELDOUT_SEED = {HELDOUT_SEED})"
    )
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    p.add_argument("--out", default=str(HERE / "figures"), help="figure folder (default benchmarks/figures)")
    p.add_argument(
        "--md", default=str(HERE / "QUALITY_RESULTS.md"), help="markdown report (default benchmarks/QUALITY_RESULTS.md)"
    )
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--iou", type=float, default=0.5, help="IoU to match a detection to its ground truth")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--steps", type=int, default=16, help="region perturbation steps")
    p.add_argument("--fraction", type=float, default=0.1, help="share of pixels removed for the loc-direction test")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument(
        "--detector",
        choices=("model", "oracle"),
        default="model",
        help="oracle: explain every ground-truth object at its best default box (debugging untrained models)",
    )
    p.add_argument(
        "--sanity",
        action="store_true",
        help="also run the model-randomization cascade and the box-aware deletion test (with the "
        "localization-head variants) on the first --sanity-scenes scenes",
    )
    p.add_argument("--sanity-scenes", type=int, default=20, help="scenes for --sanity (default 20)")
    p.add_argument("--box-steps", type=int, default=8, help="box deletion steps (default 8)")
    p.add_argument("--box-fraction", type=float, default=0.2, help="share of pixels deleted at the last box step")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--no-md", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.n < 1:
        print("quality.py: error: --n must be >= 1", file=sys.stderr)
        return 2
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = "python benchmarks/quality.py" + "".join(f" {a}" for a in argv_list)
    try:
        model, variables, meta, desc = load_model(args.weights)
        print(f"weights: {desc}")
        res = run_quality(
            model,
            variables,
            meta,
            n=args.n,
            seed=args.seed,
            methods=methods,
            out_dir=None if args.no_figures else args.out,
            md_path=None if args.no_md else args.md,
            score_threshold=args.score_threshold,
            iou_threshold=args.iou,
            patch=args.patch,
            steps=args.steps,
            fraction=args.fraction,
            n_boot=args.n_boot,
            detector=args.detector,
            weights_desc=desc,
            command=command,
            sanity=args.sanity,
            sanity_scenes=args.sanity_scenes,
            box_steps=args.box_steps,
            box_fraction=args.box_fraction,
        )
    except (CRPError, OSError) as e:
        print(f"quality.py: error: {e}", file=sys.stderr)
        return 1
    print()
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
