"""``crp-jax demo``, ``crp-jax detect`` and ``crp-jax explain``: argument handling and file
naming; the work is done by :mod:`crp_jax.apps` (what to explain, figure layout),
:mod:`crp_jax.ssd.detect`, :mod:`crp_jax.relevance` and :mod:`crp_jax.viz`.

Errors a user can cause (missing or unreadable image, weights that do not fit the model, an
unknown class name in ``--contrast``, which depends on the weights and is therefore a
runtime error, exit 1) print ONE line ``crp-jax <command>: error: ...`` on stderr and no
traceback. With several images, an image that cannot be read is reported on its line and
the others are still processed; the exit status is then 1.

Images: anything Pillow reads (grey, RGBA, palette, 16-bit, EXIF-rotated JPEG, any size) is
loaded with :func:`crp_jax.viz.load_image_bounded` and detected at the model's input size;
boxes are printed in the original pixels (``detect(..., image_sizes=...)``) and heatmaps are
resized bilinearly onto the image, so every output PNG has the size of its input image (the
demo's pictures are magnified for viewing), up to ``MAX_SIDE`` (2048) pixels: a longer image
is reduced by Pillow to at most that while it is read (box average by an integer factor),
detected from that, and drawn at that size. Memory is then the decoded file plus bounded
arrays, not a multiple of the image (peak RSS 871 MiB for ``detect`` and 869-936 MiB for
``explain`` of a 12544 x 12544 PNG, where ``detect`` took 6094 MiB before; the bound is
tested in tests/test_cli_big_images.py).

Heavy modules (jax, flax) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys

from crp_jax.cli.app import PROG, UsageError, run_parsed
from crp_jax.cli.common import (
    add_model_options,
    add_progress_option,
    add_shard_option,
    detect_file,
    each_image,
    fmt_box,
    load_model,
    nonneg_int,
    out_dir,
    threshold,
)

__all__ = ["METHODS", "TARGETS", "check_target", "demo_main", "detect_main", "explain_main"]

# = crp_jax.relevance.composite.PRESETS, spelled out so that `crp-jax explain --help` needs no
# jax import (tests/test_cli.py checks that the two agree).
METHODS = ("crp", "lrp_ab", "lrp_eps", "gradient", "gradient_x_input")
# The targets every SSD has; a detector may name more regressors (BlazeFace's keypoints), which
# --target takes too (check_target reads them from the weights' meta).
TARGETS = ("cls", "cx", "cy", "w", "h")
DEFAULT_DEMO_DIR = "crp_jax_demo"
_DEMO_SCAN = 50  # scenes tried after --index when a scene has no detection


# ---- demo ---------------------------------------------------------------------------------


def build_demo_parser(prog: str = f"{PROG} demo") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Load the shipped model, generate a held-out glyph scene, detect, and explain every "
            "detection's class with CRP and LRP-ab: an overlay PNG per detection and method, a grid "
            "comparing the two methods for every detection, and a class-swap grid for one detection "
            "of a confusable pair (E/F, O/Q, P/R): rows LRP-ab and CRP, columns the detected class "
            "and its partner; CRP contrasts the two ('why E and not F', 'why F and not E')."
        ),
    )
    p.add_argument(
        "--out", default=DEFAULT_DEMO_DIR, metavar="DIR", help=f"output folder (default ./{DEFAULT_DEMO_DIR})"
    )
    p.add_argument(
        "--seed",
        type=nonneg_int,
        default=None,
        metavar="N",
        help="data-set seed of the generated scene (default: the held-out test seed, never trained on)",
    )
    p.add_argument(
        "--index",
        type=nonneg_int,
        default=0,
        metavar="I",
        help=f"scene number in that data set (default 0; if it has no detection the next {_DEMO_SCAN} are tried)",
    )
    add_model_options(p)
    return p


def run_demo(args) -> int:
    from crp_jax.apps.explanations import class_name, first_detected_scene
    from crp_jax.apps.figures import demo_figures
    from crp_jax.data.splits import HELDOUT_SEED
    from crp_jax.errors import CRPError

    model, variables, meta = load_model(args)
    seed = HELDOUT_SEED if args.seed is None else args.seed
    im = first_detected_scene(
        model,
        variables,
        meta,
        seed,
        args.index,
        _DEMO_SCAN,
        score_threshold=args.score_threshold,
        max_detections=args.max_detections,
    )
    if im is None:
        raise CRPError(
            f"the model detected nothing above {args.score_threshold} in scenes {args.index}.."
            f"{args.index + _DEMO_SCAN} of data set {seed}; try a lower --score-threshold"
        )
    out = out_dir(args.out)
    figures, swap = demo_figures(model, variables, meta, im)
    written = []
    for name, img in figures:
        img.save(out / name)
        written.append(out / name)
    if swap is None:
        print(
            f"{args.prog}: note: no detection of a confusable pair class (E/F, O/Q, P/R); no class-swap grid",
            file=sys.stderr,
        )
    d = im.det
    print(f"{im.path}: {len(d)} detection{'s' if len(d) != 1 else ''}")
    for i in range(len(d)):
        print(f"  det {i}: {class_name(meta, int(d.labels[i])):<6} {float(d.scores[i]):.3f}  {fmt_box(d.boxes[i])}")
    print(f"wrote {len(written)} files to {out.resolve()}:")
    for f in written:
        print(f"  {f.name}")
    return 0


def demo_main(argv=None, prog: str = f"{PROG} demo") -> int:
    return run_parsed(prog, build_demo_parser(prog), run_demo, argv)


# ---- detect -------------------------------------------------------------------------------


def build_detect_parser(prog: str = f"{PROG} detect") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Detect objects in images; prints per image each detection's class, score and box "
            "(x1, y1, x2, y2) in the original image's pixels. With --out, writes "
            "STEM_detections.png per image."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    add_model_options(p)
    p.add_argument("--out", default=None, metavar="DIR", help="write annotated PNGs here")
    add_progress_option(p)
    return p


def run_detect(args) -> int:
    from crp_jax import viz
    from crp_jax.apps.explanations import class_name

    model, variables, meta = load_model(args)
    out = out_dir(args.out) if args.out else None

    def work(path, stem, bar):
        im = detect_file(model, variables, meta, path, stem, args)
        H, W = im.full_size
        d = im.det
        lines = [f"{path} ({W}x{H}): {len(d)} detection{'s' if len(d) != 1 else ''}"]
        for k in range(len(d)):
            name = class_name(meta, int(d.labels[k]))
            lines.append(f"  {name:<12} {float(d.scores[k]):.3f}  {fmt_box(d.boxes[k])}")
        if out is not None:
            file = out / f"{stem}_detections.png"
            viz.draw_detections(im.pixels, im.on_pixels(d.boxes), d.labels, d.scores, meta.class_names).save(file)
            lines.append(f"  wrote {file}")
        bar.write("\n".join(lines))

    return each_image(args.images, args, "detect", work)


def detect_main(argv=None, prog: str = f"{PROG} detect") -> int:
    return run_parsed(prog, build_detect_parser(prog), run_detect, argv)


# ---- explain ------------------------------------------------------------------------------


def build_explain_parser(prog: str = f"{PROG} explain") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Explain every detection of each image: per detection an overlay PNG of the signed "
            "heatmap of --method (red supports the target, blue speaks against it, white/grey is "
            "zero; normalised symmetrically by the 99.5th percentile of |R|), with the box and "
            "label; per image a grid comparing all five methods (--compare methods), or the "
            "detection's class against other classes (--compare classes), side by side."
        ),
        epilog=(
            "Files: STEM_detNN_CLASS_TARGET_METHOD.png per detection and STEM_grid.png per image. "
            "--contrast CLASS... names classes of the weights' meta; an unknown name is an error "
            "(exit 1). A detection whose own class is the only contrast class is skipped."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument(
        "--method", choices=METHODS, default="crp", help="method of the per-detection overlays (default crp)"
    )
    p.add_argument(
        "--target",
        default="cls",
        metavar="T",
        help="what to explain: the class decision (cls, default), a box coordinate (cx, cy, w, h) or "
        "another regressor the weights name (BlazeFace: right_eye_x, ..., nose_tip_x, nose_tip_y, ..., "
        "left_ear_y); an unknown name is an error listing the weights' names (exit 1)",
    )
    p.add_argument(
        "--sign",
        choices=("+", "-"),
        default=None,
        help="regressors only: '+' explains what pushes the box right/down/wider/taller or the "
        "keypoint right (x) / down (y) (default), '-' the opposite",
    )
    p.add_argument(
        "--contrast",
        nargs="+",
        default=None,
        metavar="C",
        help="class targets only: contrast set: 'others' (all other classes), 'foreground' (other "
        "foreground classes) or class names ('--contrast F': why E and not F). Default: each "
        "method's own (others for crp, none for the rest)",
    )
    p.add_argument(
        "--compare",
        choices=("methods", "classes", "none"),
        default="methods",
        help="per-image grid: all five methods (default), the detected class against other classes "
        "with --method (cls target only), or no grid",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_model_options(p)
    p.add_argument(
        "--alpha", type=threshold, default=0.6, metavar="A", help="heatmap opacity over the image (default 0.6)"
    )
    add_shard_option(p)
    add_progress_option(p)
    return p


def _resolve_contrast(values, meta):
    """``--contrast`` words -> None, "others", "foreground" or a tuple of class indices
    (names resolved with ``meta.class_index``: an unknown name raises ConfigError)."""
    if not values:
        return None
    words = list(values)
    if len(words) == 1 and words[0] in ("others", "foreground"):
        return words[0]
    if any(w in ("others", "foreground") for w in words):
        raise UsageError("--contrast takes 'others', 'foreground' or class names, not a mixture")
    out = []
    for w in words:
        k = meta.class_index(w)
        if k not in out:
            out.append(k)
    return tuple(out)


def check_target(target: str, meta) -> str:
    """``--target``: "cls" or a regressor name of the weights (``meta.regressor_names``; an
    SSD's ``cx, cy, w, h``, BlazeFace's keypoints too). An unknown name raises
    :class:`crp_jax.errors.TargetError` naming it and listing the valid ones (the names
    depend on the weights, so it is a runtime error, like an unknown ``--contrast`` class)."""
    from crp_jax.errors import TargetError
    from crp_jax.relevance.targets import COORDS

    names = tuple(getattr(meta, "regressor_names", COORDS))
    if target != "cls" and target not in names:
        raise TargetError(f"--target {target!r} unknown for these weights; use cls or one of {', '.join(names)}")
    return target


def run_explain(args) -> int:
    if args.target == "cls" and args.sign is not None:
        raise UsageError("--sign applies to regressors (--target cx|cy|w|h or a keypoint's), not to cls")
    if args.target != "cls" and args.contrast:
        raise UsageError("--contrast applies to class targets (--target cls) only")
    if args.compare == "classes" and args.target != "cls":
        raise UsageError("--compare classes needs --target cls")
    import json

    from crp_jax import viz
    from crp_jax.apps.explanations import Ask, class_name, describe, grid_heatmaps, keypoint_maps
    from crp_jax.apps.figures import explain_grid, keypoint_grid, safe_name

    model, variables, meta = load_model(args)
    ask = Ask(check_target(args.target, meta), -1 if args.sign == "-" else 1, _resolve_contrast(args.contrast, meta))
    out = out_dir(args.out)

    def work(path, stem, bar):
        im = detect_file(model, variables, meta, path, stem, args)
        H, W = im.full_size
        d = im.det
        if len(d) == 0:
            bar.write(f"{path} ({W}x{H}): no detections above {args.score_threshold}; nothing to explain")
            return
        dets, main, columns = grid_heatmaps(model, variables, meta, im, ask, args.method, args.compare)
        written = []
        for i in range(len(d)):
            if i not in dets:
                bar.write(
                    f"{args.prog}: note: {path}: detection {i} ({class_name(meta, int(d.labels[i]))}) "
                    "skipped: its class is the only contrast class",
                    err=True,
                )
        for i in dets:
            target, h = main[i]
            name = class_name(meta, int(d.labels[i]))
            label = f"{name} {float(d.scores[i]):.2f} | {describe(meta, target, args.method)}"
            img = viz.overlay(im.pixels, h, box=im.on_pixels(d.boxes[i]), label=label, alpha=args.alpha)
            what = args.target if args.target == "cls" else f"{args.target}{'+' if ask.sign > 0 else '-'}"
            file = out / f"{stem}_det{i:02d}_{safe_name(name)}_{what}_{args.method}.png"
            img.save(file)
            written.append(file)
        if columns:
            file = out / f"{stem}_grid.png"
            explain_grid(im, meta, dets, columns, args.alpha).save(file)
            written.append(file)
        kmaps = keypoint_maps(model, variables, meta, im, args.method, ask.sign) if args.target == "cls" else {}
        if kmaps:  # a detector with keypoints (BlazeFace): their maps and a JSON of every map
            record = []
            for i in dets:
                name = class_name(meta, int(d.labels[i]))
                file = out / f"{stem}_det{i:02d}_{safe_name(name)}_keypoints_{args.method}.png"
                keypoint_grid(im, meta, i, kmaps[i], args.method, args.alpha).save(file)
                written.append(file)
                record.append(_detection_record(im, meta, i, main[i], kmaps[i], file.name, args.method))
            file = out / f"{stem}_explain.json"
            file.write_text(json.dumps({"image": str(path), "size": [H, W], "detections": record}, indent=1))
            written.append(file)
        lines = [
            f"{path} ({W}x{H}): {len(d)} detection{'s' if len(d) != 1 else ''}, wrote {len(written)} files to {out}"
        ]
        lines += [f"  {f.name}" for f in written]
        bar.write("\n".join(lines))

    return each_image(args.images, args, "explain", work)


def _map_record(h, size) -> dict:
    """Numbers of one heatmap ``[h, w]`` covering an image of ``size`` ``(H, W)``: total,
    absolute total and the peak (largest value) in original pixels."""
    import numpy as np

    H, W = size
    h = np.asarray(h, np.float64)
    r, c = np.unravel_index(int(np.argmax(h)), h.shape)
    return {
        "sum": float(h.sum()),
        "abs_sum": float(np.abs(h).sum()),
        "peak_xy": [float((c + 0.5) * W / h.shape[1]), float((r + 0.5) * H / h.shape[0])],
    }


def _detection_record(im, meta, i: int, main, kmaps, kfile: str, method: str) -> dict:
    """One detection of a detector with keypoints in ``STEM_explain.json``: box, score,
    keypoints (original pixels), the class map and every keypoint map with
    :func:`_map_record`'s numbers."""
    import numpy as np

    d = im.det
    size = im.full_size
    target, h = main
    kp = np.asarray(d.keypoints[i], np.float64)
    names = list(getattr(meta, "keypoint_names", ()))
    rec = {
        "detection": i,
        "class": meta.class_names[int(d.labels[i])],
        "score": float(d.scores[i]),
        "anchor": int(d.anchors[i]),
        "box": [float(v) for v in d.boxes[i]],
        "keypoints": {n: [float(v) for v in kp[k]] for k, n in enumerate(names)},
        "method": method,
        "class_map": {"target": repr(target), **_map_record(h, size)},
        "keypoint_figure": kfile,
        "keypoint_maps": [],
    }
    for name, t, hk in kmaps:
        m = {"regressor": name, "sign": int(t.sign), **_map_record(hk, size)}
        kname = name.rsplit("_", 1)[0]
        if kname in names:
            m["peak_to_keypoint_px"] = float(np.hypot(*(np.array(m["peak_xy"]) - kp[names.index(kname)])))
        rec["keypoint_maps"].append(m)
    return rec


def explain_main(argv=None, prog: str = f"{PROG} explain") -> int:
    return run_parsed(prog, build_explain_parser(prog), run_explain, argv)
