"""``crp-jax report``: argument handling and the loop over images; the report itself (what
is computed per detection, the HTML, report.json) is :mod:`crp_jax.report`."""

from __future__ import annotations

import argparse

from crp_jax.cli.app import PROG, UsageError, run_parsed
from crp_jax.cli.common import (
    add_model_options,
    add_progress_option,
    add_shard_option,
    detect_file,
    each_image,
    load_model,
    nonneg_int,
)
from crp_jax.cli.explain import METHODS

__all__ = ["report_main"]


def build_report_parser(prog: str = f"{PROG} report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Explain every detection of the images (detections as 'crp-jax detect' prints them, same "
            "--score-threshold and --max-detections) and write a self-contained HTML site to --out: "
            "index.html, one page per image with the CRP class heatmap, the contrast against the "
            "runner-up class, the --methods beside it, eight localization maps, the per-layer "
            "relevance flow and the numbers; report.json holds every number. With --scenes N, N "
            "generated held-out scenes are added with a quality table (quality.html) and an errors view "
            "against their ground truth (as --annotations FILE.json gives it for IMAGE files)."
        ),
        epilog=(
            "The report is built in a temporary folder and moved to --out at the end; an interrupted run "
            "(Ctrl-C, exit 130) leaves no half-written report. Unreadable images are listed on the index "
            "(exit 1, the rest is still written). With --shard K/N, process K writes the report of its "
            "share of the images (give each process its own --out)."
        ),
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (created; a previous report is replaced)")
    p.add_argument(
        "--methods",
        default="crp,lrp_ab",
        metavar="M,M",
        help=f"comma-separated methods shown beside CRP (of {', '.join(METHODS)}; default crp,lrp_ab)",
    )
    p.add_argument("--scenes", type=nonneg_int, default=0, metavar="N", help="add N generated held-out scenes")
    p.add_argument(
        "--seed", type=nonneg_int, default=None, metavar="N", help="data-set seed of --scenes (default: held-out)"
    )
    p.add_argument(
        "--annotations",
        metavar="FILE.json",
        default=None,
        help="COCO ground truth of the IMAGE files (matched by file name; categories by class name): adds "
        "the errors view (missed objects, false alarms, wrong labels, duplicates, each explained); --scenes "
        "always have it",
    )
    p.add_argument("--save-relevance", action="store_true", help="also write relevance/STEM.npz per image")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into an existing folder that holds other files (they are kept; a pages/, scenes/ or "
        "relevance/ that no report wrote is refused, never replaced)",
    )
    add_model_options(p)
    add_shard_option(p)
    add_progress_option(p)
    return p


def run_report(args) -> int:
    import time

    from crp_jax.apps.figures import display
    from crp_jax.data.splits import HELDOUT_SEED
    from crp_jax.errors import CRPError, one_line
    from crp_jax.report import ReportWriter, eta_line

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UsageError(f"--methods {args.methods!r}: unknown {bad or 'empty'}; choose from {', '.join(METHODS)}")
    if not args.images and not args.scenes:
        raise UsageError("give IMAGE files, --scenes N, or both")
    if args.seed is not None and not args.scenes:
        raise UsageError("--seed applies to --scenes N only")
    model, variables, meta = load_model(args)
    annotations = None
    if args.annotations is not None:
        from crp_jax.eval.coco import load_coco

        annotations = load_coco(args.annotations, meta.class_names)
    settings = {
        "score_threshold": args.score_threshold,
        "max_detections": args.max_detections,
        "weights": args.weights or "shipped default (weights/)",
    }
    with ReportWriter(
        args.out,
        model,
        variables,
        meta,
        methods=methods,
        settings=settings,
        force=args.force,
        save_relevance=args.save_relevance,
        annotations=annotations,
    ) as writer:
        paths = list(args.images)
        if args.scenes:
            paths += writer.add_scenes(args.scenes, HELDOUT_SEED if args.seed is None else args.seed)
        start = time.perf_counter()

        def work(path, stem, bar):
            try:
                im = detect_file(model, variables, meta, path, stem, args)
                n = writer.add_image(
                    path, stem, im.pixels, im.x, im.det, display(im.pixels, 256, 384), size=im.full_size
                )
            except (CRPError, OSError) as e:  # listed on the index; each_image prints it
                writer.add_failure(path, one_line(e))
                raise
            if not args.no_progress:  # bar.n counts the images before this one
                line = eta_line(bar.n + 1, bar.total, time.perf_counter() - start)
                bar.write(f"{args.prog}: {line}: {writer.entries[-1]['name']}, {n} detections", err=True)

        rc = each_image(paths, args, "report", work)
        out = writer.finish()
    print(f"wrote {out / 'index.html'} ({len(writer.entries)} pages, {len(writer.failures)} unreadable)")
    return rc


def report_main(argv=None, prog: str = f"{PROG} report") -> int:
    return run_parsed(prog, build_report_parser(prog), run_report, argv)
